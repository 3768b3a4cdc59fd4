"""``twistd -n inginious-backend`` with no options grades at once.

Without ``--agents`` the backend runs an embedded ``local`` agent over the
bundled example course, linked in-process.  Unit tests cover the options,
the in-process transport (fake clock) and :func:`example_tasks_dir`; an
in-process test grades with the real client library; the last test is the
newcomer's path: ``twistd -n inginious-backend`` and ``inginious-tx submit``
as processes on the default endpoints, then SIGTERM and nothing left over.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, List, Optional

import pytest
import pytest_twisted
from subprocess_env import child_env
from test_cli_integration import _Collect
from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.task import Clock
from twisted.python import usage
from zope.interface.verify import verifyObject

from inginious_tx.backend import tap
from inginious_tx.backend.service import BackendService
from inginious_tx.backend.status import StatusService
from inginious_tx.client import connect_client
from inginious_tx.embedded import (
    EMBEDDED_ENDPOINT,
    EmbeddedAgent,
    InProcessTransport,
    embedded_agent,
    example_tasks_dir,
)
from inginious_tx.interfaces import IConnection, IPeer, ITransport
from inginious_tx.messages import ClientHello, Ping, Pong
from inginious_tx.testing import RecordingSink

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# -- the example course -------------------------------------------------------------


def test_the_example_course_is_found_in_a_checkout() -> None:
    found = example_tasks_dir()
    assert found is not None
    assert Path(found).resolve() == (REPO / "examples" / "tasks").resolve()
    assert os.access(os.path.join(found, "demo", "pass", "run"), os.R_OK)


def test_the_example_course_is_packaged() -> None:
    """setup.cfg ships examples/tasks as the package data found after a regular install."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert "inginious_tx.example_tasks" in cfg["options"]["packages"].split()
    assert "inginious_tx.example_tasks = examples/tasks" in cfg["options"]["package_dir"]
    assert cfg["options.package_data"]["inginious_tx.example_tasks"].strip() == "**/*"


# -- options ------------------------------------------------------------------------


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_without_agents_an_embedded_agent_runs_over_the_examples() -> None:
    o = parse()
    assert o["embedded"] and o["agents"] == []  # no agent endpoint: nothing for an impostor agent
    assert o["tasks"] == example_tasks_dir() and o["embedded-slots"] == 2
    o = parse("--embedded-slots", "5", "--tasks", str(REPO / "examples" / "tasks" / "demo"))
    assert o["embedded-slots"] == 5 and o["tasks"] == str(REPO / "examples" / "tasks" / "demo")


def test_with_agents_there_is_no_embedded_agent() -> None:
    o = parse("--agents", "tcp:2001")
    assert not o["embedded"] and o["tasks"] is None
    for extra in (["--tasks", str(REPO)], ["--embedded-slots", "3"], ["--job-user", "nobody"]):
        with pytest.raises(usage.UsageError) as e:
            parse("--agents", "tcp:2001", *extra)
        assert "only without --agents" in str(e.value)


@pytest.mark.parametrize("argv", [["--embedded-slots", "0"], ["--tasks", "/no/such/folder"]])
def test_bad_embedded_options(argv: List[str]) -> None:
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_status_without_prometheus_client_is_a_clear_error(monkeypatch: Any) -> None:
    real = tap.importlib.util.find_spec
    monkeypatch.setattr(
        tap.importlib.util, "find_spec", lambda name, *a: None if name == "prometheus_client" else real(name, *a)
    )
    with pytest.raises(usage.UsageError) as e:
        parse("--status", "8080")
    assert "inginious-tx[metrics]" in str(e.value)
    parse("--agents", "tcp:2001")  # no --status: no need for it


def test_help_documents_the_new_options() -> None:
    text = " ".join(str(tap.Options()).split())
    for option in ("--status", "--embedded-slots", "--tasks", "embedded local agent", "--job-user", "nobody"):
        assert option in text


