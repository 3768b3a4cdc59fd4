"""From decoded messages to handler methods.

A :class:`Dispatcher` reads a role interface (e.g.
:class:`~inginious_tx.interfaces.IBackendClientHandler`) once, maps each
message class whose ``msgtype`` the interface names to the handler's method,
and then serves as the :class:`~inginious_tx.interfaces.IMessageSink` of a
transport.  A message the role does not handle is a logged protocol error.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

from .interfaces import IMessageSink, IPeer, IRejectionObserver
from .messages import MessageError, MessageMeta

__all__ = ["Dispatcher"]


@implementer(IMessageSink, IRejectionObserver)
class Dispatcher:
    """Route each message to ``handler.<msgtype>(peer, message)``.

    ``on_unexpected(peer, message)`` is called (after logging) for a message
    that the role does not handle, e.g. an agent message sent to the client
    endpoint; by default nothing else happens.
    """

    log = Logger()

    def __init__(
        self,
        handler: Any,
        role: InterfaceClass,
        on_unexpected: Optional[Callable[[IPeer, Any], None]] = None,
    ) -> None:
        # Through a variable: mypy-zope reads ``role.providedBy(x)`` as
        # ``isinstance(x, role)``, and for an interface held in a variable
        # that makes the rest of this method unreachable to mypy.
        provided: bool = role.providedBy(handler)
        if not provided:
            raise TypeError(f"{handler!r} does not provide {role.__name__}")
        self._handler = handler
        self._role = role
        self._on_unexpected = on_unexpected
        names = set(role.names(all=True))
        self._table: Dict[type, Callable[[IPeer, Any], None]] = {
            cls: getattr(handler, msgtype) for msgtype, cls in MessageMeta.registry.items() if msgtype in names
        }

    def handles(self, message_class: type) -> bool:
        return message_class in self._table

    def peer_connected(self, peer: IPeer) -> None:
        self._handler.peer_connected(peer)

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        self._handler.peer_disconnected(peer, reason)

    def message_rejected(self, peer: IPeer, error: MessageError, payload: bytes) -> None:
        """Forward to the handler if it provides IRejectionObserver (the transport logged it)."""
        if IRejectionObserver.providedBy(self._handler):
            try:
                self._handler.message_rejected(peer, error, payload)
            except Exception:
                self.log.failure("handler {role} failed on a rejected frame", role=self._role.__name__)

    def message_received(self, peer: IPeer, message: Any) -> None:
        method = self._table.get(type(message))
        if method is None:
            self.log.warn(
                "protocol error: {peer} sent {msgtype}, which is not expected by {role}",
                peer=peer.description,
                msgtype=type(message).msgtype,
                role=self._role.__name__,
            )
            if self._on_unexpected is not None:
                self._on_unexpected(peer, message)
            return
        try:
            method(peer, message)
        except Exception:
            # A handler bug must not take the transport (and every other
            # peer on it) down with it.
            self.log.failure(
                "handler {role}.{msgtype} failed on a message from {peer}",
                role=self._role.__name__,
                msgtype=type(message).msgtype,
                peer=peer.description,
            )
