"""``inginious-tx`` run as a subprocess against a real backend and a mock agent.

The backend (a ``BackendService`` on the real ZeroMQ and TCP transports) and
the agent (with the ``mock`` agent backend, whose results come from the input
data) run in the test's reactor; the command runs as a child process spawned
on that reactor, so the test never blocks while it waits for it.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import pytest
import pytest_twisted
from subprocess_env import child_env
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from inginious_tx.agent.core import Agent
from inginious_tx.agent.mock import MockBackend
from inginious_tx.agent.result import AgentConfig
from inginious_tx.backend.core import Backend
from inginious_tx.backend.service import BackendService
from inginious_tx.client import Client

REPO = Path(__file__).resolve().parent.parent
#: Seconds any one command may take before the test fails.
COMMAND_TIMEOUT = 30.0


@dataclass
class Run:
    status: Optional[int]
    out: str
    err: str
    signal: Optional[int] = None


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out: List[bytes] = []
        self.err: List[bytes] = []
        self.done: Deferred = Deferred()
        self.started: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.started.callback(None)

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        self.done.callback(
            Run(
                getattr(value, "exitCode", None),
                b"".join(self.out).decode(),
                b"".join(self.err).decode(),
                getattr(value, "signal", None),
            )
        )


def spawn(*args: str) -> _Collect:
    """Start ``inginious-tx ARGS`` (as ``python -m inginious_tx.cli``) on the reactor."""
    from twisted.internet import reactor

    proto = _Collect()
    argv = [sys.executable, "-m", "inginious_tx.cli", *args]
    process = reactor.spawnProcess(proto, sys.executable, argv, env=child_env(), path=str(REPO))
    proto.process = process  # type: ignore[attr-defined]
    return proto


async def cli(*args: str, timeout: float = COMMAND_TIMEOUT) -> Run:
    from twisted.internet import reactor

    proto = spawn(*args)
    try:
        return await proto.done.addTimeout(timeout, reactor)
    except Exception:
        proto.process.signalProcess("KILL")  # type: ignore[attr-defined]
        raise


@dataclass
class Stack:
    backend: Backend
    zmq: str  # the backend's client endpoint over ZeroMQ
    tcp: str  # ... and over TCP
    tcp_listener: Any


@pytest_twisted.async_yield_fixture
async def stack(until: Any) -> Any:
    """A backend listening for clients on ZeroMQ and TCP, with one mock agent (2 slots)."""
    from twisted.internet import reactor

    service = BackendService(
        reactor,
        ["zmq:tcp://127.0.0.1:*", "tcp:0:interface=127.0.0.1"],
        ["tcp:0:interface=127.0.0.1"],
        shutdown_grace=0,
    )
    service.startService()
    zmq_clients, tcp_clients, agents = await service.ready
    backend = service.backend
    mock = MockBackend(reactor, AgentConfig(environments=["default", "python3"]))
    agent = Agent(reactor, mock, "mock-agent", 2, agents.connect_endpoint)
    agent.startService()
    await until(lambda: set(backend.environments) == {"default", "python3"}, what="the mock agent")
    yield Stack(backend, zmq_clients.connect_endpoint, tcp_clients.connect_endpoint, tcp_clients)
    await agent.stopService()
    await service.stopService()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- results and exit status ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_success_is_printed_readably_and_exits_0(stack: Stack, tmp_path: Path) -> None:
    data = {
        "@mock_result": "success",
        "@mock_text": "Well done.\nAll tests pass.",
        "@mock_problems": {"q1": ["success", "Right answer."], "q2": ["success", ""]},
    }
    (tmp_path / "in.json").write_text(json.dumps(data))
    run = await cli("submit", "course/task", "--backend", stack.zmq, "--input-file", str(tmp_path / "in.json"))
    assert run.status == 0, run.err
    assert run.out.splitlines() == [
        "result: success",
        "grade: 100",
        "feedback:",
        "    Well done.",
        "    All tests pass.",
        "problems:",
        "  q1: success",
        "    Right answer.",
        "  q2: success",
    ]
    assert run.err == ""


@pytest_twisted.ensureDeferred
async def test_failed_exits_1_over_tcp(stack: Stack) -> None:
    run = await cli(
        "submit", "c/t", "--backend", stack.tcp, "-i", "@mock_result=failed", "-i", "@mock_grade=25", "-e", "python3"
    )
    assert run.status == 1, run.err
    assert run.out.splitlines()[:2] == ["result: failed", "grade: 25"]


@pytest_twisted.ensureDeferred
async def test_other_result_exits_2_and_json(stack: Stack) -> None:
    run = await cli("submit", "c/t", "--backend", stack.zmq, "--json", "-i", "@mock_result=error", "-i", "q=1")
    assert run.status == 2, run.err
    data = json.loads(run.out)
    assert (data["result"], data["grade"], data["local"]) == ("error", 0.0, False)
    assert data["latency_s"] >= 0 and len(data["job_id"]) == 32


@pytest_twisted.ensureDeferred
async def test_several_jobs_progress_lines_and_summary(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "ok.json").write_text(json.dumps({"@mock_result": "success"}))
    (tmp_path / "ko.json").write_text(json.dumps({"@mock_result": "failed", "@mock_grade": 50}))
    args = ["submit", "c/t", "--backend", stack.zmq, "-f", str(tmp_path / "ok.json"), "-f", str(tmp_path / "ko.json")]
    run = await cli(*args, "--repeat", "3")
    assert run.status == 1, run.err
    # stderr is not a terminal here: one plain line per finished job, no bar.
    progress = run.err.splitlines()
    assert len(progress) == 6 and "\r" not in run.err
    assert {line.split("]")[0] for line in progress} == {f"[{n}/6" for n in range(1, 7)}
    lines = run.out.splitlines()
    assert lines[0].split() == ["RESULT", "JOBS", "SHARE"]
    assert lines[1].split() == ["success", "3", "50.0%"]
    assert lines[2].split() == ["failed", "3", "50.0%"]
    assert lines[3].split() == ["total", "6", "100.0%"]
    assert "mean grade: 75.00" in run.out and "latency: mean" in run.out

    run = await cli(*args, "--json")
    assert run.status == 1
    report = json.loads(run.out)
    assert [r["result"] for r in report["results"]] == ["success", "failed"]
    assert report["summary"]["by_result"] == {"success": 1, "failed": 1}


@pytest_twisted.ensureDeferred
async def test_timeout_kills_the_job_and_exits_2(stack: Stack) -> None:
    run = await cli("submit", "c/t", "--backend", stack.zmq, "-i", "@mock_fail=hang", "--timeout", "0.5")
    assert run.status == 2, run.err
    assert run.out.splitlines()[0] == "result: killed"
    assert stack.backend.running_count == 0


# -- the queue ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_queue_shows_running_and_waiting_jobs(stack: Stack, until: Any) -> None:
    from twisted.internet import reactor

    client = Client(reactor, stack.zmq, "queue-test").start()
    try:
        await client.wait_until_ready(timeout=5)
        running = client.new_job("course", "slow", {"@mock_fail": "hang"}, job_id="running-job", launcher="test")
        waiting = client.new_job("course", "later", {}, "nowhere", job_id="waiting-job", time_limit=12)
        await until(lambda: stack.backend.running_count == 1 and stack.backend.waiting_count == 1)
        run = await cli("queue", "--backend", stack.zmq)
        assert run.status == 0, run.err
        lines = run.out.splitlines()
        assert lines[0] == "running jobs: 1"
        assert lines[2].split()[:4] == ["running-job", "mock-agent", "course/slow", "test"]
        assert lines[3] == "waiting jobs: 1"
        assert lines[5].split() == ["1", "waiting-job", "course/later", "inginious-tx", "12"]

        run = await cli("queue", "--backend", stack.tcp, "--json")
        assert run.status == 0, run.err
        data = json.loads(run.out)
        assert [j["job_id"] for j in data["running"]] == ["running-job"]
        assert [(j["job_id"], j["is_mine"]) for j in data["waiting"]] == [("waiting-job", False)]
    finally:
        await client.stop()
    assert (await running).local and (await waiting).local


@pytest_twisted.ensureDeferred
async def test_environments_command(stack: Stack) -> None:
    run = await cli("environments", "--backend", stack.zmq)
    assert (run.status, run.out) == (0, "default\npython3\n")


# -- errors ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_missing_environment_exits_65(stack: Stack) -> None:
    run = await cli("submit", "c/t", "--backend", stack.zmq, "-e", "java", "--connect-timeout", "0.5")
    assert run.status == 65
    assert run.err == "inginious-tx: environment java is not offered by any agent; available: default, python3\n"
    assert run.out == ""


@pytest_twisted.ensureDeferred
async def test_unreachable_backend_exits_69() -> None:
    endpoint = f"zmq:tcp://127.0.0.1:{free_port()}"
    run = await cli("submit", "c/t", "--backend", endpoint, "--connect-timeout", "0.5", "--wait-for-backend")
    assert run.status == 69
    assert run.err == (
        f"inginious-tx: backend unreachable at {endpoint} (no answer within 0.5 s: "
        "connection refused (nothing listens there))\n"
    )
    run = await cli("queue", "--backend", f"tcp:127.0.0.1:{free_port()}", "--connect-timeout", "0.5")
    assert run.status == 69 and "backend unreachable at tcp:127.0.0.1:" in run.err


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_fails_at_once_with_its_cause(short_tmp: str) -> None:
    """Without --wait-for-backend, nothing listening is known at once: no waiting out --connect-timeout
    (10 minutes here, far more than the test's own timeout)."""
    from twisted.internet import reactor

    for endpoint, cause in [
        (f"zmq:tcp://127.0.0.1:{free_port()}", "connection refused (nothing listens there)"),
        (f"tcp:127.0.0.1:{free_port()}", "connection refused (nothing listens there)"),
        (f"zmq:ipc://{short_tmp}/nobody", "no such socket (nothing listens there)"),
    ]:
        t0 = reactor.seconds()
        run = await cli("queue", "--backend", endpoint, "--connect-timeout", "600")
        assert run.status == 69
        assert run.err == f"inginious-tx: backend unreachable at {endpoint}: {cause}\n"
        assert reactor.seconds() - t0 < COMMAND_TIMEOUT


@pytest_twisted.ensureDeferred
async def test_backend_lost_during_a_job_exits_69(stack: Stack, until: Any) -> None:
    proto = spawn("submit", "c/t", "--backend", stack.tcp, "-i", "@mock_fail=hang")
    await until(lambda: stack.backend.running_count == 1, timeout=COMMAND_TIMEOUT, what="the job to run")
    await stack.tcp_listener.stop()  # closes the client's connection
    from twisted.internet import reactor

    run = await proto.done.addTimeout(COMMAND_TIMEOUT, reactor)
    assert run.status == 69
    assert run.out.splitlines()[0] == "result: crash"
    assert "inginious-tx: backend unavailable: connection lost" in run.err
    # The backend noticed the client leave and had the job killed.
    await until(lambda: stack.backend.running_count == 0, what="the orphan job to be killed")


@pytest_twisted.ensureDeferred
async def test_interrupt_kills_pending_jobs_and_exits_130(stack: Stack, until: Any) -> None:
    proto = spawn("submit", "c/t", "--backend", stack.zmq, "-i", "@mock_fail=hang")
    await until(lambda: stack.backend.running_count == 1, timeout=COMMAND_TIMEOUT, what="the job to run")
    proto.process.signalProcess(signal.SIGINT)  # type: ignore[attr-defined]
    from twisted.internet import reactor

    run = await proto.done.addTimeout(COMMAND_TIMEOUT, reactor)
    assert run.status == 130, run.err
    assert "inginious-tx: interrupted" in run.err
    await until(lambda: stack.backend.running_count == 0, what="the job to be killed")


@pytest.mark.parametrize(
    "endpoint, fragment",
    [
        ("pigeon:home", "no transport understands the endpoint 'pigeon:home'"),
        ("foo:bar", "use zmq:tcp://HOST:PORT, zmq:ipc:///PATH, tcp:HOST:PORT, unix:/PATH or ssl:HOST:PORT"),
        ("zmq:nonsense", "--backend: not a ZeroMQ endpoint: 'zmq:nonsense'"),
        ("tcp:nonsense", "--backend: bad endpoint 'tcp:nonsense': no port"),
        ("tcp:127.0.0.1:http", "--backend: bad endpoint 'tcp:127.0.0.1:http': 'http' is not a whole number"),
        ("zmq:tcp://127.0.0.1", "--backend: bad endpoint 'zmq:tcp://127.0.0.1': no port"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_endpoint_exits_64(endpoint: str, fragment: str) -> None:
    run = await cli("submit", "c/t", "--backend", endpoint)
    assert run.status == 64
    assert run.err.startswith("inginious-tx: ") and fragment in run.err and run.err.count("\n") == 1


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "cannot read input file {path}: No such file or directory"),
        ("{oops", "input file {path} is not valid JSON: "),
        ("[1, 2, 3]", "input file {path} must hold a JSON object (KEY: VALUE), not a list"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_input_file_exits_64(tmp_path: Path, content: Optional[str], fragment: str) -> None:
    path = tmp_path / "input.json"
    if content is not None:
        path.write_text(content)
    # The backend is never contacted: the file is checked first.
    run = await cli("submit", "c/t", "--backend", f"zmq:tcp://127.0.0.1:{free_port()}", "-f", str(path))
    assert run.status == 64
    assert run.err.startswith("inginious-tx: " + fragment.format(path=path)) and run.err.count("\n") == 1


@pytest_twisted.ensureDeferred
async def test_usage_error_exits_64() -> None:
    run = await cli("submit", "not-a-task")
    assert run.status == 64 and "is not COURSE/TASK" in run.err


@pytest_twisted.ensureDeferred
async def test_progress_bar_when_stderr_is_a_terminal(stack: Stack) -> None:
    from twisted.internet import reactor

    proto = _Collect()
    argv = [sys.executable, "-m", "inginious_tx.cli", "submit", "c/t", "--backend", stack.zmq, "--repeat", "3"]
    proto.process = reactor.spawnProcess(  # type: ignore[attr-defined]
        proto, sys.executable, argv, env=child_env(), path=str(REPO), usePTY=True
    )
    run = await proto.done.addTimeout(COMMAND_TIMEOUT, reactor)
    assert run.status == 0
    # Everything comes through the terminal: the bar is redrawn in place.
    assert "\r[" + "-" * 30 + "] 0/3" in run.out
    assert "\r[" + "#" * 30 + "] 3/3  success 3" in run.out
    assert "total" in run.out


# -- everything as separate processes, as deployed ------------------------------------


def spawn_twistd(*args: str) -> _Collect:
    """``twistd -n ARGS`` as a child process (logs to its stdout, no pid file)."""
    from twisted.internet import reactor

    proto = _Collect()
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", *args]
    proto.process = reactor.spawnProcess(  # type: ignore[attr-defined]
        proto, sys.executable, argv, env=child_env(), path=str(REPO)
    )
    return proto


async def stop_daemons(daemons: List[_Collect]) -> None:
    """SIGTERM every daemon still running, then wait (boundedly) until each has exited."""
    from twisted.internet import reactor

    for daemon in daemons:
        if not daemon.done.called:
            daemon.process.signalProcess("TERM")  # type: ignore[attr-defined]
    for daemon in daemons:
        await daemon.done.addTimeout(COMMAND_TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_twistd_backend_and_mock_agent_processes(short_tmp: str) -> None:

    clients, agents = f"zmq:ipc://{short_tmp}/clients", f"zmq:ipc://{short_tmp}/agents"
    daemons = [
        spawn_twistd("inginious-backend", "--clients", clients, "--agents", agents),
        spawn_twistd("inginious-agent", "--backend", agents, "--kind", "mock", "--slots", "2", "--name", "mocky"),
    ]
    try:
        # The command waits (boundedly) for the backend and the agent to come up.
        run = await cli(
            "submit", "c/t", "--backend", clients, "--connect-timeout", "20", "--wait-for-backend",
            "-i", "@mock_result=failed",
        )  # fmt: skip
        assert run.status == 1, run.err + "".join(b"".join(d.out).decode() for d in daemons)
        assert run.out.startswith("result: failed\ngrade: 0\n")
        run = await cli("environments", "--backend", clients)
        assert (run.status, run.out) == (0, "default\n")
    finally:
        await stop_daemons(daemons)


@pytest_twisted.ensureDeferred
async def test_unknown_task_exits_66_and_archives_are_saved_in_text_mode(tmp_path: Path) -> None:
    """Against a real backend and its embedded local agent: a typo'd task is not a crash (66), and
    --archive-dir saves the archive a task set aside, whatever the output mode."""
    import tarfile

    backend = f"tcp:127.0.0.1:{free_port()}"
    daemon = spawn_twistd("inginious-backend", "--clients", backend.replace("tcp:127.0.0.1:", "tcp:"))
    try:
        run = await cli("submit", "demo/nosuch", "--backend", backend, "--wait-for-backend", "--connect-timeout", "20")
        logs = run.err + b"".join(daemon.out).decode()
        assert run.status == 66, logs
        assert run.out.splitlines()[0] == "result: crash" and "demo/nosuch does not exist on this agent" in run.out
        archives = tmp_path / "archives"
        run = await cli("submit", "demo/archive", "--backend", backend, "--archive-dir", str(archives))
        assert run.status == 0, run.err
        (saved,) = archives.iterdir()
        assert saved.name.endswith(".tgz") and f"archive saved as {saved}" in run.err
        with tarfile.open(saved) as archive:
            assert archive.getnames()
    finally:
        await stop_daemons([daemon])


@pytest_twisted.ensureDeferred
async def test_a_tls_handshake_that_never_ends_does_not_outlast_connect_timeout() -> None:
    """A peer that accepts TCP but never speaks TLS: the command ends about --connect-timeout after
    it started (it used to wait 5 s more for the half-made link to close). Measured from the
    command's own log timestamps (whole seconds), so Python's start-up time does not count."""
    import re
    from datetime import datetime

    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # silent after accept
    try:
        endpoint = f"ssl:127.0.0.1:{port.getHost().port}"
        run = await cli("queue", "--backend", endpoint, "--connect-timeout", "1", "-v")
    finally:
        await port.stopListening()
    assert run.status == 69 and f"backend unreachable at {endpoint} (no answer within 1 s)" in run.err
    stamps = [datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z") for t in re.findall(r"^(\S+\+0000) \[", run.err, re.M)]
    assert (stamps[-1] - stamps[0]).total_seconds() <= 1 + 3  # 1 s asked, whole-second stamps, a busy machine
