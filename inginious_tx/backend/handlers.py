"""What the 0.6 and 0.9 message handlers of the backend have in common.

Each dialect's handlers (:mod:`.dialect06`, :mod:`.dialect09`) turn that
dialect's messages into calls on the dialect-free core; most messages carry
the same fields in both dialects, so those translations live here once and
each dialect adds only what differs (new jobs, agent hellos, ssh info).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..interfaces import IPeer
from .sizes import rejected_job

if TYPE_CHECKING:
    from .lifecycle import Backend

__all__ = ["ClientHandlerBase", "AgentHandlerBase"]

#: How a job submission is named in either dialect (msgtype, class name).
_NEW_JOB = ("client_new_job", "ClientNewJob")


class ClientHandlerBase:
    """Client messages that mean the same in both dialects -> core calls."""

    def __init__(self, backend: Backend, dialect: Any) -> None:
        self._backend = backend
        self._dialect = dialect
        self._submit = backend.client_new_job

    def client_hello(self, peer: IPeer, message: Any) -> None:
        self._backend.client_hello(peer, self._dialect, message.name)

    def client_kill_job(self, peer: IPeer, message: Any) -> None:
        self._backend.client_kill_job(peer, self._dialect, message.job_id)

    def client_get_queue(self, peer: IPeer, message: Any) -> None:
        self._backend.client_get_queue(peer, self._dialect)

    def ping(self, peer: IPeer, message: Any) -> None:
        self._backend.client_ping(peer, self._dialect)

    def message_rejected(self, peer: IPeer, error: Exception, payload: bytes) -> None:
        """A frame that did not decode: a job in it is answered ``crash`` (by its id, when it can be read)."""
        msgtype, job_id = rejected_job(error, payload)
        if msgtype in _NEW_JOB:
            self._backend.client_job_rejected(peer, self._dialect, job_id, error)


class AgentHandlerBase:
    """Agent messages that mean the same in both dialects -> core calls."""

    def __init__(self, backend: Backend, dialect: Any) -> None:
        self._backend = backend
        self._dialect = dialect
        self._done = backend.agent_job_done

    def agent_job_started(self, peer: IPeer, message: Any) -> None:
        self._backend.agent_job_started(peer, self._dialect, message)

    def agent_job_done(self, peer: IPeer, message: Any) -> None:
        self._done(peer, self._dialect, message)

    def pong(self, peer: IPeer, message: Any) -> None:
        self._backend.agent_pong(peer, self._dialect)
