"""An agent backend that grades short-answer quizzes without running any code.

A task is a folder ``TASKS/<course_id>/<task_id>/`` holding ``quiz.json``,
which maps each question id to its accepted answers::

    {"q1": "Paris", "q2": ["Berne", "Bern"]}

A job's input holds the student's answers under the same ids.  Answers are
compared without regard to case or surrounding blanks; each question becomes
one problem of the result, and the grade is the share of right answers.

Reading ``quiz.json`` is blocking file I/O, so it runs in the reactor's
thread pool (in ``_thd_grade``); everything else runs on the reactor thread.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from inginious_tx.agent import AgentConfig, JobResult
from inginious_tx.agent.task import ID_PATTERN
from inginious_tx.interfaces import IAgentBackend
from inginious_tx.messages import BackendJobId, BackendNewJob

__all__ = ["QuizBackend"]


@implementer(IAgentBackend)
class QuizBackend:
    """Grades ``quiz.json`` tasks: answers compared with the accepted ones."""

    name = "quiz"

    def __init__(self, reactor: Any, config: AgentConfig) -> None:
        if not config.tasks_dir:
            raise ValueError("the quiz backend needs --tasks")
        self._reactor = reactor
        self._tasks_dir = config.tasks_dir
        names = [value.split("=", 1)[0] for value in config.environments] or ["default"]
        self._environments = {name: {"id": f"quiz:{name}", "created": 0, "ports": []} for name in names}
        # job id -> the Deferred that run() returned, until it has fired
        self._pending: Dict[BackendJobId, Deferred] = {}

    def environments(self) -> Deferred:
        return succeed({name: dict(info) for name, info in self._environments.items()})

    def run(self, job: BackendNewJob) -> Deferred:
        answer: Deferred = Deferred()
        self._pending[job.job_id] = answer
        work = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._thd_grade, job)
        work.addBoth(self._graded, job.job_id)
        return answer

    def _graded(self, outcome: Any, job_id: BackendJobId) -> None:
        answer = self._pending.pop(job_id, None)
        if answer is None:
            return  # killed meanwhile: the job was already answered
        if isinstance(outcome, Failure):
            answer.errback(outcome)  # the agent answers "crash" and logs it
        else:
            answer.callback(outcome)

    def kill(self, job_id: BackendJobId) -> None:
        # A thread cannot be interrupted: answer now, drop the grade later.
        answer = self._pending.pop(job_id, None)
        if answer is not None:
            answer.callback(JobResult.killed())

    def close(self) -> Deferred:
        for job_id in list(self._pending):
            self.kill(job_id)
        return succeed(None)

    def _thd_grade(self, job: BackendNewJob) -> JobResult:
        """Runs in a thread: read the task's quiz and grade the answers."""
        for value in (job.course_id, job.task_id):
            if not ID_PATTERN.match(value):
                return JobResult.crash(f"invalid course or task id {value!r}")
        path = os.path.join(self._tasks_dir, job.course_id, job.task_id, "quiz.json")
        try:
            with open(path, encoding="utf-8") as f:
                quiz = json.load(f)
        except FileNotFoundError:
            return JobResult.crash(f"task {job.course_id}/{job.task_id} has no quiz.json on this agent")
        except (OSError, ValueError) as e:
            return JobResult("error", f"the task's quiz.json cannot be read: {e}")
        if not isinstance(quiz, dict) or not quiz:
            return JobResult("error", "the task's quiz.json must be a non-empty JSON object")

        problems = {}
        for question, accepted in quiz.items():
            given = job.inputdata.get(question)
            right = isinstance(given, str) and _normal(given) in _accepted(accepted)
            problems[question] = ("success", "Right.") if right else ("failed", "Wrong answer.")
        score = sum(1 for result, _ in problems.values() if result == "success")
        return JobResult(
            "success" if score == len(quiz) else "failed",
            f"{score} of {len(quiz)} answers are right.",
            grade=100.0 * score / len(quiz),
            problems=problems,
        )


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def _accepted(value: Any) -> List[str]:
    values = value if isinstance(value, list) else [value]
    return [_normal(str(v)) for v in values]
