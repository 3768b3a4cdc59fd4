"""Real INGInious peers (0.6 and 0.9.2) for interoperability tests.

Each peer is a subprocess in the INGInious release's own virtualenv (made by
``.ci/setup-inginious.sh``), running ``tests/inginious_driver.py``: a real
``Client``, a real ``Agent`` subclass answering jobs as their inputdata says,
or the real ``Backend``.  The test talks to it with JSON lines (see the
driver's docstring) and waits on its events::

    @pytest.fixture
    def inginious():
        with InginiousPeers() as peers:
            yield peers

    def test_x(inginious):
        backend = inginious.backend("0.9", clients=c, agents=a)
        agent = inginious.agent("0.9", a, env=["docker/default"])
        client = inginious.client("0.9", c)
        client.wait_for("environments", lambda e: "default" in e["value"].get("docker", ()))
        client.send("submit", ref="r1", environment="default")
        done = client.wait_for("done", ref="r1")

``wait_for`` blocks (for tests that do not run a reactor of their own);
``when`` is the same as a Deferred (for ``pytest_twisted`` tests whose
backend runs in the test's reactor).  Missing virtualenvs skip the test with
the reason, except under ``CI`` where they fail it.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import wire_vectors
from host_tools import missing_setup

__all__ = [
    "VENVS",
    "DRIVER",
    "PeerProcess",
    "InginiousPeers",
    "inginious_python",
    "require_inginious",
    "free_port",
    "zmq_address",
    "to_json",
    "from_json",
    "OurProcess",
    "OurPrograms",
    "twistd_argv",
    "inginious_fixture",
    "ours_fixture",
]

#: Where .ci/setup-inginious.sh puts each release (same variables as the script).
VENVS = {
    "0.6": Path(os.environ.get("ITX_INGINIOUS_06", "/opt/itx-inginious-0.6")),
    "0.9": Path(os.environ.get("ITX_INGINIOUS_09", "/opt/itx-inginious-0.9.2")),
}
#: The script each peer runs.
DRIVER = Path(__file__).resolve().parent / "inginious_driver.py"
#: Default bound on every wait: generous, the machine is shared.
TIMEOUT = 30.0


def inginious_python(dialect: str) -> Optional[str]:
    """The Python of the virtualenv holding INGInious ``dialect``, or None."""
    python = VENVS[dialect] / "bin" / "python"
    return str(python) if python.exists() else None


def require_inginious(dialect: str) -> str:
    """The virtualenv's Python; skip (outside CI) or fail (under CI) without it."""
    python = inginious_python(dialect)
    if python is not None:
        return python
    missing_setup(f"no INGInious {dialect} virtualenv at {VENVS[dialect]} (run .ci/setup-inginious.sh)")


def free_port() -> int:
    """A TCP port free on the loopback right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def zmq_address() -> str:
    """A fresh ``tcp://127.0.0.1:PORT`` for a ZeroMQ endpoint."""
    return f"tcp://127.0.0.1:{free_port()}"


