"""What an operator sees when ``twistd inginious-backend`` / ``inginious-agent`` is started wrong.

Real ``twistd`` processes: a bad option value or endpoint is one line and a
pointer to ``--help``, exit status 2, no traceback; a service that cannot
start (a port in use) logs one critical line and exits 1, so that systemd's
``Restart=on-failure`` fires; a clean stop (SIGTERM) exits 0.  The
processes of a test run side by side, so a test costs about one start.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import pytest
from subprocess_env import REPO, child_env
from twisted.internet.defer import fail, succeed
from twisted.python.failure import Failure

from inginious_tx._twistd import EXIT_START_FAILED, StartGuard

#: Seconds a twistd process may take to start and end on a busy machine.
PROCESS_TIMEOUT = 90.0
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
#: Python run before twistd: the docker extra's modules cannot be found (an installation without it).
NO_DOCKER_EXTRA = (
    "import sys\n"
    "class NoDockerExtra:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('docker', 'requests'):\n"
    "            raise ModuleNotFoundError(name)\n"
    "sys.meta_path.insert(0, NoDockerExtra())\n"
    "from twisted.scripts.twistd import run; run()\n"
)


def start(*args: str, argv: Sequence[str] = TWISTD) -> subprocess.Popen:
    return subprocess.Popen(
        [*argv, *args],
        cwd=str(REPO),
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> Tuple[int, str]:
    try:
        out, _ = process.communicate(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"{process.args} did not end within {PROCESS_TIMEOUT} s:\n{out}")
    return process.returncode, out


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port of 127.0.0.1 that something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


AGENT = ["inginious-agent", "--kind", "mock"]
#: command line -> the start of the one line that says what is wrong
BAD_OPTIONS: List[Tuple[List[str], str]] = [
    (["inginious-backend", "--clients", "foo:bar"], "--clients: no transport understands the endpoint 'foo:bar'"),
    (["inginious-backend", "--clients", "tcp:notaport"], "--clients: bad endpoint 'tcp:notaport': 'notaport' is not"),
    (["inginious-backend", "--agents", "zmq:tcp://127.0.0.1"], "--agents: bad endpoint 'zmq:tcp://127.0.0.1': no port"),
    (["inginious-backend", "--status", "abc"], "--status: bad endpoint 'abc'"),
    (["inginious-backend", "--policy", "fifo"], "--policy 'fifo': no scheduling policy named 'fifo' (available: "),
    (["inginious-backend", "--max-retries", "-1"], "--max-retries '-1': must be >= 0"),
    (["inginious-backend", "--ping-interval", "soon"], "--ping-interval 'soon': not a number"),
    ([*AGENT, "--backend", "foo:bar"], "--backend: no transport understands the endpoint 'foo:bar'"),
    ([*AGENT, "--backend", "zmq:tcp://127.0.0.1"], "--backend: bad endpoint 'zmq:tcp://127.0.0.1': no port"),
    ([*AGENT, "--backend", "tcp:127.0.0.1"], "--backend: bad endpoint 'tcp:127.0.0.1': no port"),
    ([*AGENT, "--backend", "zmq:tcp://127.0.0.1:2001", "--slots", "x"], "--slots 'x': not a whole number"),
    ([*AGENT, "--backend", "zmq:tcp://127.0.0.1:2001", "--kind", "nope"], "--kind 'nope': no agent backend named"),
]


def test_bad_options_are_one_line_a_pointer_to_help_and_status_2(tmp_path: Path) -> None:
    config = tmp_path / "itx.toml"
    config.write_text('[backend]\npolicy = "fair"\nmax-retries = -2\n')
    cases = [
        *BAD_OPTIONS,
        (["inginious-backend", "--config", str(config)], f"{config}: [backend] max-retries = '-2': must be >= 0"),
        (["inginious-agent", "--config", str(config)], f"{config}: no [agent] table"),
    ]
    processes = [start(*args) for args, _ in cases]
    for (args, first), process in zip(cases, processes, strict=True):
        status, out = finish(process)
        command = f"twistd {args[0]}"
        lines = out.splitlines()
        assert status == 2, (args, out)
        assert len(lines) == 2 and lines[0].startswith(f"{command}: {first}"), (args, out)
        assert lines[1] == f"Run '{command} --help' for the options."


def test_docker_kind_without_the_docker_extra_is_refused_with_the_fix() -> None:
    status, out = finish(
        start(
            "-n", "--pidfile=", "inginious-agent", "--backend", "zmq:tcp://127.0.0.1:2001", "--kind", "docker",
            argv=[sys.executable, "-c", NO_DOCKER_EXTRA],
        )
    )  # fmt: skip
    assert status == 2
    assert out.splitlines() == [
        "twistd inginious-agent: --kind docker: needs the Python package(s) docker, requests, not installed: "
        "pip install 'inginious-tx[docker]'",
        "Run 'twistd inginious-agent --help' for the options.",
    ]


def _critical(out: str) -> List[str]:
    return [line for line in out.splitlines() if "#critical]" in line]


def test_a_service_that_cannot_listen_ends_twistd_with_status_1(busy_port: int, tmp_path: Path) -> None:
    """A port in use, for the clients, the status pages, or named in a configuration file: one
    critical line naming it, exit status 1 (systemd's Restart=on-failure fires), and the embedded
    agent never registers."""
    config = tmp_path / "itx.toml"
    config.write_text(f'[backend]\nclients = ["tcp:{busy_port}"]\n')
    runs = {
        "clients": start("inginious-backend", "--clients", f"tcp:{busy_port}"),
        "status": start("inginious-backend", "--clients", f"tcp:{free_port()}", "--status", str(busy_port)),
        "config": start("inginious-backend", "--config", str(config)),
    }
    for what, process in runs.items():
        status, out = finish(process)
        assert status == EXIT_START_FAILED, (what, out)
        (line,) = _critical(out)
        assert f"127.0.0.1:{busy_port}" in line and "Address already in use" in line, (what, line)
        assert ("status pages cannot listen" if what == "status" else "backend cannot listen") in line
        assert "Traceback" not in out and "registered" not in out, (what, out)


def test_an_agent_whose_ssh_port_is_taken_exits_1(busy_port: int, tmp_path: Path) -> None:
    status, out = finish(
        start(*AGENT, "--backend", f"tcp:127.0.0.1:{free_port()}", "--ssh-port", str(busy_port),
              "--ssh-keys", str(tmp_path / "keys"))
    )  # fmt: skip
    assert status == EXIT_START_FAILED, out
    (line,) = _critical(out)
    assert line.endswith(
        f"inginious-agent cannot start: Couldn't listen on 127.0.0.1:{busy_port}: [Errno 98] Address already in use."
    )
    assert "Traceback" not in out


def _read_until(process: subprocess.Popen, text: str) -> str:
    """Output of ``process`` (read from its descriptor, unbuffered) until ``text`` appears in it,
    or until it ends if ``text`` is empty; fails if the time is up first."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while not text or text.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            process.kill()
            pytest.fail(f"no {text!r} in the output of {process.args}:\n{seen.decode()}")
        if select.select([fd], [], [], min(left, 1.0))[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                if text:
                    pytest.fail(f"{process.args} ended before {text!r}:\n{seen.decode()}")
                break
            seen += chunk
    return seen.decode()


def test_a_clean_stop_is_clean_for_systemd_and_a_config_file_is_read(tmp_path: Path) -> None:
    """SIGTERM (systemctl stop): twistd stops cleanly and ends by that signal (it re-raises it), which
    systemd counts as a clean exit, like status 0: Restart=on-failure does not restart a stopped service."""
    port = free_port()
    config = tmp_path / "itx.toml"
    config.write_text(f'[backend]\nclients = ["tcp:{port}"]\npolicy = "fair"\nembedded-slots = 1\n')
    process = start("inginious-backend", "--config", str(config))
    # twistd starts the services before its reactor runs (and handles signals): wait for a line
    # logged from the running reactor, the embedded agent registered on the backend's first ping.
    seen = _read_until(process, "registered with the backend")
    assert f"clients on ['tcp:{port}']" in seen and "policy fair" in seen
    process.send_signal(signal.SIGTERM)
    out = _read_until(process, "")
    status = process.wait(timeout=PROCESS_TIMEOUT)
    assert status == -signal.SIGTERM, seen + out
    assert "Server Shut Down." in out and "Traceback" not in out and not _critical(out)


# -- StartGuard, on a fake reactor ------------------------------------------------------


class FakeCore:
    """The reactor calls a StartGuard makes."""

    def __init__(self) -> None:
        self.when_running: List[object] = []
        self.stops = 0

    def callWhenRunning(self, f: object, *args: object) -> None:
        self.when_running.append(f)

    def stop(self) -> None:
        self.stops += 1

    def run_hooks(self) -> None:
        for hook in self.when_running:
            hook()  # type: ignore[operator]


class Child:
    """A service whose start raises, or whose ``ready`` fails."""

    def __init__(self, name: str, raises: bool = False, ready_fails: bool = False) -> None:
        from twisted.application.service import Service

        self.service = Service()
        self.service.setName(name)
        self.raises = raises
        self.ready_fails = ready_fails
        self.started = self.stopped = False

        def start_service() -> None:
            if self.raises:
                raise OSError(98, "Address already in use")
            self.started = True

        def stop_service() -> None:
            self.stopped = True

        self.service.startService = start_service  # type: ignore[method-assign]
        self.service.stopService = stop_service  # type: ignore[method-assign]
        self.service.ready = (  # type: ignore[attr-defined]
            fail(Failure(OSError("cannot listen"))) if ready_fails else succeed(None)
        )


def _guard(*children: Child) -> Tuple[StartGuard, FakeCore, List[object], List[int]]:
    core = FakeCore()
    hooks: List[object] = []
    exits: List[int] = []
    guard = StartGuard(core, "test", register=hooks.append, exit=exits.append)  # type: ignore[arg-type]
    for child in children:
        child.service.setServiceParent(guard)
    return guard, core, hooks, exits


@pytest.mark.parametrize("failing", [Child("b", raises=True), Child("b", ready_fails=True)], ids=["raises", "ready"])
def test_start_guard_stops_the_reactor_and_exits_non_zero(failing: Child, log_events: object) -> None:
    first, last = Child("a"), Child("c")
    guard, core, hooks, exits = _guard(first, failing, last)
    guard.startService()
    assert first.started and not last.started  # nothing starts after a failure (no agent registers)
    assert guard.status == EXIT_START_FAILED and len(hooks) == 1
    core.run_hooks()
    assert core.stops == 1
    guard.stopService()
    assert first.stopped and not last.stopped  # only what was started is stopped
    hooks[0]()  # type: ignore[operator]
    assert exits == [EXIT_START_FAILED]


def test_start_guard_without_failure_leaves_the_exit_alone() -> None:
    guard, core, hooks, exits = _guard(Child("a"), Child("b"))
    guard.startService()
    assert guard.status is None and hooks == [] and core.when_running == []
    guard.stopService()
    assert exits == []


def test_start_guard_says_why_a_child_raised_in_one_line(log_events: object) -> None:
    guard, _, _, _ = _guard(Child("a", raises=True))
    guard.startService()
    texts = [e for e in log_events.texts() if "cannot start" in e]  # type: ignore[attr-defined]
    assert texts == ["a cannot start: [Errno 98] Address already in use"]


def test_pid_file_is_removed_after_a_failed_start(busy_port: int, tmp_path: Path) -> None:
    """twistd removes its pid file before the exit status is set: a restart is not refused as 'already running'."""
    pidfile = tmp_path / "backend.pid"
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", f"--pidfile={pidfile}"]
    status, out = finish(start("inginious-backend", "--clients", f"tcp:{busy_port}", argv=argv))
    assert status == EXIT_START_FAILED, out
    assert not os.path.exists(pidfile)


# -- endpoint checks, in-process ----------------------------------------------------------


def test_built_in_transports_check_their_endpoint_strings() -> None:
    from zope.interface.verify import verifyObject

    from inginious_tx.interfaces import IEndpointCheck
    from inginious_tx.transport import CONNECTING_FORMS, LISTENING_FORMS, check_endpoint
    from inginious_tx.transport.stream import StreamTransport
    from inginious_tx.transport.zmq import ZmqTransport

    verifyObject(IEndpointCheck, StreamTransport())
    verifyObject(IEndpointCheck, ZmqTransport())
    for good, listening in [
        ("zmq:tcp://127.0.0.1:2000", False), ("zmq:tcp://*:2000", True), ("zmq:tcp://127.0.0.1:0", True),
        ("zmq:ipc:///run/x", True), ("tcp:2000", True), ("tcp:2000:interface=0.0.0.0", True),
        ("tcp:grader.example.org:2001", False), ("tcp:host=h:port=1", False), ("unix:/run/x.sock", False),
    ]:  # fmt: skip
        check_endpoint(good, listening)
    for bad, listening, message in [
        ("zmq:tcp://127.0.0.1:*", False, "'*' is not a port"),
        ("zmq:tcp://127.0.0.1:0", False, "'0' is not a port"),
        ("zmq:tcp://127.0.0.1:70000", True, "'70000' is not a port"),
        ("zmq:udp://127.0.0.1:2000", True, "unsupported ZeroMQ transport 'udp'"),
        ("zmq:ipc://", True, "no path"),
        ("tcp:2000:bogus=1", True, "bad endpoint 'tcp:2000:bogus=1'"),
        ("ssl:2000:privateKey=/no/such.key", True, "No such file or directory"),
        ("foo:bar", True, LISTENING_FORMS),
        ("foo:bar", False, CONNECTING_FORMS),
    ]:
        with pytest.raises(ValueError) as e:
            check_endpoint(bad, listening)
        assert message in str(e.value), (bad, str(e.value))
