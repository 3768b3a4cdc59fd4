"""``twistd inginious-agent``: options, makeService, and a real twistd process."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, List

import pytest
import pytest_twisted
from test_agent_e2e import RawClient
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python import usage

from inginious_tx._twistd import StartGuard
from inginious_tx.agent.core import Agent
from inginious_tx.agent.local import LocalBackend
from inginious_tx.agent.mock import MockBackend
from inginious_tx.agent.tap import Options, kind_listing, makeService
from inginious_tx.backend.service import BackendService
from inginious_tx.messages import BackendJobDone, BackendJobStarted, BackendUpdateContainers, ClientHello

TASKS = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "examples", "tasks"))


EP = "tcp:127.0.0.1:2001"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_options() -> None:
    o = parse("--backend", "zmq:tcp://127.0.0.1:2001", "--kind", "mock", "-s", "3", "-e", "default", "-e", "py=img",
              "-o", "result=failed", "--option", "delay=0.5", "--name", "a1")  # fmt: skip
    config = o["config"]
    assert o["backend_class"] is MockBackend
    assert (config.slots, config.environments) == (3, ["default", "py=img"])
    assert config.options == {"result": "failed", "delay": "0.5"}
    assert o["name"] == "a1" and config.tasks_dir is None
    o = parse("-b", "tcp:host=h:port=1", "-k", "local", "-t", TASKS)
    assert o["config"].tasks_dir == TASKS and o["slots"] == (os.cpu_count() or 1)
    assert o["name"].endswith("-local") and o["kind"] == "local"
    assert parse("-b", EP)["kind"] == "docker"  # the isolating backend by default


@pytest.mark.parametrize(
    "args,why",
    [
        ([], "--backend ENDPOINT is required"),
        (["-b", EP, "-k", "nope"], "no agent backend named 'nope'"),
        (["-b", EP, "-s", "0"], "must be >= 1"),
        (["-b", EP, "-o", "novalue"], "expected KEY=VALUE"),
        (["-b", EP, "-e", "=img"], "NAME is empty"),
        (["-b", EP, "-t", "/no/such/folder"], "is not a folder"),
    ],
)
def test_option_errors(args: List[str], why: str) -> None:
    with pytest.raises(usage.UsageError, match=why):
        parse(*args)


def test_list_kinds(capsys: Any) -> None:
    with pytest.raises(SystemExit) as e:
        parse("--list-kinds")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out == kind_listing()
    assert {line.split(":")[0] for line in out.splitlines()} >= {"mock", "local", "docker (default)"}


def test_help_names_every_option() -> None:
    text = str(Options())
    for flag in ("--backend", "--kind", "--slots", "--tasks", "--environment", "--option", "--name", "--list-kinds"):
        assert flag in text
    assert "trusted code" in Options().longdesc


def test_make_service() -> None:
    top = makeService(parse("-b", EP, "-k", "mock", "-s", "2", "-n", "m"))
    assert isinstance(top, StartGuard)  # a failure to start ends twistd with a non-zero status
    (agent,) = list(top)
    assert isinstance(agent, Agent)
    assert (agent.friendly_name, agent.slots, agent.endpoint) == ("m", 2, EP)
    (local,) = makeService(parse("-b", EP, "-k", "local", "-t", TASKS))
    assert isinstance(local._backend, LocalBackend)
    with pytest.raises(SystemExit, match="local backend cannot start: .*--tasks"):
        makeService(parse("-b", EP, "-k", "local"))


def test_maxima_options() -> None:
    """The operator's maxima reach the Agent; safe defaults without them."""
    from inginious_tx.agent.limits import DEFAULT_MAXIMA, JobMaxima

    (agent,) = makeService(parse("-b", EP, "-k", "mock"))
    assert agent.maxima == DEFAULT_MAXIMA
    assert not DEFAULT_MAXIMA.allow_network and not DEFAULT_MAXIMA.allow_run_cmd
    (agent,) = makeService(parse("-b", EP, "-k", "mock", "--max-time", "5", "--max-hard-time", "7",
                              "--max-memory", "64", "--allow-network", "--allow-run-cmd"))  # fmt: skip
    assert agent.maxima == JobMaxima(5, 7, 64, allow_network=True, allow_run_cmd=True)
    for bad in (["--max-memory", "0"], ["--max-time", "-1"], ["--max-hard-time", "x"]):
        with pytest.raises(usage.UsageError):
            parse("-b", EP, "-k", "mock", *bad)


class _Process(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback((reason.value.exitCode, reason.value.signal))


@pytest_twisted.ensureDeferred
async def test_twistd_local_agent(until: Any, within: Any, tmp_path: Any, closers: List[Any]) -> None:
    from twisted.internet import reactor

    service = BackendService(reactor, ["tcp:0:interface=127.0.0.1"], ["tcp:0:interface=127.0.0.1"], shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    clients, agents = await service.ready
    proto = _Process()
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "inginious-agent", "--backend", agents.connect_endpoint, "--kind", "local", "--tasks", TASKS,
            "--slots", "2", "--name", "twistd-agent", "--option", f"work_dir={tmp_path}/work"]  # fmt: skip
    process = reactor.spawnProcess(proto, sys.executable, argv, env=dict(os.environ), path=str(tmp_path))
    try:
        await until(lambda: "default" in service.backend.environments, 20, "the agent's hello")
        client = RawClient(clients.connect_endpoint)
        closers.append(client.connection.stop)
        await until(lambda: client.sink.connected, 10, "the client link")
        client.send(ClientHello("tap-test"))
        await until(lambda: client.of(BackendUpdateContainers), 10, "the environments")
        client.submit("ok", "quiz", {"q1": "42", "q2": "Paris"})
        client.submit("long", "loop", {"mode": "sleep"}, time_limit=60)
        await until(lambda: "ok" in client.done(), 20, "the first result")
        assert (client.done()["ok"].result[0], client.done()["ok"].grade) == ("success", 100.0)
        await until(lambda: "long" in [m.job_id for m in client.of(BackendJobStarted)], 10, "the second job")
        process.signalProcess("TERM")  # the agent kills its job and answers before it leaves
        # twistd ends with the signal that stopped it, once the service has stopped
        assert await within(proto.ended, 15) in ((0, None), (None, signal.SIGTERM)), proto.output.decode()
        await until(lambda: "long" in client.done(), 10, "the killed job's answer")
        assert client.done()["long"].result[0] == "killed"
        assert len(client.of(BackendJobDone)) == 2
        assert not os.path.exists(tmp_path / "work") or os.listdir(tmp_path / "work") == []
    finally:
        if not proto.ended.called:
            process.signalProcess("KILL")
