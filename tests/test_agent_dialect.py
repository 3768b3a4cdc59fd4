"""Our agent speaking the INGInious 0.9 dialect (unit level, on a Clock).

The agent and its backends keep working with 0.6 messages; the 0.9 edge
translates.  The real INGInious 0.9.2 backend drives the same agent in
tests/test_interop_ours_09.py.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from test_agent_core import ScriptedBackend
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from inginious_tx.agent.core import Agent
from inginious_tx.agent.dialect import JOB_ADDRESS_09, Edge09, environment_type_for
from inginious_tx.agent.limits import JobMaxima
from inginious_tx.agent.mock import MockBackend
from inginious_tx.agent.result import AgentConfig, JobResult
from inginious_tx.interfaces import IMessageSink, IPeer
from inginious_tx.messages import v06, v09
from inginious_tx.messages.convert import limits_from_parameters, max_time, parameters_from_limits
from inginious_tx.testing import MemoryTransport, RecordingSink

PARAMS = {"limits": {"time": 12, "hard_time": 40, "memory": 321}, "run_cmd": "./go", "network_grading": True}


def new_job(n: Any, env: str = "default", etype: str = "docker", params: Any = None, **inputdata: Any) -> Any:
    return v09.BackendNewJob(
        f"uuid-{n}", "demo", "pass", {"q": {"type": "code"}}, inputdata, etype, env,
        PARAMS if params is None else params, False,
    )  # fmt: skip


class Harness:
    """An agent speaking 0.9 to a recording 'backend' through a MemoryTransport."""

    def __init__(self, backend: Any = None, **kwargs: Any) -> None:
        self.clock = Clock()
        self.mem = MemoryTransport()
        self.sink = RecordingSink()
        self.mem.listen(self.clock, "mem:agents", self.sink)
        self.backend = backend if backend is not None else ScriptedBackend()
        kwargs.setdefault("dialect", "0.9")
        kwargs.setdefault("environment_type", "docker")
        # The test jobs ask for the network and their own command.
        kwargs.setdefault("maxima", JobMaxima(allow_network=True, allow_run_cmd=True))
        self.agent = Agent(self.clock, self.backend, "agent-9", 2, "mem:agents", transport=self.mem, **kwargs)
        self.agent.startService()
        self.mem.pump()

    def send(self, message: Any) -> None:
        self.sink.connected[-1].send(message)
        self.mem.pump()

    def of(self, cls: type) -> List[Any]:
        return [m for _, m in self.sink.messages if isinstance(m, cls)]


def test_hello_announces_the_environments_under_one_type():
    h = Harness(environment_type="docker")
    [hello] = h.of(v09.AgentHello)
    assert hello.friendly_name == "agent-9" and hello.available_job_slots == 2
    assert hello.available_environments == {
        "docker": {"default": {"runtime": "runc", "id": "x", "created": 0, "ports": ()}}
    }
    assert not h.of(v06.AgentHello)


def test_default_environment_types():
    assert environment_type_for("docker") == "docker"
    assert environment_type_for("local") == "local"
    assert environment_type_for("mock") == "mock"
    h = Harness(MockBackend(Clock(), AgentConfig()), environment_type=None)
    [hello] = h.of(v09.AgentHello)
    assert list(hello.available_environments) == ["mock"]
    assert hello.available_environments["mock"]["default"]["runtime"] == "mock"


def test_a_09_job_reaches_the_agent_backend_as_a_06_job_and_comes_back_in_09():
    h = Harness()
    h.send(v09.Ping())
    assert h.of(v09.Pong) and not h.of(v06.Pong)
    h.send(new_job(1, answer="42", **{"@state": "before"}))
    [job_id] = h.backend.runs
    assert job_id == (JOB_ADDRESS_09, "uuid-1")
    assert h.of(v09.AgentJobStarted) == [v09.AgentJobStarted("uuid-1")]
    h.backend.runs[job_id].callback(JobResult("success", "fine", state="after", stdout="o"))
    h.mem.pump()
    [done] = h.of(v09.AgentJobDone)
    assert (done.job_id, done.result, done.grade, done.state, done.stdout) == (
        "uuid-1", ("success", "fine"), 100.0, "after", "o",
    )  # fmt: skip


def test_limits_come_from_the_environment_parameters():
    seen: List[Any] = []
    backend = ScriptedBackend()
    run = backend.run
    backend.run = lambda job: (seen.append(job), run(job))[1]  # type: ignore[method-assign]
    h = Harness(backend)
    h.send(new_job(1))
    h.send(new_job(2, params={"limits": "garbage", "run_cmd": 3}))
    a, b = seen
    assert isinstance(a, v06.BackendNewJob) and a.inputdata == {}
    assert (a.time_limit, a.hard_time_limit, a.mem_limit, a.enable_network, a.run_cmd) == (12, 40, 321, True, "./go")
    # The 0.9 docker agent's defaults for what is missing or ill-typed.
    assert (b.time_limit, b.hard_time_limit, b.mem_limit, b.enable_network, b.run_cmd) == (30, 90, 200, False, None)


def test_a_job_of_another_environment_type_is_answered_crash_with_its_state():
    h = Harness()
    h.send(new_job(1, etype="mcq", **{"@state": "s"}))
    [done] = h.of(v09.AgentJobDone)
    assert done.result[0] == "crash" and "mcq/default" in done.result[1] and done.state == "s"
    assert not h.backend.runs and h.agent.busy == 0


def test_kill_keeps_the_state_and_a_kill_for_an_unknown_job_is_answered_killed():
    h = Harness()
    h.send(new_job(1, **{"@state": "s1"}))
    h.send(v09.BackendKillJob("uuid-1", "s1"))
    assert h.backend.killed == [(JOB_ADDRESS_09, "uuid-1")]
    [done] = h.of(v09.AgentJobDone)
    assert done.result[0] == "killed" and done.state == "s1"
    h.send(v09.BackendKillJob("uuid-404", "s404"))
    done = h.of(v09.AgentJobDone)[-1]
    assert (done.job_id, done.result[0], done.state) == ("uuid-404", "killed", "s404")
    assert h.agent.busy == 0


def test_a_06_message_to_a_09_agent_is_a_logged_protocol_error(log_events: Any):
    h = Harness()
    h.send(v06.BackendNewJob((b"c", "j"), "demo", "pass", {}, "default", False, 10, None, 100, False, None))
    assert not h.backend.runs
    assert log_events.has("0.6 message", "--dialect 0.6")
    h.send(new_job(1))
    assert len(h.backend.runs) == 1  # still serving


def test_a_09_message_to_a_06_agent_is_a_logged_protocol_error(log_events: Any):
    h = Harness(dialect="0.6")
    assert h.of(v06.AgentHello)
    h.send(new_job(1))
    assert not h.backend.runs
    assert log_events.has("0.9 message", "--dialect 0.9")


def test_the_edge_provides_its_interfaces():
    h = Harness()
    edge = Edge09(None, lambda job_id: False, "docker")
    verifyObject(IMessageSink, edge)
    assert h.agent._peer is not None
    verifyObject(IPeer, h.agent._peer)


def test_unknown_dialect_is_refused():
    with pytest.raises(ValueError, match="unknown dialect"):
        Agent(Clock(), ScriptedBackend(), "a", 1, "mem:x", dialect="1.0")


def test_limits_conversion_both_ways():
    params = parameters_from_limits(10, None, 100, False, None)
    assert params == {"limits": {"time": 10, "hard_time": 30, "memory": 100}, "run_cmd": "", "network_grading": False}
    back = limits_from_parameters(params)
    assert (back.time_limit, back.hard_time_limit, back.mem_limit, back.enable_network, back.run_cmd) == (
        10, 30, 100, False, None,
    )  # fmt: skip
    assert max_time(params) == 10 and max_time({}) == -1 and max_time({"limits": {"time": "x"}}) == -1
    assert limits_from_parameters({"limits": {"time": 2.5}}).time_limit == 3
    for junk in (None, [], {"limits": None}, {"limits": {"time": True, "memory": -1}}):
        assert limits_from_parameters(junk).time_limit == 30