def to_json(value: Any) -> Any:
    """Bytes as ``{"$bytes_hex": ...}``, tuples as lists (the driver's encoding)."""
    if isinstance(value, bytes):
        return {"$bytes_hex": value.hex()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json` (lists come back as lists)."""
    return wire_vectors.from_json(value, list)


class PeerProcess:
    """One driver subprocess: commands in, events out, stderr kept for failures."""

    def __init__(self, python: str, role: str, args: List[str], label: str) -> None:
        self.label = label
        self.events: List[Dict[str, Any]] = []
        self._cond = threading.Condition()
        self._stderr: queue.SimpleQueue[str] = queue.SimpleQueue()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # nothing of ours in INGInious' process
        self.process = subprocess.Popen(
            [python, str(DRIVER), role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read_events, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_events(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = from_json(json.loads(line))
            except ValueError:
                event = {"event": "garbage", "line": line}
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "exited"})
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.put(line)

    def stderr(self) -> str:
        """What the peer logged so far (INGInious logs at DEBUG here)."""
        lines = []
        while True:
            try:
                lines.append(self._stderr.get_nowait())
            except queue.Empty:
                break
        self._kept = getattr(self, "_kept", "") + "".join(lines)
        return self._kept

    def send(self, op: str, **fields: Any) -> None:
        """Send one command (see the driver's docstring)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(to_json(dict(op=op, **fields))) + "\n")
        self.process.stdin.flush()

    def matching(self, event: str, predicate: Optional[Callable[[Dict[str, Any]], Any]] = None, **match: Any) -> List:
        """Every event so far named ``event`` that has the ``match`` fields and passes ``predicate``."""
        with self._cond:
            return [e for e in self.events if _matches(e, event, predicate, match)]

    def wait_for(
        self,
        event: str,
        predicate: Optional[Callable[[Dict[str, Any]], Any]] = None,
        timeout: float = TIMEOUT,
        **match: Any,
    ) -> Dict[str, Any]:
        """The first event named ``event`` that matches; blocks up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if _matches(e, event, predicate, match):
                        return e
                if self.events and self.events[-1]["event"] == "exited":
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        raise AssertionError(
            f"{self.label}: no {event!r} event matching {match} within {timeout} s\n"
            f"events: {json.dumps(to_json(self.events))[-3000:]}\nlog tail:\n{self.stderr()[-4000:]}"
        )

    def when(self, event: str, predicate: Any = None, timeout: float = TIMEOUT, **match: Any) -> Any:
        """:meth:`wait_for` as a Deferred, for tests running a reactor."""
        from twisted.internet.threads import deferToThread

        return deferToThread(self.wait_for, event, predicate, timeout, **match)

    def stop(self) -> None:
        """End the peer (stdin closed, then terminate, then kill)."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(3)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()


def _matches(e: Dict[str, Any], event: str, predicate: Any, match: Dict[str, Any]) -> bool:
    if e.get("event") != event:
        return False
    if any(e.get(k) != v for k, v in match.items()):
        return False
    return predicate is None or bool(predicate(e))


class InginiousPeers:
    """Starts real INGInious peers and stops them all at the end of the test."""

    def __init__(self) -> None:
        self.peers: List[PeerProcess] = []

    def _start(self, dialect: str, role: str, args: List[str]) -> PeerProcess:
        python = require_inginious(dialect)
        peer = PeerProcess(python, role, args, f"INGInious {dialect} {role} #{len(self.peers) + 1}")
        self.peers.append(peer)
        peer.wait_for("running")
        return peer

    def client(self, dialect: str, backend: str) -> PeerProcess:
        """A real ``inginious.client.client.Client`` connected to ``backend`` (a ZeroMQ address)."""
        return self._start(dialect, "client", ["--backend", backend])

    def agent(
        self, dialect: str, backend: str, env: List[str], name: str = "itx-real-agent", slots: int = 2
    ) -> PeerProcess:
        """A real ``inginious.agent.Agent`` subclass; ``env`` is ``type/name`` (0.9) or ``name`` (0.6)."""
        args = ["--backend", backend, "--name", name, "--slots", str(slots)]
        for e in env:
            args += ["--env", e]
        return self._start(dialect, "agent", args)

    def backend(self, dialect: str, clients: str, agents: str) -> PeerProcess:
        """The real ``inginious.backend.backend.Backend`` bound to ``clients`` and ``agents``."""
        return self._start(dialect, "backend", ["--clients", clients, "--agents", agents])

    def stop(self) -> None:
        for peer in reversed(self.peers):
            peer.stop()

    def logs(self) -> str:
        """Every peer's log, for a failure message."""
        return "\n".join(f"--- {p.label}\n{p.stderr()[-3000:]}" for p in self.peers)

    def __enter__(self) -> InginiousPeers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class OurProcess:
    """One of our programs (``twistd -n inginious-backend ...``, ``inginious-tx``)
    as a subprocess of this working tree; its output is kept for assertions."""

    def __init__(self, argv: List[str], label: str) -> None:
        from subprocess_env import child_env

        self.label = label
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env()
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = TIMEOUT) -> str:
        """The first output line containing ``text``; blocks up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    break
                self._cond.wait(min(left, 0.5))
        raise AssertionError(f"{self.label}: no line with {text!r} within {timeout} s\n{self.output()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def twistd_argv(*args: str) -> List[str]:
    """The command line of ``twistd -n <args>`` (the working tree's plugins, see subprocess_env)."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", *args]


class OurPrograms:
    """Starts our programs and stops them all at the end (a context manager):
    ``ours.twistd("inginious-backend", "--clients", ...)`` runs ``twistd -n``."""

    def __init__(self) -> None:
        self.started: List[OurProcess] = []

    def twistd(self, *args: str) -> OurProcess:
        return self.run(twistd_argv(*args), label=args[0] if args else "twistd")

    def run(self, argv: List[str], label: str = "ours") -> OurProcess:
        process = OurProcess(argv, label)
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.started):
            process.stop()

    def __enter__(self) -> OurPrograms:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# The fixtures of the interoperability tests: each test module imports them
# (under these names, so that its tests' ``inginious`` and ``ours`` arguments
# shadow nothing).


@pytest.fixture(name="inginious")
def inginious_fixture() -> Iterator[InginiousPeers]:
    """Real INGInious peers (backend, agent, client) started on demand, stopped after the test."""
    with InginiousPeers() as peers:
        yield peers


@pytest.fixture(name="ours")
def ours_fixture() -> Iterator[OurPrograms]:
    """Our programs (twistd backend and agent, the client CLI), stopped after the test."""
    with OurPrograms() as programs:
        yield programs
