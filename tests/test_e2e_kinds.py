"""End to end, for every agent kind: a real backend, a real agent, the client library,
over ZeroMQ and over TCP.  The same example tasks grade the same under each kind."""

from __future__ import annotations

import os
from typing import Any, List, Tuple

import pytest
import pytest_twisted
from docker_support import TEST_IMAGE, require_docker

from inginious_tx.agent.core import Agent
from inginious_tx.agent.result import AgentConfig
from inginious_tx.backend.service import BackendService
from inginious_tx.client import Client
from inginious_tx.plugin import load

TASKS = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "examples", "tasks"))

KINDS = {
    "mock": ["default"],
    "local": ["default"],
    "docker": [f"default={TEST_IMAGE}"],
}


@pytest.fixture(params=[(k, t) for k in KINDS for t in ("zmq", "tcp")], ids=lambda p: "-".join(p))
def kind_transport(request: Any) -> Tuple[str, str]:
    """The (agent kind, transport) pair, skipped here when it cannot run.

    The skip lives in this plain fixture, not in the async yield fixture
    below: pytest-twisted's async yield fixtures register their finalizer
    before the body runs, so a skip raised inside one leaves the
    parametrised fixture half torn down and every later parametrisation
    errors (``assert not self._finalizers``, pytest >= 9.1).
    """
    kind, transport = request.param
    if kind == "docker":
        require_docker()
    return kind, transport


@pytest_twisted.async_yield_fixture
async def stack(kind_transport: Tuple[str, str], tmp_path: Any, until: Any) -> Any:
    from twisted.internet import reactor

    kind, transport = kind_transport
    listen = "zmq:tcp://127.0.0.1:*" if transport == "zmq" else "tcp:0:interface=127.0.0.1"
    service = BackendService(reactor, [listen], [listen], shutdown_grace=0)
    service.startService()
    clients_listener, agents_listener = await service.ready
    config = AgentConfig(
        tasks_dir=TASKS, environments=KINDS[kind], slots=2, options={"work_dir": str(tmp_path / "work")}
    )
    agent = Agent(reactor, load("inginious_tx.agent_backends", kind)(reactor, config), f"e2e-{kind}", 2,
                  agents_listener.connect_endpoint)  # fmt: skip
    agent.startService()
    client = Client(reactor, clients_listener.connect_endpoint, name="e2e", connect_timeout=20).start()
    await client.wait_for_environment("default", timeout=20)
    yield kind, client
    await client.stop()
    await agent.stopService()
    await service.stopService()
    work = tmp_path / "work"
    assert not work.exists() or os.listdir(work) == [], "a job folder was left behind"


@pytest_twisted.ensureDeferred
async def test_results_reach_the_client(stack: Any, within: Any) -> None:
    kind, client = stack
    started: List[str] = []
    if kind == "mock":
        jobs = {
            "pass": client.new_job("demo", "pass", {"@mock_result": "success"}, on_started=started.append),
            "quiz": client.new_job("demo", "quiz", {"@mock_result": "failed", "@mock_grade": 50}),
        }
    else:
        jobs = {
            "pass": client.new_job("demo", "pass", {"answer": "yes"}, on_started=started.append),
            "quiz": client.new_job("demo", "quiz", {"q1": "41", "q2": "paris"}, time_limit=10),
        }
    jobs["missing"] = client.new_job("demo", "no-such-task", {}) if kind != "mock" else None
    results = {name: await within(d, 60) for name, d in jobs.items() if d is not None}
    assert (results["pass"].result, results["pass"].grade) == ("success", 100.0)
    assert (results["quiz"].result, results["quiz"].grade) == ("failed", 50.0)
    assert len(started) == 1
    if kind != "mock":
        assert results["quiz"].problems["q2"] == ("success", "Right.")
        assert results["missing"].result == "crash" and "no-such-task" in results["missing"].text


@pytest_twisted.ensureDeferred
async def test_kill_reaches_the_running_job(stack: Any, within: Any, until: Any) -> None:
    kind, client = stack
    started: List[str] = []
    inputdata = {"@mock_delay": 30} if kind == "mock" else {"mode": "sleep"}
    d = client.new_job("demo", "loop", inputdata, time_limit=30, job_id="long", on_started=started.append)
    await until(lambda: started == ["long"], 30, "the job to start")
    assert client.kill_job("long")
    result = await within(d, 30)
    assert result.result == "killed"


def test_every_builtin_kind_is_covered() -> None:
    from inginious_tx.plugin import available

    assert set(KINDS) == {"mock", "local", "docker"} <= set(available("inginious_tx.agent_backends"))