def test_make_service_composes_the_backend_agent_and_status() -> None:
    top = tap.makeService(parse("--status", "tcp:0"))
    assert isinstance(top, MultiService)
    verifyObject(IServiceCollection, top)
    backend, status, agent = list(top)  # the embedded agent last: it starts once everything listens
    assert isinstance(backend, BackendService) and top.getServiceNamed("inginious-backend") is backend
    assert isinstance(agent, EmbeddedAgent) and agent.slots == 2 and agent.endpoint == EMBEDDED_ENDPOINT
    assert "no --agents given" in agent.notice and example_tasks_dir() in agent.notice  # type: ignore[operator]
    assert isinstance(status, StatusService) and status.backend is backend.backend
    assert status.endpoint == "tcp:0:interface=127.0.0.1"
    # named agent endpoints, no status: the backend service alone
    (alone,) = list(tap.makeService(parse("--agents", "tcp:2001")))
    assert isinstance(alone, BackendService)


def test_embedded_agent_needs_a_folder() -> None:
    with pytest.raises(ValueError):
        embedded_agent(Clock(), RecordingSink(), "/no/such/folder")


# -- the in-process transport -------------------------------------------------------


class RaisingSink(RecordingSink):
    def message_received(self, peer: Any, message: Any) -> None:
        super().message_received(peer, message)
        if isinstance(message, Ping):
            raise RuntimeError("boom")


def test_in_process_links_deliver_in_order_on_the_next_turn(log_events: Any) -> None:
    clock = Clock()
    server = RaisingSink()
    transport = InProcessTransport(clock, server)
    verifyObject(ITransport, transport)
    assert transport.handles(EMBEDDED_ENDPOINT) and not transport.handles("tcp:2001")
    failures: List[Any] = []
    transport.listen(clock, EMBEDDED_ENDPOINT, server).addErrback(failures.append)
    assert failures and failures[0].check(ValueError)

    agent = RecordingSink()
    conn = transport.connect(clock, EMBEDDED_ENDPOINT, agent)
    verifyObject(IConnection, conn)
    verifyObject(IPeer, conn.peer)
    hello = ClientHello("x")
    conn.peer.send(hello)
    conn.peer.send(Ping())  # the server's sink raises on it: logged, delivery goes on
    conn.peer.send(Pong())
    assert server.connected == [] and server.messages == []  # nothing re-entrant
    clock.advance(0)
    [to_agent] = server.connected
    verifyObject(IPeer, to_agent)
    assert [type(m) for _, m in server.messages] == [ClientHello, Ping, Pong]
    assert server.messages[0][1] == hello and server.messages[0][1] is not hello  # through the codec
    assert all(p is to_agent for p, _ in server.messages)
    assert log_events.has("in-memory transport", "failed")
    assert agent.connected == [conn.peer]

    to_agent.send(Pong())
    first_address = to_agent.address
    conn.reconnect()  # what was sent before the close still arrives, then the close
    clock.advance(0)
    assert [type(m) for _, m in agent.messages] == [Pong]
    assert [p for p, _ in server.disconnected] == [to_agent] and len(agent.disconnected) == 1
    assert len(server.connected) == 2 and server.connected[1].address != first_address
    to_agent.send(Pong())  # the old link is down: dropped
    clock.advance(0)
    assert len(agent.messages) == 1

    conn.stop()
    clock.advance(0)
    assert len(server.disconnected) == 2 and not conn.peer.connected


