"""End to end: a real backend, two local agents, raw client messages over ZeroMQ and TCP."""

from __future__ import annotations

import os
from typing import Any, Dict, List

import pytest_twisted

from inginious_tx import transport
from inginious_tx.agent.core import Agent
from inginious_tx.agent.local import LocalBackend
from inginious_tx.agent.result import AgentConfig
from inginious_tx.backend.service import BackendService
from inginious_tx.messages import (
    BackendJobDone,
    BackendJobStarted,
    BackendUpdateContainers,
    ClientHello,
    ClientKillJob,
    ClientNewJob,
)
from inginious_tx.testing import RecordingSink

TASKS = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "examples", "tasks"))


class RawClient:
    """A client made of a transport connection and a recording sink."""

    def __init__(self, endpoint: str) -> None:
        from twisted.internet import reactor

        self.sink = RecordingSink()
        self.connection = transport.connect(reactor, endpoint, self.sink)

    def send(self, message: Any) -> None:
        self.connection.peer.send(message)

    def of(self, cls: type) -> List[Any]:
        return [m for _, m in self.sink.messages if isinstance(m, cls)]

    def done(self) -> Dict[str, BackendJobDone]:
        return {m.job_id: m for m in self.of(BackendJobDone)}

    def submit(self, job_id: str, task: str, inputdata: Any = None, env: str = "default", **kw: Any) -> None:
        args = dict(time_limit=10, hard_time_limit=None, mem_limit=128, enable_network=False, run_cmd=None)
        args.update(kw)
        self.send(
            ClientNewJob(
                job_id,
                0,
                "demo",
                task,
                inputdata or {},
                env,
                args["enable_network"],
                args["time_limit"],
                args["hard_time_limit"],
                args["mem_limit"],
                False,
                "e2e-test",
                args["run_cmd"],
            )  # fmt: skip
        )


@pytest_twisted.async_yield_fixture
async def stack(until: Any, tmp_path: Any) -> Any:
    from twisted.internet import reactor

    service = BackendService(
        reactor,
        ["zmq:tcp://127.0.0.1:*", "tcp:0:interface=127.0.0.1"],
        ["zmq:tcp://127.0.0.1:*", "tcp:0:interface=127.0.0.1"],
        shutdown_grace=0,
    )
    service.startService()
    zmq_clients, tcp_clients, zmq_agents, tcp_agents = await service.ready
    agents = []
    for n, (listener, env) in enumerate(((zmq_agents, "default"), (tcp_agents, "other"))):
        config = AgentConfig(tasks_dir=TASKS, environments=[env], options={"work_dir": str(tmp_path / f"w{n}")})
        agent = Agent(reactor, LocalBackend(reactor, config), f"local-{env}", 2, listener.connect_endpoint)
        agent.startService()
        agents.append(agent)
    backend = service.backend
    await until(lambda: set(backend.environments) == {"default", "other"}, 10, "both agents")
    clients = [RawClient(zmq_clients.connect_endpoint), RawClient(tcp_clients.connect_endpoint)]
    await until(lambda: all(c.sink.connected for c in clients), 10, "the clients to connect")
    for c in clients:
        c.send(ClientHello("e2e"))
    await until(lambda: all(c.of(BackendUpdateContainers) for c in clients), 10, "the environments")
    yield clients
    for c in clients:
        await c.connection.stop()
    for agent in agents:
        await agent.stopService()
    await service.stopService()
    assert [os.listdir(tmp_path / f"w{n}") for n in range(2) if (tmp_path / f"w{n}").exists()] in ([], [[]], [[], []])


@pytest_twisted.ensureDeferred
async def test_jobs_over_zeromq_and_tcp(stack: List[RawClient], until: Any) -> None:
    zmq_client, tcp_client = stack
    assert set(zmq_client.of(BackendUpdateContainers)[-1].available_containers) == {"default", "other"}

    zmq_client.submit("quiz", "quiz", {"q1": "41", "q2": "paris"})  # runs on the ZeroMQ agent
    zmq_client.submit("loop", "loop", {"mode": "sleep"}, env="other", time_limit=30)  # on the TCP agent
    tcp_client.submit("pass", "pass", {"answer": "yes"}, env="other")
    tcp_client.submit("memory", "memory", mem_limit=48)
    tcp_client.submit("missing", "no-such-task")

    await until(lambda: len(tcp_client.done()) == 3 and "quiz" in zmq_client.done(), 20, "the results")
    quiz = zmq_client.done()["quiz"]
    assert quiz.result[0] == "failed" and quiz.grade == 50.0
    assert quiz.problems == {
        "q1": ("failed", "Wrong: think about the answer to everything."),
        "q2": ("success", "Right."),
    }
    results = {k: (v.result[0], v.grade) for k, v in tcp_client.done().items()}
    assert results == {"pass": ("success", 100.0), "memory": ("overflow", 0.0), "missing": ("crash", 0.0)}
    assert "no-such-task does not exist" in tcp_client.done()["missing"].result[1]

    await until(lambda: "loop" in [m.job_id for m in zmq_client.of(BackendJobStarted)], 10, "the loop to start")
    zmq_client.send(ClientKillJob("loop"))
    await until(lambda: "loop" in zmq_client.done(), 10, "the kill")
    assert zmq_client.done()["loop"].result[0] == "killed"
    assert len(zmq_client.of(BackendJobDone)) == 2 and len(tcp_client.of(BackendJobDone)) == 3
