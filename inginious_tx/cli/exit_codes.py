"""The exit statuses of ``inginious-tx`` and how a set of results maps to one."""

from __future__ import annotations

from typing import Sequence

from ..client import ClientJobResult

__all__ = [
    "EXIT_CODES", "EXIT_SUCCESS", "EXIT_FAILED", "EXIT_OTHER", "EXIT_USAGE", "EXIT_NO_ENVIRONMENT",
    "EXIT_UNAVAILABLE", "EXIT_SOFTWARE", "EXIT_INTERRUPTED", "exit_status",
]  # fmt: skip

EXIT_SUCCESS = 0
EXIT_FAILED = 1
EXIT_OTHER = 2
EXIT_USAGE = 64
EXIT_NO_ENVIRONMENT = 65
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_INTERRUPTED = 130

#: Exit status -> meaning, as --help shows it.
EXIT_CODES = {
    EXIT_SUCCESS: "every job succeeded (queue, environments: the backend answered)",
    EXIT_FAILED: "a job failed (and none ended otherwise)",
    EXIT_OTHER: "a job ended with another result: error, crash, timeout, overflow, killed",
    EXIT_USAGE: "bad usage: bad option or argument, bad endpoint string, bad --input or input file",
    EXIT_NO_ENVIRONMENT: "no agent offers the environment asked for",
    EXIT_UNAVAILABLE: "the backend is unreachable, or was lost before it answered",
    EXIT_SOFTWARE: "internal error (a bug, or a broken transport plugin)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); pending jobs were asked to stop",
}


def exit_status(results: Sequence[ClientJobResult]) -> int:
    """The status of a run that ended with ``results``: the worst one wins."""
    if any(r.backend_unavailable for r in results):
        return EXIT_UNAVAILABLE
    if any(r.result not in ("success", "failed") for r in results):
        return EXIT_OTHER
    if any(r.result == "failed" for r in results):
        return EXIT_FAILED
    return EXIT_SUCCESS
