"""Test doubles for inginious-tx and for authors of its plugins.

:class:`MemoryTransport` (from :mod:`inginious_tx.transport.memory`) is a real
:class:`~inginious_tx.interfaces.ITransport` that moves messages between sinks
in the same process: every message goes through ``dump()`` and
``load_any()`` as on a real wire, it keeps the real transports'
promises (order, reconnection, sink errors logged), but delivery is queued and
happens on :meth:`MemoryTransport.pump` (or on the clock, with ``autopump``),
so tests control interleavings exactly.  The embedded agent of the backend
uses the same transport.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.defer import Deferred
from zope.interface import implementer

from .interfaces import IMessageSink, IPeer
from .transport.memory import MemoryConnection, MemoryListener, MemoryPeer, MemoryTransport

__all__ = ["MemoryTransport", "MemoryPeer", "MemoryListener", "MemoryConnection", "RecordingSink"]


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
        self._waiters: List[Tuple[int, Deferred[List[Tuple[IPeer, Any]]]]] = []

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

    def wait_for(self, count: int) -> Deferred[List[Tuple[IPeer, Any]]]:
        """A Deferred that fires once ``count`` messages have arrived."""
        d: Deferred[List[Tuple[IPeer, Any]]] = Deferred()
        if len(self.messages) >= count:
            d.callback(self.messages[:count])
        else:
            self._waiters.append((count, d))
        return d
