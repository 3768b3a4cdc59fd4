"""JSON log lines for machines (``--json-log FILE``).

:class:`JsonLogService` writes every log event of the process to ``FILE``,
one JSON object per line (Twisted's ``jsonFileLogObserver``; read them back
with ``twisted.logger.eventsFromJSONLogFile`` or any JSON tool), and adds one
event per job transition, from the backend's job observer hook
(:class:`JobEventLogger`): ``queued``, ``refused``, ``started``,
``requeued`` and ``finished``, each with the keys ``job_event``, ``job_id``,
``client``, ``agent``, ``environment``, ``course_id``, ``task_id`` and
``result`` (None where they do not apply).  Those job events go to the JSON
file only: the text log stays as terse as the backend keeps it.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import succeed
from twisted.logger import ILogObserver, Logger, globalLogPublisher, jsonFileLogObserver
from zope.interface import implementer

from ..interfaces import IJobObserver
from .adapter import label
from .core import Backend

__all__ = ["JobEventLogger", "JsonLogService", "open_json_log"]

_FORMAT = (
    "job {job_id!r} {job_event}: client {client!r}, agent {agent!r}, environment {environment!r}, result {result!r}"
)


@implementer(IJobObserver)
class JobEventLogger:
    """A job observer that emits one log event per job transition to ``observer``."""

    def __init__(self, observer: ILogObserver) -> None:
        self._log = Logger(namespace="inginious_tx.jobs", observer=observer)

    def _emit(self, event: str, job: Any, agent: Optional[str], result: Optional[str], **extra: Any) -> None:
        self._log.info(
            _FORMAT,
            job_event=event,
            job_id=job.job_id,
            client=job.client_name,
            agent=agent,
            environment=label(job.environment),
            course_id=job.course_id,
            task_id=job.task_id,
            result=result,
            **extra,
        )

    def job_queued(self, job: Any) -> None:
        self._emit("queued", job, None, None, priority=job.priority, retries=job.retries)

    def job_refused(self, client_name: str, job_id: str, reason: str) -> None:
        self._log.warn(
            _FORMAT + " ({reason})",
            job_event="refused",
            job_id=job_id,
            client=client_name,
            agent=None,
            environment=None,
            course_id=None,
            task_id=None,
            result="crash",
            reason=reason,
        )

    def job_started(self, job: Any, agent_name: str) -> None:
        self._emit("started", job, agent_name, None, retries=job.retries)

    def job_requeued(self, job: Any, agent_name: str, reason: str) -> None:
        self._emit("requeued", job, agent_name, None, reason=reason, retries=job.retries)

    def job_finished(self, job: Any, kind: str, agent_name: Optional[str]) -> None:
        self._emit("finished", job, agent_name, kind)


def open_json_log(path: str) -> IO[str]:
    """``path`` opened for appending lines (``-``: standard output)."""
    if path == "-":
        return sys.stdout
    return open(path, "a", encoding="utf-8", buffering=1)


class JsonLogService(Service):
    """While running: the whole log, and the job events of ``backend``, as JSON lines in ``path``."""

    name = "inginious-json-log"  # type: ignore[assignment]  # Twisted's Service.name is an untyped None

    def __init__(self, backend: Backend, path: str) -> None:
        self.backend = backend
        self.path = path
        self._file: Optional[IO[str]] = None
        self._observer: Any = None
        self._jobs: Optional[JobEventLogger] = None

    def startService(self) -> None:
        super().startService()
        self._file = open_json_log(self.path)
        self._observer = jsonFileLogObserver(self._file, recordSeparator="")  # plain JSON lines
        globalLogPublisher.addObserver(self._observer)
        self._jobs = JobEventLogger(self._observer)
        self.backend.add_observer(self._jobs)

    def stopService(self) -> Any:
        super().stopService()
        if self._jobs is not None:
            self.backend.remove_observer(self._jobs)
            self._jobs = None
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            if self._file is not sys.stdout:
                self._file.close()
            else:
                self._file.flush()
            self._file = None
        return succeed(None)
