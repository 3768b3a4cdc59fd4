"""Resource bounds that had no test elsewhere: the size of a job's inputdata
(backend) and of what a job sends back (agent: archive, stdout, stderr, the
whole result), each with its command-line option and its clear answer.

Already tested elsewhere, and not repeated here: the frame limit
(test_transport_stream.py::test_oversized_frame_closes_that_connection_only,
test_transport_zmq.py::test_oversized_message_drops_that_peer_only,
``--max-frame`` in test_backend_service.py::test_options_values), the waiting
caps (test_backend_core.py::test_global_waiting_cap and
::test_per_client_waiting_cap, ``--max-waiting``/``--max-waiting-per-client``
in test_backend_service.py), and the task contract's own caps
(test_task_contract.py).
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import pytest_twisted
from test_agent_core import Harness, ScriptedBackend
from test_agent_core import new_job as agent_job
from twisted.internet.task import Clock
from twisted.python import usage

from inginious_tx.agent import tap as agent_tap
from inginious_tx.agent.core import Agent
from inginious_tx.agent.mock import MockBackend
from inginious_tx.agent.result import AgentConfig, JobResult
from inginious_tx.agent.task import OutputLimits
from inginious_tx.backend import tap as backend_tap
from inginious_tx.backend.core import Backend, BackendSettings
from inginious_tx.backend.policies import PriorityPolicy
from inginious_tx.backend.service import BackendService
from inginious_tx.backend.testing import FakePeer, agent_hello, new_job
from inginious_tx.client import Client
from inginious_tx.messages import AgentJobDone, BackendJobDone, BackendNewJob, ClientHello
from inginious_tx.transport import Limits

# -- inputdata (backend) ------------------------------------------------------------------


def backend_with(**settings: Any) -> Any:
    backend = Backend(Clock(), PriorityPolicy(), BackendSettings(**settings))
    client, agent = FakePeer(b"client"), FakePeer(b"agent")
    backend.client_handler.client_hello(client, ClientHello("c"))
    return backend, client, agent


def test_too_large_inputdata_is_answered_crash_at_once(log_events: Any) -> None:
    backend, client, agent = backend_with(max_inputdata=1000)
    big = {"code": "x" * 1000}
    size = len(msgpack.packb(big, use_bin_type=True))
    backend.client_handler.client_new_job(client, new_job("big", inputdata=big))
    [answer] = client.of_type(BackendJobDone)
    assert answer.job_id == "big"
    assert answer.result == ("crash", f"inputdata too large: {size} bytes > limit 1000")
    assert backend.waiting_count == 0 and backend.job((b"client", "big")) is None
    assert log_events.has("'big' refused", f"inputdata of {size} bytes > 1000")
    # Nothing else is lost: the client stays, and its next job (exactly at the limit) runs.
    backend.agent_handler.agent_hello(agent, agent_hello("a", 1, ["default"]))
    fits = {"code": "x" * (1000 - (size - 1000))}  # the same encoding overhead
    assert len(msgpack.packb(fits, use_bin_type=True)) == 1000
    backend.client_handler.client_new_job(client, new_job("fits", inputdata=fits))
    assert [m.job_id for m in agent.of_type(BackendNewJob)] == [(b"client", "fits")]


def test_no_inputdata_limit() -> None:
    backend, client, agent = backend_with(max_inputdata=None)
    backend.client_handler.client_new_job(client, new_job("big", inputdata={"code": "x" * (1 << 20)}))
    assert client.of_type(BackendJobDone) == [] and backend.waiting_count == 1
    assert BackendSettings().max_inputdata == 16 << 20
    with pytest.raises(ValueError, match="max_inputdata"):
        BackendSettings(max_inputdata=-1)


@pytest.mark.parametrize("value,expected", [("2048", 2048), ("none", None), ("0", 0)])
def test_max_inputdata_option(value: str, expected: Any) -> None:
    options = backend_tap.Options()
    options.parseOptions(["--agents", "tcp:2001", "--max-inputdata", value])
    assert options["settings"].max_inputdata == expected
    default = backend_tap.Options()
    default.parseOptions(["--agents", "tcp:2001"])
    assert default["settings"].max_inputdata == BackendSettings().max_inputdata
    with pytest.raises(usage.UsageError):
        backend_tap.Options().parseOptions(["--agents", "tcp:2001", "--max-inputdata", "-3"])


@pytest_twisted.ensureDeferred
async def test_the_client_library_gets_the_inputdata_answer(within: Any, closers: list) -> None:
    """Over a real socket, to the Client's Deferred; a job that fits still runs on the same link."""
    from twisted.internet import reactor

    service = BackendService(
        reactor,
        ["tcp:0"],
        ["tcp:0"],
        settings=BackendSettings(max_inputdata=4096),
        shutdown_grace=0,
    )
    service.startService()
    closers.append(service.stopService)
    clients, agents = await within(service.ready)
    agent = Agent(reactor, MockBackend(reactor, AgentConfig()), "a", 1, agents.connect_endpoint)
    agent.startService()
    closers.append(agent.stopService)
    client = Client(reactor, clients.connect_endpoint, "c", connect_timeout=5)
    client.start()
    closers.append(client.stop)
    await within(client.wait_for_environment("default"))
    refused = await within(client.new_job("course", "task", {"blob": b"\0" * 5000}))
    assert refused.result == "crash" and refused.text.startswith("inputdata too large: 50")
    assert refused.text.endswith(" bytes > limit 4096")
    fine = await within(client.new_job("course", "task", {"@mock_result": "failed"}))
    assert fine.result == "failed"


