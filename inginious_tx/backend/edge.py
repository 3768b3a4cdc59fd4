"""The backend's transport sinks: each decoded message, of either dialect, to its handler.

One :class:`EdgeSink` per role (clients, agents) serves every endpoint of
that role, whatever the dialect: the message's class says its dialect and
which handler of :mod:`.dialect06` or :mod:`.dialect09` takes it.  Whether
a peer keeps to its dialect is the core's business (it knows each
registered peer's dialect), so this sink holds no per-peer state, which
matters for ZeroMQ, where peers never say goodbye.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IMessageSink, IPeer, IRejectionObserver

__all__ = ["EdgeSink"]

Handler = Callable[[IPeer, Any], None]


@implementer(IMessageSink, IRejectionObserver)
class EdgeSink:
    """Route each message by its class; anything else is a logged protocol error.

    ``table`` maps message classes to handlers; ``rejected`` maps a dialect
    name to what hears frames that did not decode (``message_rejected``);
    ``on_unexpected(peer, message)`` runs after a protocol error is logged.
    """

    log = Logger()

    def __init__(
        self,
        role: str,
        table: Dict[type, Handler],
        connected: Callable[[IPeer], None],
        disconnected: Callable[[IPeer, str], None],
        rejected: Optional[Dict[str, Any]] = None,
        on_unexpected: Optional[Handler] = None,
    ) -> None:
        self._role = role
        self._table = table
        self._connected = connected
        self._disconnected = disconnected
        self._rejected = rejected or {}
        self._on_unexpected = on_unexpected

    def handles(self, message_class: type) -> bool:
        return message_class in self._table

    def peer_connected(self, peer: IPeer) -> None:
        self._connected(peer)

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        self._disconnected(peer, reason)

    def message_rejected(self, peer: IPeer, error: Exception, payload: bytes) -> None:
        """A frame that did not decode (the transport logged it): tell the dialect's handler."""
        dialect = getattr(error, "dialect", None)
        if dialect not in self._rejected:
            # Without the decoder's word, a 0.9 map is told by its "@type" key.
            dialect = "0.9" if b"\xa5@type" in payload else "0.6"
        observer = self._rejected.get(dialect)
        if observer is None:
            return
        try:
            observer.message_rejected(peer, error, payload)
        except Exception:
            self.log.failure("{role} handler failed on a rejected frame", role=self._role)

    def message_received(self, peer: IPeer, message: Any) -> None:
        handler = self._table.get(type(message))
        if handler is None:
            self.log.warn(
                "protocol error: {peer} sent {dialect} {msgtype}, which is not expected from {role}",
                peer=peer.description,
                dialect=getattr(type(message), "dialect", "?"),
                msgtype=getattr(type(message), "msgtype", type(message).__name__),
                role=self._role,
            )
            if self._on_unexpected is not None:
                self._on_unexpected(peer, message)
            return
        try:
            handler(peer, message)
        except Exception:
            # A handler bug must not take the transport (and every other peer on it) down.
            self.log.failure(
                "{role} handler failed on {msgtype} from {peer}",
                role=self._role,
                msgtype=getattr(type(message), "msgtype", type(message).__name__),
                peer=peer.description,
            )
