"""The exit statuses of ``inginious-tx`` and how a set of results maps to one."""

from __future__ import annotations

import re
from typing import Sequence

from ..client import ClientJobResult

__all__ = [
    "EXIT_CODES", "EXIT_SUCCESS", "EXIT_FAILED", "EXIT_OTHER", "EXIT_USAGE", "EXIT_NO_ENVIRONMENT",
    "EXIT_UNAVAILABLE", "EXIT_SOFTWARE", "EXIT_INTERRUPTED", "EXIT_NO_TASK", "EXIT_CANTCREAT", "exit_status",
    "is_unknown_task",
]  # fmt: skip

EXIT_SUCCESS = 0
EXIT_FAILED = 1
EXIT_OTHER = 2
EXIT_USAGE = 64
EXIT_NO_ENVIRONMENT = 65
EXIT_NO_TASK = 66
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_CANTCREAT = 73
EXIT_INTERRUPTED = 130

#: Exit status -> meaning, as --help shows it.
EXIT_CODES = {
    EXIT_SUCCESS: "every job succeeded (queue, environments: the backend answered)",
    EXIT_FAILED: "a job failed (and none ended otherwise)",
    EXIT_OTHER: "a job ended with another result: error, crash, timeout, overflow, killed",
    EXIT_USAGE: "bad usage: bad option or argument, bad endpoint string, bad --input or input file",
    EXIT_NO_ENVIRONMENT: "no agent offers the environment asked for",
    EXIT_NO_TASK: "the agent has no such task (a typo in COURSE/TASK?): it answered 'crash' without running it",
    EXIT_UNAVAILABLE: "the backend is unreachable, or was lost before it answered",
    EXIT_SOFTWARE: "internal error (a bug, or a broken transport plugin)",
    EXIT_CANTCREAT: "the jobs succeeded but an archive could not be saved (--archive-dir)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); pending jobs were asked to stop",
}


#: How agents word their 'crash' for a task they do not have (inginious-tx's agents; INGInious 0.7-0.9's):
#: the protocol has no result kind for it, only the text.
_NO_TASK = re.compile(
    r"^(task \S+ does not exist on this agent|task \S+ has no 'run' file|invalid (course|task) id "
    r"|Task unavailable on agent)"
)


def is_unknown_task(result: ClientJobResult) -> bool:
    """Whether ``result`` is an agent's refusal of a task it does not have, rather than a crash of the job."""
    return result.result == "crash" and bool(_NO_TASK.match(result.text or ""))


def exit_status(results: Sequence[ClientJobResult]) -> int:
    """The status of a run that ended with ``results``: the worst one wins
    (the backend lost, then a task unknown to the agent, then any other result, then failed)."""
    if any(r.backend_unavailable for r in results):
        return EXIT_UNAVAILABLE
    if any(is_unknown_task(r) for r in results):
        return EXIT_NO_TASK
    if any(r.result not in ("success", "failed") for r in results):
        return EXIT_OTHER
    if any(r.result == "failed" for r in results):
        return EXIT_FAILED
    return EXIT_SUCCESS
