"""Unit tests of the Agent (protocol side) and the mock backend, on a Clock."""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from inginious_tx.agent.core import Agent
from inginious_tx.agent.mock import MockBackend
from inginious_tx.agent.result import AgentConfig, JobResult
from inginious_tx.interfaces import IAgentBackend, IAgentHandler
from inginious_tx.messages import (
    AgentHello,
    AgentJobDone,
    AgentJobStarted,
    BackendKillJob,
    BackendNewJob,
    Ping,
    Pong,
)
from inginious_tx.plugin import load
from inginious_tx.testing import MemoryTransport, RecordingSink


def new_job(n: Any, env: str = "default", debug: Any = False, **inputdata: Any) -> BackendNewJob:
    return BackendNewJob((b"client-1", f"job-{n}"), "demo", "pass", inputdata, env, False, 10, None, 100, debug, None)


class Harness:
    """An agent linked to a recording 'backend' through a MemoryTransport."""

    def __init__(self, backend: Any = None, slots: int = 2, **kwargs: Any) -> None:
        self.clock = Clock()
        self.mem = MemoryTransport()
        self.sink = RecordingSink()
        self.mem.listen(self.clock, "mem:agents", self.sink)
        self.backend = backend if backend is not None else MockBackend(self.clock, AgentConfig())
        self.agent = Agent(self.clock, self.backend, "agent-1", slots, "mem:agents", transport=self.mem, **kwargs)
        self.agent.startService()
        self.mem.pump()

    @property
    def peer(self) -> Any:
        """How the backend sees the agent (latest link)."""
        return self.sink.connected[-1]

    def send(self, message: Any) -> None:
        self.peer.send(message)
        self.mem.pump()

    def of(self, cls: type) -> List[Any]:
        return [m for _, m in self.sink.messages if isinstance(m, cls)]

    def dones(self) -> Dict[str, List[AgentJobDone]]:
        out: Dict[str, List[AgentJobDone]] = {}
        for m in self.of(AgentJobDone):
            out.setdefault(m.job_id[1], []).append(m)
        return out


@implementer(IAgentBackend)
class ScriptedBackend:
    """A backend whose run Deferreds the test controls."""

    name = "scripted"

    def __init__(self, envs: Any = None, kill_works: bool = True) -> None:
        self.runs: Dict[Any, Deferred] = {}
        self.killed: List[Any] = []
        self.envs = envs if envs is not None else (lambda: succeed({"default": {"id": "x", "created": 0, "ports": []}}))
        self.kill_works = kill_works
        self.closed = False

    def environments(self) -> Deferred:
        return self.envs()

    def run(self, job: BackendNewJob) -> Deferred:
        d: Deferred = Deferred()
        self.runs[job.job_id] = d
        return d

    def kill(self, job_id: Any) -> None:
        self.killed.append(job_id)
        if self.kill_works and job_id in self.runs and not self.runs[job_id].called:
            self.runs[job_id].callback(JobResult.killed())

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)


def test_interfaces() -> None:
    h = Harness()
    verifyObject(IAgentHandler, h.agent)
    verifyObject(IAgentBackend, h.backend)
    verifyObject(IAgentBackend, ScriptedBackend())
    assert load("inginious_tx.agent_backends", "mock") is MockBackend
    verifyClass(IAgentBackend, MockBackend)


def test_hello_on_connect() -> None:
    h = Harness(backend=MockBackend(Clock(), AgentConfig(environments=["default", "py=ignored"])), slots=3)
    (hello,) = h.of(AgentHello)
    assert hello.friendly_name == "agent-1"
    assert hello.available_job_slots == 3
    assert set(hello.available_containers) == {"default", "py"}
    assert hello.available_containers["py"]["id"] == "mock:py"


def test_ping_pong_and_silence_reconnect() -> None:
    h = Harness()
    for _ in range(30):  # a ping every second keeps the link
        h.clock.advance(1)
        h.send(Ping())
    assert len(h.of(Pong)) == 30
    assert len(h.sink.connected) == 1
    h.clock.advance(10.5)  # silence: reconnect and say hello again
    h.mem.pump()
    assert len(h.sink.connected) == 2
    assert len(h.of(AgentHello)) == 2
    h.clock.advance(10.5)  # still silent: try again
    h.mem.pump()
    assert len(h.of(AgentHello)) == 3


