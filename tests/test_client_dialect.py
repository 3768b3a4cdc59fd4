"""The client library speaking 0.9 (and refusing the other dialect), on a Clock.

The real INGInious 0.9.2 backend drives the same client in
tests/test_interop_ours_09.py.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from inginious_tx.client import Client, EnvironmentUnavailable
from inginious_tx.client.dialect import Sink09
from inginious_tx.interfaces import IMessageSink
from inginious_tx.messages import v06, v09
from inginious_tx.testing import MemoryTransport, RecordingSink

ENVS = {"docker": ["default", "python3"], "mcq": ["mcq"]}


class Harness:
    def __init__(self, **kwargs: Any) -> None:
        self.clock = Clock()
        self.mem = MemoryTransport()
        self.backend = RecordingSink()
        self.mem.listen(self.clock, "mem:backend", self.backend)
        kwargs.setdefault("dialect", "0.9")
        self.client = Client(self.clock, "mem:backend", "me", transport=self.mem, **kwargs).start()
        self.mem.pump()

    def of(self, cls: type) -> List[Any]:
        return [m for _, m in self.backend.messages if isinstance(m, cls)]

    def answer(self, message: Any) -> None:
        self.backend.connected[-1].send(message)
        self.mem.pump()


def test_hello_environments_by_type_and_a_job_in_09():
    h = Harness()
    assert h.of(v09.ClientHello) == [v09.ClientHello("me")] and not h.of(v06.ClientHello)
    ready = h.client.wait_for_environment("mcq", environment_type="mcq")
    h.answer(v09.BackendUpdateEnvironments(ENVS))
    assert ready.called
    assert h.client.environments == ("default", "python3")  # of the client's type, docker
    assert h.client.environments_by_type == {"docker": ("default", "python3"), "mcq": ("mcq",)}

    d = h.client.new_job("c", "t", {"q": "1"}, "python3", time_limit=7, mem_limit=64, run_cmd="./x", job_id="j1")
    h.client.new_job("c", "t", {}, "mcq", environment_type="mcq", task_problems={"q": {}}, job_id="j2")
    h.client.new_job("c", "t", {}, job_id="j3", environment_parameters={"limits": {"time": 3}, "x": 1})
    h.mem.pump()
    j1, j2, j3 = h.of(v09.ClientNewJob)
    assert (j1.environment_type, j1.environment, j1.task_problems) == ("docker", "python3", {})
    assert j1.environment_parameters == {
        "limits": {"time": 7, "hard_time": 21, "memory": 64}, "run_cmd": "./x", "network_grading": False,
    }  # fmt: skip
    assert (j2.environment_type, j2.task_problems) == ("mcq", {"q": {}})
    assert j3.environment_parameters == {"limits": {"time": 3}, "x": 1}

    h.answer(v09.BackendJobStarted("j1"))
    h.answer(v09.BackendJobDone("j1", ("success", "ok"), 100.0, {}, {}, {}, "st", None, "o", None))
    result = d.result
    assert (result.job_id, result.result, result.state, result.stdout) == ("j1", "success", "st", "o")
    h.client.kill_job("j2")
    h.mem.pump()
    assert h.of(v09.ClientKillJob) == [v09.ClientKillJob("j2")]


def test_queue_snapshot_of_a_09_backend_gets_max_end_from_max_time():
    h = Harness()
    h.answer(v09.BackendUpdateEnvironments(ENVS))
    d = h.client.get_queue()
    h.mem.pump()
    assert h.of(v09.ClientGetQueue)
    h.answer(
        v09.BackendGetQueue(
            [("a", True, "ag", "c/t", "me", 1000, 30), ("b", False, "ag", "c/t", "x", 1000, -1)],
            [("w", True, "c/t", "me", 12)],
        )
    )
    snapshot = d.result
    assert [(r.job_id, r.max_end) for r in snapshot.running] == [("a", 1030), ("b", -1)]
    assert snapshot.waiting[0].time_limit == 12


def test_missing_environment_names_type_and_name():
    h = Harness()
    h.answer(v09.BackendUpdateEnvironments(ENVS))
    failures: List[Any] = []
    h.client.wait_for_environment("java", timeout=1).addErrback(failures.append)
    h.clock.advance(1)
    [failure] = failures
    assert failure.check(EnvironmentUnavailable)
    assert "environment docker/java is not offered" in str(failure.value)
    assert "docker/default, docker/python3, mcq/mcq" in str(failure.value)


def test_ping_pong_and_unknown_in_09():
    h = Harness(ping_interval=1.0)
    h.answer(v09.BackendUpdateEnvironments(ENVS))
    h.clock.advance(1)
    h.mem.pump()
    assert h.of(v09.Ping) and not h.of(v06.Ping)
    h.answer(v09.Unknown())  # the backend forgot us: hello again
    assert len(h.of(v09.ClientHello)) == 2


def test_a_06_message_to_a_09_client_is_a_logged_protocol_error(log_events: Any):
    h = Harness()
    h.answer(v06.BackendUpdateContainers(("default",)))
    assert not h.client.connected
    assert log_events.has("0.6 message", "use dialect 0.6")
    h.answer(v09.BackendUpdateEnvironments(ENVS))
    assert h.client.connected


def test_a_09_message_to_a_06_client_is_a_logged_protocol_error(log_events: Any):
    h = Harness(dialect="0.6")
    assert h.of(v06.ClientHello)
    h.answer(v09.BackendUpdateEnvironments(ENVS))
    assert not h.client.connected
    assert log_events.has("0.9 message", "use dialect 0.9")


def test_06_client_translates_parameters_and_refuses_other_types():
    h = Harness(dialect="0.6")
    h.answer(v06.BackendUpdateContainers(("default",)))
    assert h.client.environments_by_type == {"docker": ("default",)}
    with pytest.raises(ValueError, match="only runs docker"):
        h.client.new_job("c", "t", {}, environment_type="mcq")
    params = {"limits": {"time": 5, "memory": 50}, "network_grading": True, "run_cmd": ""}
    h.client.new_job("c", "t", {}, job_id="j", environment_parameters=params)
    h.mem.pump()
    [job] = h.of(v06.ClientNewJob)
    assert (job.time_limit, job.hard_time_limit, job.mem_limit, job.enable_network, job.run_cmd) == (
        5, 15, 50, True, None,
    )  # fmt: skip


def test_unknown_dialect_and_sink_interface():
    with pytest.raises(ValueError, match="unknown dialect"):
        Client(Clock(), "mem:x", dialect="0.8")
    verifyObject(IMessageSink, Sink09(Client(Clock(), "mem:x", dialect="0.9"), None))
