"""One submitted job (:class:`Job`) and its states, the same for both dialects."""

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
    """One submitted job, from its ``ClientNewJob`` to its one ``BackendJobDone``.

    What the core and the policies read is the same whatever the dialect:
    ``environment`` is ``(type, name)`` (a 0.6 environment NAME is
    ``("docker", NAME)``), ``time_limit`` is in seconds (0 or less: none
    known).  ``message`` is the client's own message and ``origin`` the
    adapter of its dialect: only adapters read them, to build what an agent
    receives.  ``client`` becomes None when the client leaves while the job
    runs (its result is then dropped).  ``retries`` counts how many times the
    job was queued again after losing its agent.  ``client_name`` is the name
    its client had when it submitted the job.
    """

    __slots__ = (
        "key",
        "job_id",
        "size",
        "client",
        "client_name",
        "message",
        "origin",
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
        "agent_id",
        "global_id",
        "started_at",
        "kill_requested",
        "row06",
        "rel06",
        "row09",
        "rel09",
    )

    def __init__(
        self,
        key: Tuple[bytes, str],
        client: ClientState,
        message: Any,
        origin: Any,
        environment: Tuple[str, str],
        time_limit: int,
        now: float,
        sequence: int,
        size: int = 0,
    ) -> None:
        self.key = key
        self.job_id: str = message.job_id
        #: bytes of its inputdata, as measured where the message arrived
        self.size = size
        self.client: Optional[ClientState] = client
        self.client_name: str = client.name
        self.message = message
        self.origin = origin
        self.environment_type = environment[0]
        self.environment = environment
        self.course_id: str = message.course_id
        self.task_id: str = message.task_id
        self.priority: int = message.priority
        self.time_limit = time_limit
        self.submitted_at = now
        self.sequence = sequence
        self.launcher: str = message.launcher
        self.retries = 0
        self.state = WAITING
        self.agent: Optional[AgentState] = None
        #: the id its current agent knows it by (depends on the agent's dialect)
        self.agent_id: Any = None
        #: the string id made for it when a 0.6 job goes to a 0.9 agent
        self.global_id: Optional[str] = None
        self.started_at = 0.0
        self.kill_requested = False
        # Queue snapshots (see .snapshot): its encoded rows, made once.
        self.row06: Optional[bytes] = None
        self.rel06 = 0
        self.row09: Optional[bytes] = None
        self.rel09 = 0

    def __repr__(self) -> str:
        return f"<job {self.key!r} {self.state} {self.course_id}/{self.task_id}>"