# -- what a job sends back (agent) ------------------------------------------------------


def run_one(result: JobResult, **agent_options: Any) -> AgentJobDone:
    """The AgentJobDone an agent sends for a job whose backend answered ``result``."""
    h = Harness(ScriptedBackend(), **agent_options)
    h.send(agent_job(1))
    h.backend.runs[(b"client-1", "job-1")].callback(result)
    h.mem.pump()
    [done] = h.dones()["job-1"]
    return done


def test_stdout_and_stderr_are_cut_with_a_marker() -> None:
    limits = OutputLimits(max_stdout=100, max_stderr=10)
    done = run_one(JobResult("success", "ok", stdout="o" * 150, stderr="é" * 20), result_limits=limits)
    assert done.result == ("success", "ok") and done.grade == 100.0  # the verdict stands
    assert done.stdout == "o" * 100 + "\n[output cut at 100 bytes]"
    assert done.stderr == "é" * 5 + "\n[output cut at 10 bytes]"  # 10 bytes of UTF-8
    small = run_one(JobResult("success", stdout="o" * 100, stderr=None), result_limits=limits)
    assert small.stdout == "o" * 100 and small.stderr is None


def test_a_too_large_archive_makes_the_result_an_error(log_events: Any) -> None:
    limits = OutputLimits(max_archive=1000, max_stdout=10)
    done = run_one(JobResult("success", "ok", archive=b"\x1f" * 1001, stdout="out" * 10), result_limits=limits)
    assert done.result == ("error", "the job's archive is too large: 1001 bytes > limit 1000")
    assert done.archive is None and done.grade == 0.0
    assert done.stdout == "outoutouto\n[output cut at 10 bytes]"
    assert log_events.has("job-1", "archive is too large")
    kept = run_one(JobResult("failed", archive=b"\x1f" * 1000), result_limits=limits)
    assert kept.result[0] == "failed" and kept.archive == b"\x1f" * 1000


def test_a_result_larger_than_a_frame_is_answered_crash() -> None:
    done = run_one(JobResult("success", text="t" * 5000), limits=Limits(max_frame=4096))
    assert done.result == ("crash", "the job's result is too large to be sent (5000 bytes)")


def test_agent_output_options_reach_the_agent() -> None:
    options = agent_tap.Options()
    options.parseOptions(
        ["--backend", "tcp:127.0.0.1:2001", "--kind", "mock",
         "--max-archive", "5000", "--max-stdout", "300", "--max-stderr", "200"]
    )  # fmt: skip
    limits = options["result_limits"]
    assert (limits.max_archive, limits.max_stdout, limits.max_stderr) == (5000, 300, 200)
    (agent,) = agent_tap.makeService(options)
    assert agent._result_limits == limits
    defaults = agent_tap.Options()
    defaults.parseOptions(["--backend", "tcp:127.0.0.1:2001", "--kind", "mock"])
    assert defaults["result_limits"] == OutputLimits()
    with pytest.raises(usage.UsageError):
        agent_tap.Options().parseOptions(["--backend", "tcp:127.0.0.1:2001", "--kind", "mock", "--max-stdout", "0"])


@pytest.mark.parametrize("kind", ["local", "docker"])
def test_agent_output_options_reach_the_agent_backends(kind: str, tmp_path: Any) -> None:
    """--max-stdout/--max-stderr/--max-archive bound what local and Docker jobs send back."""
    from twisted.internet import reactor

    options = agent_tap.Options()
    options.parseOptions(
        ["--backend", "tcp:127.0.0.1:1", "--kind", kind, "--tasks", str(tmp_path),
         "--environment", "default" if kind == "local" else "default=img",
         "--max-stdout", "5000000", "--max-stderr", "7000", "--max-archive", "9000"]  # fmt: skip
    )
    limits = options["config"].output_limits
    assert (limits.max_stdout, limits.max_stderr, limits.max_archive) == (5_000_000, 7000, 9000)
    backend = options["backend_class"](reactor, options["config"])
    backend_limits = backend.limits if kind == "local" else backend._limits
    assert backend_limits == limits