def test_job_success_and_problems() -> None:
    h = Harness()
    h.send(new_job(1, **{"@mock_problems": {"q1": ["failed", "nope"]}, "@mock_stdout": "out"}))
    assert [m.job_id for m in h.of(AgentJobStarted)] == [(b"client-1", "job-1")]
    (done,) = h.dones()["job-1"]
    assert done.result == ("success", "")
    assert done.grade == 100.0
    assert done.problems == {"q1": ("failed", "nope")}
    assert done.stdout == "out"
    assert h.agent.busy == 0


def test_mock_delay_and_kill() -> None:
    h = Harness()
    h.send(new_job(1, **{"@mock_delay": 5, "@mock_result": "failed", "@mock_grade": 40}))
    h.send(new_job(2, **{"@mock_delay": 5}))
    assert h.dones() == {}
    assert h.agent.busy == 2
    h.send(BackendKillJob((b"client-1", "job-2")))
    assert h.dones()["job-2"][0].result[0] == "killed"
    h.clock.advance(5)
    h.mem.pump()
    d1 = h.dones()["job-1"]
    assert len(d1) == 1 and d1[0].result[0] == "failed" and d1[0].grade == 40.0
    assert len(h.dones()["job-2"]) == 1
    assert h.agent.busy == 0


@pytest.mark.parametrize("mode", ["raise", "errback", "garbage"])
def test_backend_failures_give_one_crash(mode: str) -> None:
    h = Harness()
    h.send(new_job(1, **{"@mock_fail": mode}))
    (done,) = h.dones()["job-1"]
    assert done.result[0] == "crash"
    assert done.grade == 0.0
    assert h.agent.busy == 0


def test_bad_result_value_gives_crash() -> None:
    h = Harness()
    h.send(new_job(1, **{"@mock_result": "weird"}))
    (done,) = h.dones()["job-1"]
    assert done.result[0] == "crash" and "weird" in done.result[1]


def test_refusals() -> None:
    h = Harness(slots=1)
    h.send(new_job(1, env="nope"))
    h.send(new_job(2, debug="ssh"))
    dones = h.dones()
    assert dones["job-1"][0].result[0] == "crash" and "'nope' is not offered" in dones["job-1"][0].result[1]
    assert dones["job-2"][0].result == ("crash", "ssh debug is not supported by this agent")
    assert h.of(AgentJobStarted) == []
    h.send(new_job(3, debug=True))  # plain debug runs normally
    assert h.dones()["job-3"][0].result[0] == "success"


def test_slots_and_duplicates() -> None:
    backend = ScriptedBackend()
    h = Harness(backend=backend, slots=2)
    h.send(new_job(1))
    h.send(new_job(2))
    h.send(new_job(3))
    assert h.dones()["job-3"][0].result[0] == "crash"
    assert "agent has no free slot" in h.dones()["job-3"][0].result[1]
    h.send(new_job(1))  # duplicate of a running job
    assert [d.result[0] for d in h.dones()["job-1"]] == ["crash"]
    backend.runs[(b"client-1", "job-1")].callback(JobResult("failed", "bad", grade=12))
    h.mem.pump()
    assert [d.result[0] for d in h.dones()["job-1"]] == ["crash", "failed"]  # the original is untouched
    h.send(new_job(4))  # a slot is free again
    assert "job-4" not in h.dones()
    assert len(h.of(AgentJobStarted)) == 3


def test_kill_overdue_and_late_result_dropped() -> None:
    backend = ScriptedBackend(kill_works=False)
    h = Harness(backend=backend, kill_grace=3)
    h.send(new_job(1))
    h.send(BackendKillJob((b"client-1", "job-1")))
    h.send(BackendKillJob((b"client-1", "job-1")))  # asked twice: killed once
    h.send(BackendKillJob((b"client-1", "unknown")))
    assert backend.killed == [(b"client-1", "job-1")]
    assert h.dones() == {}
    h.clock.advance(3)
    h.mem.pump()
    assert [d.result[0] for d in h.dones()["job-1"]] == ["killed"]
    backend.runs[(b"client-1", "job-1")].callback(JobResult("success"))
    h.mem.pump()
    assert len(h.dones()["job-1"]) == 1


def test_kill_raising_backend_still_answers() -> None:
    backend = ScriptedBackend()

    def broken_kill(job_id: Any) -> None:
        raise RuntimeError("boom")

    backend.kill = broken_kill  # type: ignore[method-assign]
    h = Harness(backend=backend, kill_grace=2)
    h.send(new_job(1))
    h.send(BackendKillJob((b"client-1", "job-1")))
    h.clock.advance(2)
    h.mem.pump()
    assert [d.result[0] for d in h.dones()["job-1"]] == ["killed"]


