"""What a client gets back: job results and queue snapshots, as plain frozen values.

Messages are wire objects; these are what an application keeps, compares and
prints, so they carry names instead of positions (``result.grade``, not
``message.result[0]``) and never change once made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from ..messages import BackendGetQueue, BackendJobDone

__all__ = ["ClientJobResult", "QueueSnapshot", "RunningJob", "WaitingJob", "UNAVAILABLE"]

#: How every result the client makes up because the backend is gone begins.
UNAVAILABLE = "backend unavailable"


@dataclass(frozen=True)
class ClientJobResult:
    """The one answer to a job submitted with :meth:`Client.new_job`.

    ``local`` is true when the client made the result up itself (the backend
    could not be reached or was lost, the job was killed before it was sent,
    the client stopped) instead of receiving it from the backend.
    """

    job_id: str
    result: str
    text: str = ""
    grade: float = 0.0
    problems: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    tests: Dict[str, Any] = field(default_factory=dict)
    custom: Dict[str, Any] = field(default_factory=dict)
    state: str = ""
    archive: Optional[bytes] = None
    stdout: Optional[str] = None
    stderr: Optional[str] = None
    local: bool = False

    @property
    def succeeded(self) -> bool:
        return self.result == "success"

    @property
    def backend_unavailable(self) -> bool:
        """True when the client gave up because the backend was unreachable or lost."""
        return self.local and self.result == "crash" and self.text.startswith(UNAVAILABLE)

    @classmethod
    def from_message(cls, message: BackendJobDone) -> ClientJobResult:
        rtype, text = message.result
        return cls(
            job_id=message.job_id,
            result=rtype,
            text=text,
            grade=float(message.grade),
            problems={k: (v[0], v[1]) for k, v in message.problems.items()},
            tests=dict(message.tests),
            custom=dict(message.custom),
            state=message.state,
            archive=message.archive,
            stdout=message.stdout,
            stderr=message.stderr,
        )

    @classmethod
    def made_up(cls, job_id: str, result: str, text: str) -> ClientJobResult:
        """A result the client produced itself (see :attr:`local`)."""
        return cls(job_id=job_id, result=result, text=text, grade=0.0, local=True)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict (the archive as base64)."""
        import base64

        return {
            "job_id": self.job_id,
            "result": self.result,
            "text": self.text,
            "grade": self.grade,
            "problems": {k: list(v) for k, v in self.problems.items()},
            "tests": self.tests,
            "custom": self.custom,
            "state": self.state,
            "archive": None if self.archive is None else base64.b64encode(self.archive).decode("ascii"),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "local": self.local,
        }


@dataclass(frozen=True)
class RunningJob:
    """One running job of a queue snapshot (times are UNIX seconds, -1: none)."""

    job_id: str
    is_mine: bool
    agent_name: str
    task: str
    launcher: str
    started_at: int
    max_end: int


@dataclass(frozen=True)
class WaitingJob:
    """One waiting job of a queue snapshot, in the order it will run."""

    job_id: str
    is_mine: bool
    task: str
    launcher: str
    time_limit: int


@dataclass(frozen=True)
class QueueSnapshot:
    """The backend's running and waiting jobs at one moment."""

    running: Tuple[RunningJob, ...] = ()
    waiting: Tuple[WaitingJob, ...] = ()

    @classmethod
    def from_message(cls, message: BackendGetQueue) -> QueueSnapshot:
        """From a ``BackendGetQueue`` of either dialect (0.9 gives the running
        jobs' time limit, not their end: ``max_end`` is computed)."""
        running = message.jobs_running
        if type(message).dialect == "0.9":
            running = [(*e[:6], e[5] + e[6] if e[6] > 0 else -1) for e in running]
        return cls(
            running=tuple(RunningJob(*entry) for entry in running),
            waiting=tuple(WaitingJob(*entry) for entry in message.jobs_waiting),
        )
