"""The in-memory transport: links between sinks of one process.

It links the embedded agent to its backend (``twistd -n inginious-backend``
without ``--agents``) and is the transport of tests (re-exported by
:mod:`inginious_tx.testing`).  It keeps the promises of the real transports,
checked by the same contract tests (``tests/test_transport_common.py``):

- every message goes through ``dump()`` and ``load_any()``, so the
  receiver sees exactly what a wire would bring, and an unencodable message
  raises at ``send``;
- one FIFO per transport keeps the order of everything (connected, messages,
  disconnected) across both directions, as a socket pair would; what was sent
  before a link closes still arrives, before the close;
- a connection keeps trying: when the server closes the link or stops
  listening, it links again as soon as something listens on the endpoint,
  until :meth:`MemoryConnection.stop`;
- a sink that raises is logged, and delivery goes on.

Delivery is queued: it happens on :meth:`MemoryTransport.pump`, or, with a
clock and ``autopump``, on ``clock.callLater(0, ...)``, so that a sender is
never re-entered by its receiver and tests control interleavings exactly.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IConnection, IListener, IMessageSink, IPeer, ITransport
from ..messages import load_any
from . import DEFAULT_LIMITS, Limits

__all__ = ["MemoryTransport", "MemoryListener", "MemoryConnection", "MemoryPeer", "PREFIX"]

log = Logger()
_ids = itertools.count(1)

#: The endpoints :meth:`MemoryTransport.handles` claims (``mem:NAME``); any
#: other string works too when this transport is passed explicitly.
PREFIX = "mem:"

# What the FIFO holds: (kind, sink, peer, data); kind is "connected",
# "message" (data: the encoded message), "disconnected" (data: the reason),
# "relink" (sink: the MemoryConnection) or "fire" (sink: a Deferred to fire).
_Event = Tuple[str, Any, Any, Any]


@implementer(IPeer)
class MemoryPeer:
    """One end of an in-memory link, as the other end sees it."""

    def __init__(self, link: _Link, sink: IMessageSink, address: bytes, description: str) -> None:
        self._link = link
        #: where messages sent to this peer are delivered
        self._sink = sink
        self.address = address
        self.description = description
        #: how the owner of ``_sink`` sees the sender
        self.other: Optional[MemoryPeer] = None
        #: True once :meth:`accepted` was called (tests can check the contract).
        self.hello_accepted = False

    @property
    def connected(self) -> bool:
        """True until the link is closed (from either end)."""
        return self._link.up

    def send(self, message: Any) -> None:
        data = message.dump()  # raises MessageError for what cannot be encoded, like a wire
        if self._link.up:
            self._link.transport._post("message", self._sink, self.other, data)

    def disconnect(self, reason: str = "disconnected") -> None:
        # The connecting side holds to_server; the listening side holds to_client.
        self._link.close(reason, by_client=self._link.to_server is self)

    def accepted(self) -> None:
        """Records that the role accepted this peer's hello (no pre-hello limits in memory)."""
        self.hello_accepted = True

    def __repr__(self) -> str:
        return f"<MemoryPeer {self.description}>"


class _Link:
    """Two peers; closing it tells both ends (after what was sent before)."""

    def __init__(self, transport: MemoryTransport, listener: MemoryListener, connection: MemoryConnection) -> None:
        self.transport = transport
        self.listener = listener
        self.connection = connection
        self.up = True
        n = next(_ids)
        name = connection.endpoint
        #: how the listener's sink sees the connecting end, and vice versa
        self.to_client = MemoryPeer(self, connection.sink, b"mem-%d" % n, f"mem-client-{n}")
        self.to_server = MemoryPeer(self, listener.sink, b"server-%d" % n, f"{name}#{n}")
        self.to_client.other = self.to_server
        self.to_server.other = self.to_client
        listener.peers.append(self.to_client)
        transport._post("connected", listener.sink, self.to_client, None)
        transport._post("connected", connection.sink, self.to_server, None)

    def close(self, reason: str, by_client: bool) -> None:
        if not self.up:
            return
        self.up = False
        if self.to_client in self.listener.peers:
            self.listener.peers.remove(self.to_client)
        self.transport._post("disconnected", self.listener.sink, self.to_client, reason)
        self.transport._post("disconnected", self.connection.sink, self.to_server, reason)
        if not by_client:
            self.connection._lost(self)


@implementer(IListener)
class MemoryListener:
    """What listens on one endpoint; :attr:`peers` are the links up."""

    def __init__(self, transport: MemoryTransport, endpoint: str, sink: IMessageSink) -> None:
        self._transport = transport
        self.endpoint = self.connect_endpoint = self.description = endpoint
        self.sink = sink
        self.peers: List[MemoryPeer] = []

    def stop(self) -> Deferred[None]:
        if self._transport._listeners.get(self.endpoint) is self:
            del self._transport._listeners[self.endpoint]
        for peer in list(self.peers):
            peer._link.close("listener stopped", by_client=False)
        return succeed(None)

    def __repr__(self) -> str:
        return f"<MemoryListener {self.endpoint}>"


