"""What the client's transport delivers to, per dialect.

The client handles the messages of both dialects with the same methods
(their fields are the same where it matters); the 0.6 messages go through
the usual :class:`~inginious_tx.dispatch.Dispatcher`, the 0.9 ones through
:class:`Sink09`.  A message of the other dialect is a logged protocol error
that says which ``--dialect`` the backend seems to need.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from zope.interface import implementer

from .._edge import DialectEdge
from ..interfaces import IMessageSink, IPeer
from ..messages import DIALECTS, v09

__all__ = ["Sink06", "Sink09", "sink_for"]

#: 0.9 message class -> the client method that handles it.
HANDLERS_09 = {
    v09.BackendUpdateEnvironments: "backend_update_environments",
    v09.BackendJobStarted: "backend_job_started",
    v09.BackendJobDone: "backend_job_done",
    v09.BackendJobSSHDebug: "backend_job_ssh_debug",
    v09.BackendGetQueue: "backend_get_queue",
    v09.Pong: "pong",
    v09.Unknown: "unknown",
}


class _Sink(DialectEdge):
    speaker = "a client"

    def __init__(self, client: Any, inner: Any) -> None:
        super().__init__(inner)
        self._client = client

    def hint(self, other: str) -> str:
        return f" (does the backend speak {other}? use dialect {other})"


@implementer(IMessageSink)
class Sink06(_Sink):
    """0.6: the dispatcher, after a dialect check."""

    dialect = "0.6"

    def message_received(self, peer: IPeer, message: Any) -> None:
        if self.speaks(peer, message):
            self._inner.message_received(peer, message)


@implementer(IMessageSink)
class Sink09(_Sink):
    """0.9: each backend-to-client message to its client method."""

    dialect = "0.9"

    def __init__(self, client: Any, inner: Any) -> None:
        super().__init__(client, inner)
        self._table: Dict[type, Callable[[IPeer, Any], None]] = {
            cls: getattr(client, name) for cls, name in HANDLERS_09.items()
        }

    def message_received(self, peer: IPeer, message: Any) -> None:
        if not self.speaks(peer, message):
            return
        method = self._table.get(type(message))
        if method is None:
            self.log.warn(
                "protocol error: {peer} sent {msgtype}, which a client does not expect",
                peer=peer.description,
                msgtype=message.msgtype,
            )
            return
        try:
            method(peer, message)
        except Exception:
            self.log.failure(
                "the client failed on {msgtype} from {peer}", msgtype=message.msgtype, peer=peer.description
            )


def sink_for(dialect: str, client: Any, dispatcher: Any) -> Any:
    """The sink a client speaking ``dialect`` gives its transport."""
    if dialect == "0.6":
        return Sink06(client, dispatcher)
    if dialect == "0.9":
        return Sink09(client, dispatcher)
    raise ValueError(f"unknown dialect {dialect!r} (known: {', '.join(DIALECTS)})")