# -- in process, with the real client -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_embedded_agent_grades_the_examples_in_process(closers: list, until: Any, within: Any) -> None:
    from twisted.internet import reactor

    service = BackendService(reactor, ["tcp:0:interface=127.0.0.1"], ["tcp:0:interface=127.0.0.1"], shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    [clients, _] = await within(service.ready)
    agent = embedded_agent(reactor, service.backend.agent_sink(), example_tasks_dir() or "", 2, name="emb")
    agent.startService()
    closers.append(agent.stopService)
    await until(lambda: service.backend.environments == ("default",), what="the embedded agent")
    [registered] = service.backend.agents
    assert (registered.name, registered.slots) == ("emb", 2)
    client = connect_client(reactor, clients.connect_endpoint, "test")
    closers.append(client.stop)
    passed = await within(client.new_job("demo", "pass", {"answer": "forty-two"}), 20)
    assert (passed.result, passed.grade, passed.local) == ("success", 100.0, False)
    assert "forty-two" in passed.text
    failed = await within(client.new_job("demo", "quiz", {"q1": "1", "q2": "x"}), 20)
    assert (failed.result, failed.grade) == ("failed", 0.0)


# -- the newcomer's path: processes on the default endpoints ---------------------------


def _ports_taken(*ports: int) -> List[int]:
    taken = []
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    return taken


def _spawn(argv: List[str], cwd: str) -> _Collect:
    from twisted.internet import reactor

    proto = _Collect()
    proto.process = reactor.spawnProcess(proto, argv[0], argv, env=child_env(), path=cwd)  # type: ignore[attr-defined]
    return proto


def _command(script: str, fallback: List[str]) -> List[str]:
    """The installed console script, or the same entry point through Python."""
    path = BIN / script
    return [str(path)] if path.exists() else [sys.executable, *fallback]


def _job_processes(agent_pid: int) -> List[int]:
    """Processes of the embedded agent's jobs: their environment names its work folder."""
    marker = f"inginious-tx-local-{agent_pid}-".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == agent_pid:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest_twisted.ensureDeferred
async def test_twistd_without_options_grades_the_examples(short_tmp: str, closers: list, until: Any) -> None:
    from twisted.internet import reactor

    taken = _ports_taken(2000, 2001)
    if taken:
        pytest.skip(f"the default ports {taken} are in use by something else")
    twistd = _spawn(
        _command("twistd", ["-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"])
        + ["-n", "inginious-backend"],
        short_tmp,  # not the checkout: the course is found from the package
    )
    pid: Optional[int] = twistd.process.pid  # type: ignore[attr-defined]

    def kill() -> None:
        if twistd.process.pid is not None:  # type: ignore[attr-defined]
            twistd.process.signalProcess("KILL")  # type: ignore[attr-defined]

    closers.append(kill)
    cli = _command("inginious-tx", ["-m", "inginious_tx.cli"])

    async def submit(*args: str) -> Any:
        run = _spawn([*cli, "submit", *args, "--connect-timeout", "20", "--wait-for-backend"], short_tmp)
        return await run.done.addTimeout(30, reactor)

    passed = await submit("demo/pass", "-i", "answer=hello")
    log = b"".join(twistd.out + twistd.err).decode()
    assert passed.status == 0, (passed.out, passed.err, log)
    assert passed.out.splitlines()[:2] == ["result: success", "grade: 100"]
    assert "You answered: hello" in passed.out
    assert "no --agents given: running an embedded local agent with 2 slots over" in log

    failed = await submit("demo/quiz", "-i", "q1=1", "-i", "q2=rome")
    assert failed.status == 1, (failed.out, failed.err)
    assert failed.out.splitlines()[:2] == ["result: failed", "grade: 0"]

    # a job still running when the backend is stopped: answered, and its processes and folder go
    loop = _spawn([*cli, "submit", "demo/loop", "-i", "mode=sleep", "--connect-timeout", "20"], short_tmp)
    await until(lambda: _job_processes(pid), timeout=20, what="the loop job running")  # type: ignore[arg-type]
    assert glob.glob(os.path.join(tempfile.gettempdir(), f"inginious-tx-local-{pid}-*"))
    twistd.process.signalProcess("TERM")  # type: ignore[attr-defined]
    ended = await twistd.done.addTimeout(20, reactor)
    log = b"".join(twistd.out + twistd.err).decode()
    assert ended.status == 0 or ended.signal == signal.SIGTERM, log
    assert "Traceback" not in log, log
    answered = await loop.done.addTimeout(10, reactor)
    assert answered.status == 2 and "backend shutting down" in answered.out, (answered.out, answered.err)
    assert _job_processes(pid) == []  # type: ignore[arg-type]
    assert glob.glob(os.path.join(tempfile.gettempdir(), f"inginious-tx-local-{pid}-*")) == []
    assert _ports_taken(2000) == []
