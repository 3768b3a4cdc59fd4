"""The ``mcq`` agent backend: grades multiple-choice and match tasks, no container.

What INGInious 0.9's own mcq agent (``inginious-agent-mcq``) does, as a
plugin of ours: jobs of environment type ``mcq``, environment ``mcq``, are
graded from the problems the job carries (``task_problems``, 0.9 dialect
only) and its input, by the rules of :mod:`inginious_tx.agent.mcq_rules`,
with the translations of :mod:`inginious_tx.agent.mcq_i18n`.  Many jobs run
at once: grading is a few dictionary look-ups.

With ``--tasks`` the task folder is checked (a missing task answers
"Task unavailable on agent", as INGInious does) and the task's own catalog
``$i18n/LANG.mo`` translates its texts; those file reads run in a small
thread pool.  Without ``--tasks`` jobs are graded from their problems alone.

Start it with ``twistd -n inginious-agent --kind mcq --backend ENDPOINT
[--tasks DIR]`` (the 0.9 dialect is implied) or ``inginious-tx-agent-mcq``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IAgentBackend, ITaskProblemsBackend
from ..messages import BackendJobId, BackendNewJob
from ._threads import BackendThreads
from .mcq_i18n import MoCache, TaskFiles, agent_text, task_files
from .mcq_rules import Verdict, crash, grade, language_of
from .result import AgentConfig, JobResult

__all__ = ["MCQBackend", "ENVIRONMENT"]

#: The one environment offered (and its type, in the 0.9 dialect).
ENVIRONMENT = "mcq"
#: Threads reading task folders (``--tasks``): stat calls and small files.
_FILE_THREADS = 4


@implementer(IAgentBackend, ITaskProblemsBackend)
class MCQBackend:
    """Grades multiple-choice and match problems as INGInious 0.9's mcq agent does (0.9 dialect)."""

    name = "mcq"
    #: The dialect this kind speaks (``twistd inginious-agent`` implies it).
    dialect = "0.9"
    #: Nothing is run: the agent's network and run_cmd refusals do not apply.
    runs_code = False

    log = Logger()

    def __init__(self, reactor: IReactorTime, config: AgentConfig) -> None:
        others = [n for n in (v.split("=", 1)[0].strip() for v in config.environments) if n != ENVIRONMENT]
        if others:
            raise ValueError(f"the mcq agent offers only the environment {ENVIRONMENT!r}, not {', '.join(others)}")
        if config.options:
            raise ValueError(f"the mcq agent takes no --option (got {', '.join(sorted(config.options))})")
        self._tasks_dir = config.tasks_dir
        self._threads = BackendThreads(reactor, "mcq-task-files", _FILE_THREADS)  # type: ignore[arg-type]
        self._mo_cache = MoCache()

    def environments(self) -> Deferred:
        return succeed({ENVIRONMENT: {"id": ENVIRONMENT, "created": 0, "ports": []}})

    def run(self, job: BackendNewJob) -> Deferred:
        """A job without its problems (the 0.6 dialect has none): answered ``crash``."""
        return self.run_with_problems(job, None)

    def run_with_problems(self, job: BackendNewJob, task_problems: Optional[Dict[str, Any]]) -> Deferred:
        inputdata = job.inputdata
        if task_problems is None:
            return succeed(
                _result(crash(inputdata, "the mcq agent needs the INGInious 0.9 dialect (jobs carry their problems)"))
            )
        if self._tasks_dir is None:
            return succeed(self._grade(job, task_problems, None))
        d = self._threads.call(
            task_files, self._tasks_dir, job.course_id, job.task_id, language_of(inputdata), self._mo_cache
        )
        d.addCallback(lambda files: self._grade(job, task_problems, files))
        return d

    def _grade(self, job: BackendNewJob, task_problems: Dict[str, Any], files: Optional[TaskFiles]) -> JobResult:
        inputdata = job.inputdata
        if files is not None and files.error is not None:
            verdict = crash(inputdata, files.error)
        else:
            translate = files.translate if files is not None else _no_translation
            verdict = grade(task_problems, inputdata, agent_text(language_of(inputdata)), translate)
        if verdict.reason is not None:
            self.log.info(
                "job {job_id} ({course}/{task}) cannot be graded: {reason}",
                job_id=job.job_id[1],
                course=job.course_id,
                task=job.task_id,
                reason=verdict.reason,
            )
        return _result(verdict)

    def kill(self, job_id: BackendJobId) -> None:
        """Nothing to stop: a job is answered as soon as it is graded."""

    def close(self) -> Deferred:
        self._threads.stop()
        return succeed(None)


def _no_translation(text: Any) -> Any:
    return text


def _result(verdict: Verdict) -> JobResult:
    if verdict.result == "crashed":
        # INGInious' mcq agent answers "crashed" (not a result type of ours)
        # for a task without problems; the same word goes out so that
        # frontends see the same verdict.
        result = JobResult("crash", verdict.text, verdict.grade, dict(verdict.problems), state=verdict.state)
        result.result = "crashed"
        return result
    return JobResult(verdict.result, verdict.text, verdict.grade, dict(verdict.problems), state=verdict.state)
