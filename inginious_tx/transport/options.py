"""The transport bounds as twistd command-line options (shared by the commands that listen).

A command adds :data:`LISTENER_OPTIONS` to its ``optParameters`` and builds
its :class:`~inginious_tx.transport.Limits` with :func:`limits_from`, so the
bounds, their defaults and their help live next to the code that enforces them.
"""

from __future__ import annotations

from typing import Any, List, Mapping

from .._options import at_least_one, positive_float
from . import (
    CLIENT_FRAME_MARGIN,
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HELLO_FRAME,
    DEFAULT_MAX_PARTIAL_BYTES,
    DEFAULT_MAX_PENDING,
    DEFAULT_PARTIAL_FRAME_TIMEOUT,
    DEFAULT_ZMQ_MAX_PENDING,
    DEFAULT_ZMQ_SEND_HWM,
    Limits,
)

__all__ = ["LISTENER_OPTIONS", "limits_from"]

#: ``optParameters`` entries for a command that listens.
LISTENER_OPTIONS: List[List[Any]] = [
    [
        "max-send-buffer",
        None,
        None,
        "Bytes queued for a stream peer that does not read before it is disconnected "
        "[default: 4 x --max-frame, at least 1 MiB]",
        at_least_one,
    ],
    [
        "max-hello-frame",
        None,
        DEFAULT_MAX_HELLO_FRAME,
        "Largest message accepted, in bytes, from a peer whose hello is not accepted yet "
        "(stream: disconnected; ZeroMQ: dropped).",
        at_least_one,
    ],
    [
        "hello-timeout",
        None,
        DEFAULT_HELLO_TIMEOUT,
        "Seconds a new connection has to say an accepted hello before it is closed.",
        positive_float,
    ],
    [
        "max-connections",
        None,
        DEFAULT_MAX_CONNECTIONS,
        "Most open connections of one endpoint (stream or ZeroMQ); further ones are closed as soon as made.",
        at_least_one,
    ],
    [
        "zmq-send-hwm",
        None,
        DEFAULT_ZMQ_SEND_HWM,
        "Most messages queued for one ZeroMQ peer that does not read; on reaching it the peer's session "
        "ends (as on a departure) and its connection is closed.",
        at_least_one,
    ],
    [
        "max-pending",
        None,
        DEFAULT_MAX_PENDING,
        "Most connections of one stream endpoint that have not said an accepted hello yet; further ones are "
        "closed as soon as made.",
        at_least_one,
    ],
    [
        "max-partial-bytes",
        None,
        DEFAULT_MAX_PARTIAL_BYTES,
        "Most bytes of messages received in part over all stream connections (tcp:, unix:, ssl:); "
        "when a message would take them over, the connection whose partial message started first is closed.",
        at_least_one,
    ],
    [
        "partial-frame-timeout",
        None,
        DEFAULT_PARTIAL_FRAME_TIMEOUT,
        "Seconds a stream connection has to finish a message it started sending; one that has not is closed "
        "and what it sent freed.",
        positive_float,
    ],
    [
        "zmq-max-pending",
        None,
        DEFAULT_ZMQ_MAX_PENDING,
        "Most connections of one ZeroMQ endpoint that have not said an accepted hello yet (each may hold "
        "a message up to the endpoint's largest frame); further ones are closed as soon as made.",
        at_least_one,
    ],
]


def limits_from(options: Mapping[str, Any]) -> Limits:
    """The :class:`Limits` of parsed options (``max-frame`` and the :data:`LISTENER_OPTIONS`).

    With a ``max-inputdata`` option (the backend's), a client's frames are
    bounded by it and :data:`CLIENT_FRAME_MARGIN` (see :meth:`Limits.for_clients`).
    """
    max_frame = options["max-frame"]
    send_buffer = options["max-send-buffer"]
    inputdata = options.get("max-inputdata")
    return Limits(
        max_frame=max_frame,
        max_send_buffer=send_buffer if send_buffer is not None else max(4 * max_frame, 1 << 20),
        max_hello_frame=options["max-hello-frame"],
        hello_timeout=options["hello-timeout"],
        max_connections=options["max-connections"],
        max_pending=options["max-pending"],
        zmq_send_hwm=options["zmq-send-hwm"],
        zmq_max_pending=options["zmq-max-pending"],
        max_partial_bytes=options["max-partial-bytes"],
        partial_frame_timeout=options["partial-frame-timeout"],
        client_max_frame=inputdata + CLIENT_FRAME_MARGIN if inputdata is not None else None,
    )
