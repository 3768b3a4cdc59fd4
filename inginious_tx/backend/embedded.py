"""An agent inside the backend's process: the out-of-the-box grader.

``twistd -n inginious-backend`` without ``--agents`` runs one
:class:`~inginious_tx.agent.core.Agent` with the ``local`` agent backend over
the bundled example course (:func:`example_tasks_dir`), so that a newcomer can
submit a job at once.  Production backends name their agent endpoints and run
their agents apart (and untrusted code under Docker).

The agent talks to the backend through an :class:`InProcessTransport` rather
than through the agent endpoint: no port to share with real agents, no
reconnection loop, nothing to wait for at start-up, and it works whatever the
agent endpoints are.  Messages still go through ``dump()`` and
``load_any()``, so the backend sees exactly what a wire would bring.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections import deque
from typing import Any, Deque, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from ..agent.core import Agent
from ..agent.local import LocalBackend
from ..agent.result import AgentConfig
from ..interfaces import IConnection, IMessageSink, IPeer, ITransport
from ..messages import load_any
from ..transport import DEFAULT_LIMITS, Limits

__all__ = [
    "DEFAULT_EMBEDDED_SLOTS",
    "EMBEDDED_ENDPOINT",
    "EmbeddedAgent",
    "InProcessTransport",
    "embedded_agent",
    "example_tasks_dir",
]

#: Job slots of the embedded agent when none is asked for.
DEFAULT_EMBEDDED_SLOTS = 2
#: The endpoint string the embedded agent "connects" to (shown in logs).
EMBEDDED_ENDPOINT = "in-process:embedded-agent"

_HERE = os.path.dirname(os.path.abspath(__file__))
_links = itertools.count(1)


def example_tasks_dir() -> Optional[str]:
    """The bundled example course folder (holding ``demo/``), or None.

    An installed distribution ships it as the package data
    ``inginious_tx/example_tasks``; a source checkout (also an editable
    install) has it as ``examples/tasks`` beside the package.
    """
    package = os.path.dirname(_HERE)
    for candidate in (
        os.path.join(package, "example_tasks"),
        os.path.join(os.path.dirname(package), "examples", "tasks"),
    ):
        if os.path.isdir(os.path.join(candidate, "demo")):
            return candidate
    return None


# -- the in-process link -----------------------------------------------------------


@implementer(IPeer)
class _Peer:
    """One end of an in-process link, as the other end sees it."""

    def __init__(self, link: _Link, sink: IMessageSink, address: bytes, description: str) -> None:
        self._link = link
        #: where messages sent to this peer are delivered
        self._sink = sink
        self.address = address
        self.description = description
        #: how the owner of ``_sink`` sees the sender
        self.other: Optional[_Peer] = None

    def send(self, message: Any) -> None:
        data = message.dump()  # raises MessageError for a message that cannot be encoded, like a wire
        if self._link.up:
            self._link.post(self._sink, "message", self.other, data)

    def disconnect(self, reason: str = "disconnected") -> None:
        self._link.close(reason)

    def accepted(self) -> None:
        """Nothing to lift: an in-process link has no pre-hello limits."""

    def __repr__(self) -> str:
        return f"<in-process peer {self.description}>"


class _Link:
    """Two peers and one FIFO of deliveries, flushed on the next reactor turn.

    One queue for both directions keeps the order of events across them
    (connected, messages, disconnected), as a socket pair would; delivering
    on a later turn keeps senders from re-entering receivers.
    """

    log = Logger()

    def __init__(self, reactor: Any, server_sink: IMessageSink, client_sink: IMessageSink, name: str) -> None:
        self._reactor = reactor
        self._queue: Deque[Tuple[IMessageSink, str, Any, Any]] = deque()
        self._scheduled = False
        self.up = True
        n = next(_links)
        # to_client: how the server (backend) sees the agent, and vice versa
        self.to_client = _Peer(self, client_sink, b"in-process-%d" % n, f"{name}#{n}")
        self.to_server = _Peer(self, server_sink, b"in-process-server-%d" % n, f"{name}#{n} (backend)")
        self.to_client.other = self.to_server
        self.to_server.other = self.to_client
        self.post(server_sink, "connected", self.to_client, None)
        self.post(client_sink, "connected", self.to_server, None)

    def post(self, sink: IMessageSink, kind: str, peer: Any, data: Any) -> None:
        self._queue.append((sink, kind, peer, data))
        if not self._scheduled:
            self._scheduled = True
            self._reactor.callLater(0, self._flush)

    def close(self, reason: str) -> None:
        if not self.up:
            return
        self.up = False
        # what was sent before still arrives first, as on a socket closed cleanly
        self.post(self.to_server._sink, "disconnected", self.to_client, reason)
        self.post(self.to_client._sink, "disconnected", self.to_server, reason)

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue:
            sink, kind, peer, data = self._queue.popleft()
            try:
                if kind == "message":
                    sink.message_received(peer, load_any(data))
                elif kind == "connected":
                    sink.peer_connected(peer)
                else:
                    sink.peer_disconnected(peer, data)
            except Exception:
                self.log.failure("in-process link: {sink!r} failed on a {kind} event", sink=sink, kind=kind)


@implementer(IConnection)
class _Connection:
    """The agent's side: a fresh link on each :meth:`reconnect`."""

    def __init__(self, transport: InProcessTransport, sink: IMessageSink) -> None:
        self._transport = transport
        self._sink = sink
        self._link: Optional[_Link] = None
        self.peer: Optional[IPeer] = None
        self._make()

    def _make(self) -> None:
        t = self._transport
        self._link = _Link(t.reactor, t.server_sink, self._sink, t.name)
        self.peer = self._link.to_server

    def reconnect(self) -> None:
        if self._link is not None:
            self._link.close("reconnecting")
        self._make()

    def stop(self) -> Deferred:
        if self._link is not None:
            self._link.close("connection stopped")
            self._link = None
        self.peer = None
        return succeed(None)


