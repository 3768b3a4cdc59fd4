"""The operator's maxima: what a job may ask of an agent, whatever its client says.

A ``BackendNewJob`` carries the limits its client chose.  Every agent
(:class:`~inginious_tx.agent.core.Agent`, whatever its backend: mock, local,
docker or a plugin) passes each job through :meth:`JobMaxima.apply` before its
backend sees it:

- ``time_limit`` (CPU seconds) above ``max_time``, or 0: **capped** to ``max_time``;
- ``hard_time_limit`` (wall seconds) above ``max_hard_time``: **capped**; when
  unset it is 3 x the (capped) CPU limit, then capped;
- ``mem_limit`` (MB) above ``max_memory``, or 0: **capped** to ``max_memory``;
- ``enable_network`` without ``allow_network``: **refused** (``crash``, saying why);
- ``run_cmd`` without ``allow_run_cmd``: **refused** (``crash``, saying why).

Limits are capped because a lower limit is still a fair run (the task sees
the value it got in ``INGINIOUS_TIME_LIMIT``/``INGINIOUS_MEM_LIMIT``, and a job
that needs more ends ``timeout``/``overflow``, which says why); network and
``run_cmd`` are refused because running without them would change what the
job does, silently.  The defaults are safe: no network, no ``run_cmd``,
5 minutes of CPU, 15 minutes of wall time, 1 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

__all__ = ["JobMaxima", "DEFAULT_MAXIMA"]


@dataclass(frozen=True)
class JobMaxima:
    """Most a job may get on this agent (see the module docstring for the rules)."""

    #: CPU seconds (``time_limit``).
    max_time: int = 300
    #: Wall-clock seconds (``hard_time_limit``).
    max_hard_time: int = 900
    #: Memory in MB (``mem_limit``).
    max_memory: int = 1024
    #: Whether a job may have the network (``enable_network``).
    allow_network: bool = False
    #: Whether a job may run its own command instead of the task's ``run`` (``run_cmd``).
    allow_run_cmd: bool = False

    def __post_init__(self) -> None:
        for name in ("max_time", "max_hard_time", "max_memory"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")

    def refusal(self, job: Any) -> Optional[str]:
        """Why ``job`` cannot run here at all, or None."""
        if getattr(job, "run_cmd", None) and not self.allow_run_cmd:
            return (
                "this agent does not run a job's own command (run_cmd): its operator has not allowed it "
                "(twistd inginious-agent --allow-run-cmd)"
            )
        if getattr(job, "enable_network", False) and not self.allow_network:
            return (
                "this agent does not give jobs the network: its operator has not allowed it "
                "(twistd inginious-agent --allow-network)"
            )
        return None

    def capped(self, job: Any) -> Any:
        """``job`` with its time and memory limits within the maxima (a copy if any changed)."""
        time_limit = _number(getattr(job, "time_limit", 0))
        cpu = self.max_time if time_limit <= 0 else min(time_limit, self.max_time)
        hard_asked = _number(getattr(job, "hard_time_limit", None))
        hard: Optional[int] = int(min(hard_asked if hard_asked > 0 else 3 * cpu, self.max_hard_time))
        if hard_asked <= 0 and hard == 3 * cpu:
            hard = getattr(job, "hard_time_limit", None)  # unset stays unset: the backends' default is the same
        mem_asked = _number(getattr(job, "mem_limit", 0))
        mem = self.max_memory if mem_asked <= 0 else min(mem_asked, self.max_memory)
        wanted = (int(cpu), hard, int(mem))
        if wanted == (getattr(job, "time_limit", None), getattr(job, "hard_time_limit", None), job.mem_limit):
            return job
        # messages are immutable: a new one of the same class (and dialect), the limits changed
        fields = {name: getattr(job, name) for name in type(job).fields}
        fields.update(time_limit=wanted[0], hard_time_limit=wanted[1], mem_limit=wanted[2])
        return type(job)(**fields)

    def apply(self, job: Any) -> Tuple[Optional[str], Any]:
        """``(refusal, None)`` or ``(None, the job within the maxima)``."""
        why = self.refusal(job)
        return (why, None) if why is not None else (None, self.capped(job))


def _number(value: Any) -> float:
    """A limit as a number; anything that is not a finite number counts as unset (0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 0
    return value


#: The maxima of an agent given none.
DEFAULT_MAXIMA = JobMaxima()
