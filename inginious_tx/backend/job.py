"""One submitted job (:class:`Job`) and its states."""

from __future__ import annotations

from typing import Any, Optional, Tuple

from zope.interface import implementer

from ..interfaces import IBackendJob
from .peers import AgentState, ClientState

__all__ = ["Job", "WAITING", "RUNNING", "DONE"]

#: Job states.
WAITING, RUNNING, DONE = "waiting", "running", "done"


@implementer(IBackendJob)
class Job:
    """One submitted job, from ``ClientNewJob`` to its one ``BackendJobDone``.

    ``client`` becomes None when the client leaves while the job runs (its
    result is then dropped).  ``retries`` counts how many times the job was
    queued again after losing its agent.  ``client_name`` is the name its
    client had when it submitted the job (for load counts and observers).
    """

    __slots__ = (
        "key",
        "job_id",
        "size",
        "client",
        "client_name",
        "message",
        "environment_type",
        "environment",
        "course_id",
        "task_id",
        "priority",
        "time_limit",
        "submitted_at",
        "sequence",
        "launcher",
        "retries",
        "state",
        "agent",
        "started_at",
        "kill_requested",
    )

    def __init__(
        self, key: Tuple[bytes, str], client: ClientState, message: Any, now: float, sequence: int, size: int = 0
    ) -> None:
        self.key = key
        self.job_id: str = message.job_id
        #: bytes of its inputdata, as measured where the message arrived
        self.size = size
        self.client: Optional[ClientState] = client
        self.client_name: str = client.name
        self.message = message
        self.environment_type = "docker"
        self.environment: str = message.environment
        self.course_id: str = message.course_id
        self.task_id: str = message.task_id
        self.priority: int = message.priority
        self.time_limit: int = message.time_limit
        self.submitted_at = now
        self.sequence = sequence
        self.launcher: str = message.launcher
        self.retries = 0
        self.state = WAITING
        self.agent: Optional[AgentState] = None
        self.started_at = 0.0
        self.kill_requested = False

    def __repr__(self) -> str:
        return f"<job {self.key!r} {self.state} {self.course_id}/{self.task_id}>"