def test_reconnect_orphans_running_jobs() -> None:
    backend = ScriptedBackend(kill_works=False)
    h = Harness(backend=backend, slots=1)
    h.send(new_job(1))
    assert h.agent.busy == 1
    h.agent._connection.reconnect()  # as after silence
    h.mem.pump()
    assert len(h.of(AgentHello)) == 2
    assert backend.killed == [(b"client-1", "job-1")]
    assert h.agent.busy == 0
    h.send(new_job(2))  # the slot the backend believes free is usable
    assert "job-2" not in h.dones()
    backend.runs[(b"client-1", "job-1")].callback(JobResult("success"))  # late: still exactly one answer
    h.mem.pump()
    assert [d.result[0] for d in h.dones()["job-1"]] == ["success"]


def test_environment_failure_retries_hello() -> None:
    calls = []

    def envs() -> Deferred:
        calls.append(1)
        if len(calls) == 1:
            return fail(RuntimeError("docker is down"))
        return succeed({"default": {"id": "x", "created": 0, "ports": []}})

    h = Harness(backend=ScriptedBackend(envs=envs), hello_retry=5)
    assert h.of(AgentHello) == []
    h.clock.advance(5)
    h.mem.pump()
    assert len(h.of(AgentHello)) == 1


def test_unencodable_result_gives_crash() -> None:
    backend = ScriptedBackend()
    h = Harness(backend=backend)
    h.send(new_job(1))
    backend.runs[(b"client-1", "job-1")].callback(JobResult("success", custom={"x": object()}))
    h.mem.pump()
    (done,) = h.dones()["job-1"]
    assert done.result[0] == "crash" and "could not be sent" in done.result[1]


def test_stop_kills_and_answers() -> None:
    backend = ScriptedBackend()
    h = Harness(backend=backend)
    h.send(new_job(1))
    h.send(new_job(2))
    stopped = h.agent.stopService()
    h.mem.pump()
    # the results go out, then the link closes: no timer in between
    assert Counter(d.result[0] for ds in h.dones().values() for d in ds) == Counter({"killed": 2})
    assert len(h.sink.disconnected) == 1
    assert stopped.called and backend.closed


def test_mock_options_defaults() -> None:
    clock = Clock()
    backend = MockBackend(clock, AgentConfig(options={"result": "failed", "grade": "30", "delay": "2"}))
    d = backend.run(new_job(1))
    assert not d.called
    clock.advance(2)
    assert d.result.result == "failed" and d.result.grade == 30.0
    with pytest.raises(ValueError):
        MockBackend(clock, AgentConfig(options={"fail": "sometimes"}))
    with pytest.raises(ValueError):
        MockBackend(clock, AgentConfig(options={"result": "great"}))


def test_mock_hang_cancel_and_close() -> None:
    clock = Clock()
    backend = MockBackend(clock, AgentConfig())
    d1 = backend.run(new_job(1, **{"@mock_fail": "hang"}))
    d2 = backend.run(new_job(2, **{"@mock_delay": 100}))
    d1.cancel()
    assert d1.result.result == "killed"
    backend.close()
    assert d2.result.result == "killed"
    assert clock.getDelayedCalls() == []


def test_registration_is_logged_when_the_backend_answers_not_when_hello_is_sent(log_events: Any) -> None:
    """The protocol has no answer to a hello: the backend's first message on the link (a ping here) is
    what tells the agent it was registered; before it, nothing claims so."""
    h = Harness()
    assert len(h.of(AgentHello)) == 1  # the hello went out...
    assert not log_events.has("registered with the backend")  # ...but nobody answered yet
    h.send(Ping())
    assert log_events.has("registered with the backend", "2 slots", "environments ['default']")
    h.send(Ping())
    assert sum("registered with the backend" in t for t in log_events.texts()) == 1


def test_environments_that_cannot_be_listed_are_one_warning_per_cause(log_events: Any) -> None:
    broken = ScriptedBackend(envs=lambda: fail(RuntimeError("engine unreachable")))
    h = Harness(broken)
    for _ in range(3):  # the agent retries its hello
        h.clock.advance(5.0)
        h.mem.pump()
    warnings = [t for t in log_events.texts() if "cannot list the environments" in t]
    assert warnings == [
        "cannot list the environments (engine unreachable); not registering with the backend until they can be "
        "listed (retrying every 5 s)"
    ]
    assert not h.of(AgentHello)
