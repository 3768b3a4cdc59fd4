"""What an agent backend reports for a job, and how it is configured."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..messages import AgentJobDone, BackendJobId

__all__ = ["RESULT_TYPES", "JobResult", "AgentConfig"]

#: The result types of PROTOCOL.md section 5.
RESULT_TYPES = ("success", "failed", "error", "crash", "timeout", "overflow", "killed")


@dataclass
class JobResult:
    """The outcome of one job, before it becomes an :class:`AgentJobDone`.

    ``grade`` defaults to 100 for success and 0 for anything else.
    """

    result: str
    text: str = ""
    grade: Optional[float] = None
    problems: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    tests: Dict[str, Any] = field(default_factory=dict)
    custom: Dict[str, Any] = field(default_factory=dict)
    state: str = ""
    archive: Optional[bytes] = None
    stdout: Optional[str] = None
    stderr: Optional[str] = None

    def __post_init__(self) -> None:
        if self.result not in RESULT_TYPES:
            raise ValueError(f"unknown result type {self.result!r}")
        if self.grade is None:
            self.grade = 100.0 if self.result == "success" else 0.0

    @classmethod
    def crash(cls, text: str) -> JobResult:
        """The system's fault: the job could not be run as asked."""
        return cls("crash", text)

    @classmethod
    def killed(cls, text: str = "the job was killed") -> JobResult:
        return cls("killed", text)

    def to_message(self, job_id: BackendJobId) -> AgentJobDone:
        return AgentJobDone(
            job_id,
            (self.result, self.text),
            float(self.grade),  # type: ignore[arg-type]
            {k: tuple(v) for k, v in self.problems.items()},  # type: ignore[misc]
            self.tests,
            self.custom,
            self.state,
            self.archive,
            self.stdout,
            self.stderr,
        )


@dataclass
class AgentConfig:
    """Settings an agent backend is built from (``--tasks``, ``--environment``...).

    Every agent backend plugin is a class called as ``Backend(reactor, config)``.
    ``environments`` holds the raw ``--environment`` values (``NAME`` or
    ``NAME=IMAGE``); ``options`` holds backend-specific extras.
    """

    tasks_dir: Optional[str] = None
    environments: List[str] = field(default_factory=list)
    slots: int = 1
    options: Dict[str, Any] = field(default_factory=dict)
    #: Caps on what a job sends back (an :class:`inginious_tx.agent.task.OutputLimits`;
    #: None: its defaults), from ``--max-stdout``, ``--max-stderr``, ``--max-archive``.
    output_limits: Any = None

    def environment_names(self) -> List[str]:
        """The names of the ``--environment NAME[=VALUE]`` values (``default`` if none)."""
        names = [value.split("=", 1)[0].strip() for value in self.environments]
        return [n for n in names if n] or ["default"]
