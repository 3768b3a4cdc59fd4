"""JSON log lines for machines (``--json-log FILE``).

:class:`JsonLogService` writes every log event of the process to ``FILE``,
one JSON object per line (Twisted's ``jsonFileLogObserver``; read them back
with ``twisted.logger.eventsFromJSONLogFile`` or any JSON tool), and one
compact line per job transition, from the backend's job observer hook
(:class:`JobEventLogger`): ``queued``, ``refused``, ``started``,
``requeued`` and ``finished``.  A job line is a flat object with a fixed
set of keys (:data:`JOB_KEYS`; None where one does not apply), plus
``reason`` (refusals, re-queues) and ``retries`` where they apply: about
250 bytes, where a Twisted log event with the same fields takes about 1 KB
(it repeats every field in ``log_flattened``, plus ``log_format``,
``log_logger``, ``log_source``...).  Job lines go to the JSON file only: the
text log stays as terse as the backend keeps it.

Log rotation: on ``SIGHUP`` the service closes ``FILE`` and opens it again
(``logrotate``'s ``postrotate`` sends it; ``copytruncate`` works too, as the
file is opened for appending).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import IO, Any, Callable, Dict, Optional, cast

from twisted.application.service import Service
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger, globalLogPublisher, jsonFileLogObserver
from zope.interface import implementer

from ..interfaces import IJobObserver
from .adapter import label
from .core import Backend

__all__ = ["JobEventLogger", "JsonLogService", "open_json_log", "JOB_KEYS", "JOB_NAMESPACE", "ReopenableFile"]

#: The ``log_namespace`` of job lines (what to select them by).
JOB_NAMESPACE = "inginious_tx.jobs"
#: The keys of every job line, in order.
JOB_KEYS = (
    "log_time",
    "log_namespace",
    "job_event",
    "job_id",
    "client",
    "agent",
    "environment",
    "environment_type",
    "course_id",
    "task_id",
    "result",
)


@implementer(IJobObserver)
class JobEventLogger:
    """A job observer that hands one flat dict per job transition to ``sink``
    (:data:`JOB_KEYS`, plus ``reason`` / ``retries`` where they apply).

    ``clock`` gives ``log_time`` (default: the system time).
    """

    def __init__(self, sink: Callable[[Dict[str, Any]], None], clock: Optional[IReactorTime] = None) -> None:
        self._sink = sink
        self._clock = clock

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.time()

    def _emit(self, event: str, job: Any, agent: Optional[str], result: Optional[str], **extra: Any) -> None:
        env = job.environment
        self._sink(
            {
                "log_time": self._now(),
                "log_namespace": JOB_NAMESPACE,
                "job_event": event,
                "job_id": job.job_id,
                "client": job.client_name,
                "agent": agent,
                "environment": label(env),
                "environment_type": env[0],
                "course_id": job.course_id,
                "task_id": job.task_id,
                "result": result,
                **extra,
            }
        )

    def job_queued(self, job: Any) -> None:
        self._emit("queued", job, None, None)

    def job_refused(self, client_name: str, job_id: str, reason: str) -> None:
        self._sink(
            {
                "log_time": self._now(),
                "log_namespace": JOB_NAMESPACE,
                "job_event": "refused",
                "job_id": job_id,
                "client": client_name,
                "agent": None,
                "environment": None,
                "environment_type": None,
                "course_id": None,
                "task_id": None,
                "result": "crash",
                "reason": reason,
            }
        )

    def job_started(self, job: Any, agent_name: str) -> None:
        if job.retries:
            self._emit("started", job, agent_name, None, retries=job.retries)
        else:
            self._emit("started", job, agent_name, None)

    def job_requeued(self, job: Any, agent_name: str, reason: str) -> None:
        self._emit("requeued", job, agent_name, None, reason=reason, retries=job.retries)

    def job_finished(self, job: Any, kind: str, agent_name: Optional[str]) -> None:
        self._emit("finished", job, agent_name, kind)


def open_json_log(path: str) -> IO[str]:
    """``path`` opened for appending lines (``-``: standard output)."""
    if path == "-":
        return sys.stdout
    return open(path, "a", encoding="utf-8", buffering=1)


class ReopenableFile:
    """A text file for appending lines that :meth:`reopen` closes and opens again
    by its path (log rotation); ``-`` is standard output, never reopened."""

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: Optional[IO[str]] = open_json_log(path)

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def reopen(self) -> None:
        """Open the path again (after a rotation moved the file away); on failure
        keep writing to the old file, and say so."""
        if self.path == "-" or self._file is None:
            return
        try:
            new = open_json_log(self.path)
        except OSError as e:
            self.log.error("cannot reopen the JSON log {path!r}: {error}", path=self.path, error=e.strerror)
            return
        old, self._file = self._file, new
        old.close()
        self.log.info("JSON log {path!r} reopened", path=self.path)

    def close(self) -> None:
        if self._file is None:
            return
        if self._file is sys.stdout:
            self._file.flush()
        else:
            self._file.close()
        self._file = None


class JsonLogService(Service):
    """While running: the whole log, and the job events of ``backend``, as JSON lines in ``path``;
    ``SIGHUP`` reopens ``path`` (when the service starts in the main thread)."""

    name = "inginious-json-log"  # type: ignore[assignment]  # Twisted's Service.name is an untyped None

    def __init__(self, backend: Backend, path: str, reactor: Optional[IReactorThreads] = None) -> None:
        self.backend = backend
        self.path = path
        self._reactor = reactor
        self.file: Optional[ReopenableFile] = None
        self._observer: Any = None
        self._jobs: Optional[JobEventLogger] = None
        self._previous_hup: Any = None
        self._hup_installed = False

    def _get_reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor  # type: ignore[assignment]
        return self._reactor

    def startService(self) -> None:
        super().startService()
        self.file = out = ReopenableFile(self.path)
        self._observer = jsonFileLogObserver(cast(IO[Any], out), recordSeparator="")  # plain JSON lines
        globalLogPublisher.addObserver(self._observer)
        self._jobs = JobEventLogger(self._write_job)
        self.backend.add_observer(self._jobs)
        if self.path != "-" and hasattr(signal, "SIGHUP"):
            try:
                self._previous_hup = signal.signal(signal.SIGHUP, self._on_hup)
                self._hup_installed = True
            except ValueError:  # not the main thread (embedded): no rotation by signal
                pass

    def _write_job(self, event: Dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(event, separators=(",", ":"), default=repr) + "\n")

    def _on_hup(self, signum: int, frame: Any) -> None:
        """Reopen on the reactor thread (not in the middle of a write), then
        call whatever handled SIGHUP before."""
        self._get_reactor().callFromThread(self.reopen)
        previous = self._previous_hup
        if callable(previous):
            previous(signum, frame)

    def reopen(self) -> None:
        """Close the log file and open it again by its path (log rotation)."""
        if self.file is not None:
            self.file.reopen()

    def stopService(self) -> Any:
        super().stopService()
        if self._hup_installed:
            try:
                signal.signal(signal.SIGHUP, self._previous_hup if self._previous_hup is not None else signal.SIG_DFL)
            except ValueError:
                pass
            self._hup_installed = False
        if self._jobs is not None:
            self.backend.remove_observer(self._jobs)
            self._jobs = None
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self.file is not None:
            self.file.close()
            self.file = None
        return succeed(None)
