"""Transport selection: endpoint strings -> transport plugins.

``zmq:tcp://127.0.0.1:2001`` goes to the ZeroMQ transport, Twisted stream
endpoint strings (``tcp:2001``, ``unix:/path``, ``ssl:...``) to the stream
transport; a third-party plugin registered under the
``inginious_tx.transports`` entry point group can claim other strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from ..interfaces import IConnection, IMessageSink, ITransport
from ..plugin import PluginError, available

__all__ = ["DEFAULT_LIMITS", "Limits", "UnknownEndpoint", "transports", "transport_for", "listen", "connect"]

DEFAULT_MAX_FRAME = 64 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds a transport enforces on what peers send it."""

    #: Largest accepted frame (one encoded message), in bytes.
    max_frame: int = DEFAULT_MAX_FRAME
    #: Largest number of encoded bytes queued for one slow stream peer
    #: before the connection is dropped (a client that never reads).
    max_send_buffer: int = 4 * DEFAULT_MAX_FRAME


#: The limits used when none are given.
DEFAULT_LIMITS = Limits()


class UnknownEndpoint(ValueError):
    """No installed transport understands an endpoint string."""


_cache: Optional[List[Any]] = None


def transports() -> List[Any]:
    """One instance of every installed transport plugin (cached)."""
    global _cache
    if _cache is None:
        found = []
        for name, ep in sorted(available("inginious_tx.transports").items()):
            try:
                obj = ep.load()
                inst = obj() if isinstance(obj, type) else obj
                verifyObject(ITransport, inst)
            except Exception as e:
                raise PluginError(f"transport plugin {name!r} is broken: {e}") from e
            found.append(inst)
        _cache = found
    return _cache


def transport_for(endpoint: str) -> Any:
    """The transport plugin that handles ``endpoint``."""
    for t in transports():
        if t.handles(endpoint):
            return t
    names = ", ".join(t.name for t in transports()) or "none installed"
    raise UnknownEndpoint(
        f"no transport understands the endpoint {endpoint!r} (transports: {names}); "
        "use zmq:tcp://HOST:PORT, zmq:ipc:///PATH, tcp:PORT:interface=HOST, unix:/PATH or ssl:..."
    )


def listen(reactor: Any, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS) -> Deferred:
    """Listen on ``endpoint`` with whichever transport handles it."""
    return transport_for(endpoint).listen(reactor, endpoint, sink, limits)


def connect(reactor: Any, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS) -> IConnection:
    """Connect to ``endpoint`` with whichever transport handles it."""
    return transport_for(endpoint).connect(reactor, endpoint, sink, limits)
