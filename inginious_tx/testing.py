"""Test doubles for inginious-tx and for authors of its plugins.

:class:`MemoryTransport` is a real :class:`~inginious_tx.interfaces.ITransport`
that moves messages between sinks in the same process: every message goes
through ``dump()`` and ``load_any()`` as on a real wire, but delivery
is queued and happens on :meth:`MemoryTransport.pump` (or on the clock, with
``autopump``), so tests control interleavings exactly.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from .interfaces import IConnection, IListener, IMessageSink, IPeer, ITransport
from .messages import load_any
from .transport import DEFAULT_LIMITS, Limits

__all__ = ["MemoryTransport", "MemoryPeer", "RecordingSink"]

_ids = itertools.count(1)


@implementer(IPeer)
class MemoryPeer:
    """One end of an in-memory link, as seen from the other end."""

    def __init__(self, transport: MemoryTransport, sink: IMessageSink, address: bytes, description: str):
        self._transport = transport
        self._sink = sink  # where messages *to* this peer are delivered
        self.address = address
        self.description = description
        self.other: Optional[MemoryPeer] = None  # how the remote end sees us
        self.connected = True
        #: True once :meth:`accepted` was called (tests can check the contract).
        self.hello_accepted = False

    def send(self, message: Any) -> None:
        data = message.dump()
        if self.connected and self.other is not None:
            self._transport._queue.append((self._sink, self.other, data))
            self._transport._schedule()

    def disconnect(self, reason: str = "disconnected") -> None:
        self._transport._close(self, reason)

    def accepted(self) -> None:
        """Records that the role accepted this peer's hello (no pre-hello limits in memory)."""
        self.hello_accepted = True

    def __repr__(self) -> str:
        return f"<MemoryPeer {self.description}>"


@implementer(IListener)
class MemoryListener:
    def __init__(self, transport: MemoryTransport, endpoint: str, sink: IMessageSink):
        self._transport = transport
        self.endpoint = endpoint
        self.sink = sink
        self.description = endpoint
        self.peers: List[MemoryPeer] = []

    def stop(self) -> Deferred:
        self._transport._listeners.pop(self.endpoint, None)
        for p in list(self.peers):
            self._transport._close(p, "listener stopped")
        return succeed(None)


@implementer(IConnection)
class MemoryConnection:
    """A connecting end; :meth:`reconnect` makes a fresh link (new address)."""

    def __init__(self, transport: MemoryTransport, endpoint: str, sink: IMessageSink):
        self._transport = transport
        self._endpoint = endpoint
        self._sink = sink
        self.peer: Optional[MemoryPeer] = None
        self.stopped = False
        self._link()

    def _link(self) -> None:
        listener = self._transport._listeners.get(self._endpoint)
        if listener is None:
            self.peer = None
            return
        n = next(_ids)
        address = b"mem-%d" % n
        # server side: how the listener sees the connecting end
        to_client = MemoryPeer(self._transport, self._sink, address, f"mem-client-{n}")
        to_server = MemoryPeer(self._transport, listener.sink, b"server-%d" % n, f"{self._endpoint}#{n}")
        to_client.other = to_server
        to_server.other = to_client
        self.peer = to_server
        listener.peers.append(to_client)
        self._transport._events.append(("connected", listener.sink, to_client))
        self._transport._events.append(("connected", self._sink, to_server))
        self._transport._schedule()

    def reconnect(self) -> None:
        if self.peer is not None:
            self._transport._close(self.peer, "reconnecting")
        if not self.stopped:
            self._link()

    def stop(self) -> Deferred:
        self.stopped = True
        if self.peer is not None:
            self._transport._close(self.peer, "connection stopped")
        return succeed(None)


@implementer(ITransport)
class MemoryTransport:
    """An in-process transport for ``mem:NAME`` endpoints.

    ``clock``: when given and ``autopump`` is true, deliveries happen on
    ``clock.callLater(0, ...)``; otherwise call :meth:`pump`.
    """

    name = "memory"

    def __init__(self, clock: Any = None, autopump: bool = False):
        self._clock = clock
        self._autopump = autopump and clock is not None
        self._scheduled = False
        self._listeners: Dict[str, MemoryListener] = {}
        self._queue: Deque[Tuple[IMessageSink, MemoryPeer, bytes]] = deque()
        self._events: Deque[Tuple[str, IMessageSink, MemoryPeer]] = deque()

    def handles(self, endpoint: str) -> bool:
        return endpoint.startswith("mem:")

    def listen(self, reactor: Any, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS) -> Deferred:
        listener = MemoryListener(self, endpoint, sink)
        self._listeners[endpoint] = listener
        return succeed(listener)

    def connect(
        self, reactor: Any, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS
    ) -> MemoryConnection:
        return MemoryConnection(self, endpoint, sink)

    # -- delivery -------------------------------------------------------------

    def _schedule(self) -> None:
        if self._autopump and not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._auto)

    def _auto(self) -> None:
        self._scheduled = False
        self.pump()

    def pump(self, limit: int = 1_000_000) -> int:
        """Deliver queued events and messages until none is left; returns the count."""
        n = 0
        while (self._events or self._queue) and n < limit:
            n += 1
            if self._events:
                kind, sink, peer = self._events.popleft()
                if kind == "connected":
                    sink.peer_connected(peer)
                else:
                    sink.peer_disconnected(peer, kind)
                continue
            sink, peer, data = self._queue.popleft()
            if peer.connected:
                sink.message_received(peer, load_any(data))
        return n

    def _close(self, peer: MemoryPeer, reason: str) -> None:
        """Close the link ``peer`` belongs to; both ends learn of it."""
        for p in (peer, peer.other):
            if p is not None and p.connected:
                p.connected = False
                # p is how one side sees the other; that side's sink is the
                # sink its messages are delivered to, i.e. p.other._sink.
                owner_sink = p.other._sink if p.other is not None else None
                if owner_sink is not None:
                    self._events.append((reason, owner_sink, p))
        for listener in self._listeners.values():
            for p in (peer, peer.other):
                if p in listener.peers:
                    listener.peers.remove(p)
        self._schedule()


@implementer(IMessageSink)
class RecordingSink:
    """A sink that records everything, for tests of transports.

    ``accept``: accept every peer as soon as it connects (``peer.accepted()``),
    as a role does once it accepts a hello, so that the transport lifts its
    pre-hello limits; by default peers stay strangers.
    """

    def __init__(self, accept: bool = False) -> None:
        self._accept = accept
        self.connected: List[IPeer] = []
        self.disconnected: List[Tuple[IPeer, str]] = []
        self.messages: List[Tuple[IPeer, Any]] = []
        self._waiters: List[Tuple[int, Deferred]] = []

    def peer_connected(self, peer: IPeer) -> None:
        self.connected.append(peer)
        if self._accept:
            peer.accepted()

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        self.disconnected.append((peer, reason))

    def message_received(self, peer: IPeer, message: Any) -> None:
        self.messages.append((peer, message))
        ready = [w for w in self._waiters if len(self.messages) >= w[0]]
        for w in ready:
            self._waiters.remove(w)
            w[1].callback(self.messages[: w[0]])

    def wait_for(self, count: int) -> Deferred:
        """A Deferred that fires once ``count`` messages have arrived."""
        d: Deferred = Deferred()
        if len(self.messages) >= count:
            d.callback(self.messages[:count])
        else:
            self._waiters.append((count, d))
        return d