@implementer(IConnection)
class MemoryConnection:
    """A connecting end: one link at a time, made again after the server closes it.

    :attr:`peer` is the server as seen through the current (or last) link:
    ``None`` only while nothing has ever listened on the endpoint.
    """

    def __init__(self, transport: MemoryTransport, endpoint: str, sink: IMessageSink) -> None:
        self._transport = transport
        self.endpoint = endpoint
        self.sink = sink
        self.peer: Optional[MemoryPeer] = None
        self.stopped = False
        self._link: Optional[_Link] = None
        self._make_link()

    def _make_link(self) -> None:
        listener = self._transport._listeners.get(self.endpoint)
        if listener is None:
            self._transport._waiting.setdefault(self.endpoint, []).append(self)
            return
        self._link = _Link(self._transport, listener, self)
        self.peer = self._link.to_server

    def _lost(self, link: _Link) -> None:
        # The server ended the link: link again once that has been told.
        if link is self._link and not self.stopped:
            self._link = None
            self._transport._post("relink", self, None, None)

    def _relink(self) -> None:
        if self._link is None and not self.stopped:
            self._make_link()

    def reconnect(self) -> None:
        if self.stopped:
            return
        link, self._link = self._link, None
        if link is not None:
            link.close("reconnecting", by_client=True)
        self._make_link()

    def stop(self) -> Deferred[None]:
        """Close for good; fires once what was sent before, then the close,
        have been delivered."""
        self.stopped = True
        waiting = self._transport._waiting.get(self.endpoint, [])
        if self in waiting:
            waiting.remove(self)
        link, self._link = self._link, None
        if link is None:
            return succeed(None)
        link.close("connection stopped", by_client=True)
        done: Deferred[None] = Deferred()
        self._transport._post("fire", done, None, None)
        return done

    def __repr__(self) -> str:
        return f"<MemoryConnection {self.endpoint}>"


@implementer(ITransport)
class MemoryTransport:
    """Links in-process sinks through ``mem:NAME`` endpoints (see the module docstring).

    ``clock`` (an ``IReactorTime``) with ``autopump``: deliveries happen on
    ``clock.callLater(0, ...)``; otherwise call :meth:`pump`.
    """

    name = "memory"

    def __init__(self, clock: Optional[IReactorTime] = None, autopump: bool = False) -> None:
        self._clock = clock
        self._autopump = autopump and clock is not None
        self._scheduled = False
        self._listeners: Dict[str, MemoryListener] = {}
        #: connections waiting for something to listen on their endpoint
        self._waiting: Dict[str, List[MemoryConnection]] = {}
        self._queue: Deque[_Event] = deque()

    def handles(self, endpoint: str) -> bool:
        return endpoint.startswith(PREFIX)

    def attach(self, endpoint: str, sink: IMessageSink) -> MemoryListener:
        """Listen on ``endpoint`` at once (:meth:`listen` without the Deferred)."""
        old = self._listeners.get(endpoint)
        if old is not None:
            raise ValueError(f"something already listens on {endpoint!r}")
        listener = self._listeners[endpoint] = MemoryListener(self, endpoint, sink)
        for connection in self._waiting.pop(endpoint, []):
            connection._relink()
        return listener

    def listen(
        self, reactor: object, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS
    ) -> Deferred[IListener]:
        try:
            return succeed(self.attach(endpoint, sink))
        except ValueError as e:
            return fail(e)

    def connect(
        self, reactor: object, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS
    ) -> MemoryConnection:
        return MemoryConnection(self, endpoint, sink)

    # -- delivery -------------------------------------------------------------

    def _post(self, kind: str, sink: Any, peer: Any, data: Any) -> None:
        self._queue.append((kind, sink, peer, data))
        if self._autopump and not self._scheduled:
            assert self._clock is not None
            self._scheduled = True
            self._clock.callLater(0, self._auto)

    def _auto(self) -> None:
        self._scheduled = False
        self.pump()

    def pump(self, limit: int = 1_000_000) -> int:
        """Deliver what is queued (also what that queues) until nothing is
        left or ``limit`` events are done; returns the count."""
        n = 0
        queue = self._queue
        while queue and n < limit:
            n += 1
            kind, sink, peer, data = queue.popleft()
            try:
                if kind == "message":
                    sink.message_received(peer, load_any(data))
                elif kind == "connected":
                    sink.peer_connected(peer)
                elif kind == "disconnected":
                    sink.peer_disconnected(peer, data)
                elif kind == "relink":
                    sink._relink()
                else:
                    sink.callback(None)
            except Exception:
                log.failure("in-memory transport: {sink!r} failed on a {kind} event", sink=sink, kind=kind)
        return n