@implementer(ITransport)
class InProcessTransport:
    """Links in-process clients (an agent) to one server sink (a backend's agent sink).

    Only :meth:`connect` makes sense: the server side is the sink given
    here, so :meth:`listen` fails.
    """

    name = "in-process"

    def __init__(self, reactor: Any, server_sink: IMessageSink, name: str = EMBEDDED_ENDPOINT) -> None:
        self.reactor = reactor
        self.server_sink = server_sink
        self.name = name

    def handles(self, endpoint: str) -> bool:
        return endpoint.startswith("in-process:")

    def listen(self, reactor: Any, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS) -> Deferred:
        return fail(ValueError("an in-process transport links to the sink it was made with: it cannot listen"))

    def connect(self, reactor: Any, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS) -> _Connection:
        return _Connection(self, sink)


# -- the agent ---------------------------------------------------------------------


class EmbeddedAgent(Agent):
    """An :class:`Agent` that says, when it starts, why it is there."""

    def __init__(self, *args: Any, notice: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notice = notice

    def startService(self) -> None:
        if self.notice:
            self.log.info("{notice}", notice=self.notice)
        super().startService()


def embedded_agent(
    reactor: Any,
    agent_sink: IMessageSink,
    tasks_dir: str,
    slots: int = DEFAULT_EMBEDDED_SLOTS,
    *,
    name: Optional[str] = None,
    limits: Optional[Limits] = None,
    options: Optional[dict] = None,
    notice: str = "",
) -> EmbeddedAgent:
    """A ``local`` agent over ``tasks_dir``, linked in-process to ``agent_sink``.

    ``agent_sink`` is a backend's agent sink
    (:meth:`~inginious_tx.backend.core.Backend.agent_sink`).  The result is a
    service: start and stop it with the backend's.  ``options`` are those of
    the local agent backend (``--option`` of ``twistd inginious-agent``).
    Raises ValueError if ``tasks_dir`` is not a folder.
    """
    if not os.path.isdir(tasks_dir):
        raise ValueError(f"the tasks folder {tasks_dir!r} does not exist")
    config = AgentConfig(tasks_dir=os.path.abspath(tasks_dir), slots=slots, options=dict(options or {}))
    backend = LocalBackend(reactor, config)
    return EmbeddedAgent(
        reactor,
        backend,
        name or f"{socket.gethostname()}-embedded",
        slots,
        EMBEDDED_ENDPOINT,
        transport=InProcessTransport(reactor, agent_sink),
        limits=limits,
        notice=notice,
    )
