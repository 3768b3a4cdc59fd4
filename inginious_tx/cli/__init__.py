"""``inginious-tx``: submit jobs to a grading backend and look at its queue.

One module per concern: :mod:`.parser` (the options), :mod:`.inputs` (job
input from the command line and files), :mod:`.output` (what is printed),
:mod:`.progress` (the progress bar), :mod:`.exit_codes`, :mod:`.probe` (why a
backend is unreachable, at once), and :mod:`.runner`
(the command under the reactor, and :func:`main`, the console script).
"""

from __future__ import annotations

from .exit_codes import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_ENVIRONMENT,
    EXIT_NO_TASK,
    EXIT_OTHER,
    EXIT_SOFTWARE,
    EXIT_SUCCESS,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    exit_status,
)
from .inputs import UsageError, load_inputs
from .output import Outcome, format_queue, format_result, format_summary, format_table, summarize
from .parser import BACKEND_ENV, DEFAULT_BACKEND, ENDPOINT_FORMS, KILL_GRACE, build_parser
from .progress import Progress
from .runner import CommandError, Report, main

__all__ = [
    "main", "build_parser", "load_inputs", "UsageError", "CommandError", "Report", "Outcome", "Progress",
    "format_result", "format_table", "format_summary", "format_queue", "summarize", "exit_status",
    "DEFAULT_BACKEND", "BACKEND_ENV", "ENDPOINT_FORMS", "KILL_GRACE", "EXIT_CODES", "EXIT_SUCCESS", "EXIT_FAILED",
    "EXIT_OTHER", "EXIT_USAGE", "EXIT_NO_ENVIRONMENT", "EXIT_NO_TASK", "EXIT_UNAVAILABLE", "EXIT_SOFTWARE",
    "EXIT_INTERRUPTED",
]  # fmt: skip
