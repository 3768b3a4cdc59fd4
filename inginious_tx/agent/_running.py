"""The record every agent backend keeps of a job while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from ..messages import BackendNewJob

__all__ = ["JobRun"]


@dataclass
class JobRun:
    """One running job: its timers, when it is up, when it is over.

    Backends extend it with what their kind of sandbox needs (a container id,
    a process and its control group).
    """

    job: BackendNewJob
    #: timers of the job (deadlines, kill escalation): cancelled when it ends
    calls: List[IDelayedCall] = field(default_factory=list)
    #: fires once the job's sandbox runs, or with None if the job ends before (ssh debug)
    up: Deferred = field(default_factory=Deferred)
    #: fires once the job is over and cleaned up
    done: Deferred = field(default_factory=Deferred)
    #: serves the job's run_student calls while it runs
    students: Any = None

    def cancel_calls(self) -> None:
        """Cancel the timers still pending: the job is over."""
        for call in self.calls:
            if call.active():
                call.cancel()

    def never_up(self) -> None:
        """The job ended: whoever still waits for it to come up gets None."""
        if not self.up.called:
            self.up.callback(None)
