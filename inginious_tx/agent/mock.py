"""The ``mock`` agent backend: answers jobs without running anything.

For tests and benchmarks of the backend and clients.  What a job returns is
read from its input data, falling back to ``--option`` defaults
(``AgentConfig.options``):

==================  ==================  =============================================
input key           option              meaning
==================  ==================  =============================================
``@mock_result``    ``result``          result type (default ``success``)
``@mock_text``      ``text``            feedback text (default empty)
``@mock_grade``     ``grade``           grade (default: 100 for success, else 0)
``@mock_delay``     ``delay``           seconds before the answer (default 0), on
                                        the reactor's clock; a kill ends it early
``@mock_fail``      ``fail``            ``raise`` (run raises), ``errback`` (run
                                        fails), ``hang`` (never answers unless
                                        killed), ``garbage`` (answers a non-result)
``@mock_problems``                      ``{id: [result, text]}``
``@mock_stdout``                        the job's stdout
==================  ==================  =============================================

A job costs one dict lookup per key and, with a delay, one ``callLater``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from ..interfaces import IAgentBackend
from ..messages import BackendJobId, BackendNewJob
from .result import AgentConfig, JobResult

__all__ = ["MockBackend", "MockFailure"]

_FAIL_MODES = ("", "raise", "errback", "hang", "garbage")


class MockFailure(RuntimeError):
    """The failure a job asked for with ``@mock_fail``."""


def environment_names(config: AgentConfig) -> List[str]:
    """Kept for older callers: :meth:`AgentConfig.environment_names`."""
    return config.environment_names()


@implementer(IAgentBackend)
class MockBackend:
    """Answers every job from its input data (see the module docstring)."""

    name = "mock"

    def __init__(self, reactor: IReactorTime, config: AgentConfig) -> None:
        self._reactor = reactor
        opts = config.options
        self._result = str(opts.get("result", "success"))
        self._text = str(opts.get("text", ""))
        self._grade = None if opts.get("grade") is None else float(opts["grade"])
        self._delay = float(opts.get("delay", 0))
        self._fail = str(opts.get("fail", ""))
        if self._fail not in _FAIL_MODES:
            raise ValueError(f"unknown mock failure mode {self._fail!r} (one of {', '.join(_FAIL_MODES[1:])})")
        JobResult(self._result)  # checks the type now rather than on every job
        self._environments = {
            name: {"id": f"mock:{name}", "created": 0, "ports": []} for name in config.environment_names()
        }
        self._pending: Dict[BackendJobId, Tuple[Optional[IDelayedCall], Deferred]] = {}

    def environments(self) -> Deferred:
        return succeed({k: dict(v) for k, v in self._environments.items()})

    def run(self, job: BackendNewJob) -> Deferred:
        data = job.inputdata
        mode = data.get("@mock_fail", self._fail)
        if mode == "raise":
            raise MockFailure("the job asked the mock backend to fail")
        if mode == "errback":
            return fail(MockFailure("the job asked the mock backend to fail"))
        if mode == "garbage":
            return succeed({"result": "not a JobResult"})
        result = self._result_for(data)
        delay = float(data.get("@mock_delay", self._delay))
        if mode != "hang" and delay <= 0:
            return succeed(result)
        job_id = job.job_id
        d: Deferred = Deferred(lambda _: self.kill(job_id))
        call = None if mode == "hang" else self._reactor.callLater(delay, self._answer, job_id, result)
        self._pending[job_id] = (call, d)
        return d

    def _result_for(self, data: Dict[str, Any]) -> JobResult:
        grade = data.get("@mock_grade", self._grade)
        problems = data.get("@mock_problems") or {}
        return JobResult(
            str(data.get("@mock_result", self._result)),
            str(data.get("@mock_text", self._text)),
            grade=None if grade is None else float(grade),
            problems={str(k): (str(v[0]), str(v[1])) for k, v in problems.items()},
            stdout=data.get("@mock_stdout"),
        )

    def _answer(self, job_id: BackendJobId, result: JobResult) -> None:
        entry = self._pending.pop(job_id, None)
        if entry is not None:
            entry[1].callback(result)

    def kill(self, job_id: BackendJobId) -> None:
        entry = self._pending.pop(job_id, None)
        if entry is None:
            return
        call, d = entry
        if call is not None and call.active():
            call.cancel()
        if not d.called:
            d.callback(JobResult.killed())

    def close(self) -> Deferred:
        for job_id in list(self._pending):
            self.kill(job_id)
        return succeed(None)
