"""The part every dialect edge shares: forward to the inner sink, refuse the other dialect.

An edge stands between a transport and the sink that handles one dialect
(the agent's and the client's, see :mod:`inginious_tx.agent.dialect` and
:mod:`inginious_tx.client.dialect`).  Connections, disconnections and
rejected payloads pass through; a message of the other dialect is a logged
protocol error, with a hint on what to change the first time only.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from .interfaces import IPeer

__all__ = ["DialectEdge"]


class DialectEdge:
    """Base of the edges in front of an ``inner`` sink, for one ``dialect``.

    Subclasses set ``dialect`` and ``speaker`` (who is speaking it, for the
    log), say in :meth:`hint` what to do about the other dialect, and may
    override :meth:`wrap` to hand the inner sink their own view of a peer.
    """

    log = Logger()
    dialect = ""
    speaker = ""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._warned = False

    def wrap(self, peer: IPeer) -> IPeer:
        """The peer as the inner sink sees it (itself, unless overridden)."""
        return peer

    def hint(self, other: str) -> str:
        """What to do when the other end speaks ``other``: said once."""
        return ""

    def peer_connected(self, peer: IPeer) -> None:
        self._inner.peer_connected(self.wrap(peer))

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        self._inner.peer_disconnected(peer, reason)

    def message_rejected(self, peer: IPeer, error: Exception, payload: bytes) -> None:
        forward = getattr(self._inner, "message_rejected", None)
        if forward is not None:
            forward(self.wrap(peer), error, payload)

    def speaks(self, peer: IPeer, message: Any) -> bool:
        """Whether ``message`` is of this edge's dialect; logs a protocol error if not."""
        if message.dialect == self.dialect:
            return True
        self.log.error(
            "protocol error: {peer} sent a {other} message ({msgtype}) to {speaker} speaking {mine}{hint}",
            peer=peer.description,
            other=message.dialect,
            msgtype=message.msgtype,
            speaker=self.speaker,
            mine=self.dialect,
            hint="" if self._warned else self.hint(message.dialect),
        )
        self._warned = True
        return False
