"""Processes, peers and scenarios for the fault-injection suite.

Every piece of the system runs as its own operating-system process, as it
would in production: ``twistd -n inginious-backend``, ``twistd -n
inginious-agent`` and client processes (this file run as a script: a small
program on :class:`inginious_tx.client.Client` that takes commands as JSON
lines on stdin and reports, as JSON lines on stdout, every ``BackendJobDone``
it receives and every result its jobs get).  The scenarios then break things
(kill -9, SIGSTOP, backend restarts, kill storms, garbage on the wire, a
stopped Docker engine) and count what each client got.

A :class:`Lab` owns the processes and a temporary folder; its reader threads
feed one condition variable, so every wait here is a bounded wait on a
condition, never a sleep.  ``tests/test_faults.py`` runs the scenarios with
small numbers and asserts; ``bench/fault_report.py`` runs them with large
numbers and prints the figures.

Run as a script (``python faults_support.py client --endpoint E``) it is the
client process.
"""

from __future__ import annotations

import collections
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from subprocess_env import child_env

REPO = Path(__file__).resolve().parent.parent
#: Kill the child if the process that started it dies (prctl PR_SET_PDEATHSIG):
#: a crashed test run leaves no backend or agent behind.
_ORPHAN_GUARD = "import ctypes, signal; ctypes.CDLL(None).prctl(1, signal.SIGKILL)"
_TWISTD = _ORPHAN_GUARD + "; from twisted.scripts.twistd import run; run()"

#: Backend heartbeat used by the scenarios: an agent that stops answering is
#: dropped after about ``PING_INTERVAL * MISSED_PONGS`` seconds (1 s).
PING_INTERVAL = 0.25
MISSED_PONGS = 4
#: Largest frame the backend accepts in the scenarios (1 MiB), so that the
#: "never reads" client is cut off after 4 MiB of queued results.
MAX_FRAME = 1 << 20
#: An agent that hears nothing from the backend this long reconnects.
AGENT_SILENCE = 2.0


def free_port() -> int:
    """A TCP port free on the loopback right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stuck(AssertionError):
    """A bounded wait ran out; the message carries the processes' last lines."""


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


class Proc:
    """A child process whose merged output is read, line by line, by a thread.

    Lines are kept (and copied to ``LAB/NAME.log``); :meth:`count` answers
    "how many lines contain X" incrementally, so waiting on log lines stays
    linear in the output.
    """

    def __init__(self, lab: Lab, name: str, argv: Sequence[str], stdin: bool = False, stderr: Any = None) -> None:
        self.lab = lab
        self.name = name
        self.argv = list(argv)
        self.lines: List[str] = []
        self.eof = False
        self._counts: Dict[str, Tuple[int, int]] = {}
        self._log = open(os.path.join(lab.root, f"{name}.log"), "a", encoding="utf-8")
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr if stderr is not None else subprocess.STDOUT,
            env=child_env(),
            cwd=lab.root,
        )
        self.pid = self.popen.pid
        self.stopped = False  # SIGSTOPped by us
        self._thread = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._log.write(line + "\n")
            with self.lab.cond:
                self._take(line)
                self.lab.cond.notify_all()
        self._log.flush()
        with self.lab.cond:
            self.eof = True
            self.lab.cond.notify_all()

    def _take(self, line: str) -> None:
        self.lines.append(line)

    def count(self, *fragments: str) -> int:
        """Lines that contain every fragment (call with the lab's lock held, e.g. in a predicate)."""
        key = "\0".join(fragments)
        seen, n = self._counts.get(key, (0, 0))
        lines = self.lines
        for line in lines[seen:]:
            if all(f in line for f in fragments):
                n += 1
        self._counts[key] = (len(lines), n)
        return n

    def has(self, *fragments: str) -> bool:
        with self.lab.cond:
            return self.count(*fragments) > 0

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            self.popen.send_signal(sig)
            if sig == signal.SIGSTOP:
                self.stopped = True
            elif sig == signal.SIGCONT:
                self.stopped = False

    def kill(self) -> None:
        """SIGKILL: the process vanishes without closing anything on its own."""
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM and wait for the process to end (SIGKILL after ``timeout``)."""
        if self.stopped:
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def destroy(self) -> None:
        """End the process whatever its state (fixture cleanup)."""
        if self.alive:
            if self.stopped:
                self.signal(signal.SIGCONT)
            self.popen.kill()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
            pass
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._thread.join(5)
        self._log.close()

    def memory(self) -> Dict[str, int]:
        """VmRSS and VmHWM (peak resident set) in bytes, from /proc/PID/status."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    def tail(self, n: int = 25) -> str:
        return "\n".join(f"  {self.name}| {line}" for line in self.lines[-n:])


class ClientProc(Proc):
    """A client process (this file's :func:`client_main`): commands in, JSON events out."""

    def __init__(self, lab: Lab, name: str, argv: Sequence[str]) -> None:
        self.results: Dict[str, List[Dict[str, Any]]] = {}
        #: job ids in the order of their first result
        self.answer_log: List[str] = []
        #: BackendJobDone messages received, per job id (duplicates show here)
        self.wire: Dict[str, int] = collections.Counter()
        self.started: List[str] = []
        self.ready_count = 0
        #: Pongs received: the backend has seen at least this many pings from us
        self.pongs = 0
        self.envs: List[str] = []
        self.queues: List[Dict[str, Any]] = []
        self.errors: List[Dict[str, Any]] = []
        self.submitted: List[str] = []
        self._stderr = open(os.path.join(lab.root, f"{name}.stderr.log"), "a")
        super().__init__(lab, name, argv, stdin=True, stderr=self._stderr)

    def _take(self, line: str) -> None:
        if not line.startswith("{"):
            self.lines.append(line)
            return
        event = json.loads(line)
        kind = event.get("ev")
        if kind == "result":
            first = event["id"] not in self.results
            self.results.setdefault(event["id"], []).append(event)
            if first:
                self.answer_log.append(event["id"])
        elif kind == "wire":
            self.wire[event["id"]] += 1
        elif kind == "started":
            self.started.append(event["id"])
        elif kind == "ready":
            self.ready_count += 1
            self.envs = event["envs"]
        elif kind == "envs":
            self.envs = event["envs"]
        elif kind == "pong":
            self.pongs += 1
        elif kind in ("queue", "queue-error"):
            self.queues.append(event)
        elif kind == "error":
            self.errors.append(event)
            self.lines.append(line)

    def send(self, **command: Any) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(command).encode() + b"\n")
        self.popen.stdin.flush()

    def submit(
        self,
        ids: Sequence[str],
        inputs: Sequence[Dict[str, Any]] = ({},),
        env: str = "default",
        course: str = "fault",
        task: str = "task",
    ) -> List[str]:
        """Submit jobs ``ids``; job ``i`` gets ``inputs[i % len(inputs)]`` as input data."""
        ids = list(ids)
        self.submitted.extend(ids)
        self.send(cmd="submit", ids=ids, inputs=list(inputs), env=env, course=course, task=task)
        return ids

    def kill_jobs(self, ids: Sequence[str]) -> None:
        self.send(cmd="kill", ids=list(ids))

    def queue(self, timeout: float = 10.0) -> Dict[str, Any]:
        """The backend's queue: ``{"running": [[job_id, agent_name], ...], "waiting": [ids]}``."""
        with self.lab.cond:
            before = len(self.queues)
        self.send(cmd="queue")
        self.lab.wait(lambda: len(self.queues) > before, timeout, f"{self.name}'s queue snapshot")
        with self.lab.cond:
            answer = self.queues[before]
        if answer["ev"] != "queue":
            raise AssertionError(f"{self.name}: the queue request failed: {answer['error']}")
        return answer

    def answered(self, ids: Iterable[str]) -> Callable[[], bool]:
        """A predicate (for :meth:`Lab.wait`): every job of ``ids`` has a result."""
        remaining = set(ids)
        position = [0]

        def check() -> bool:
            new = self.answer_log[position[0] :]
            position[0] += len(new)
            remaining.difference_update(new)
            return not remaining

        return check

    def started_among(self, ids: Iterable[str]) -> int:
        """How many of ``ids`` were reported started (lock held)."""
        wanted = set(ids)
        return len(wanted.intersection(self.started))

    def ready(self, env: str = "default", count: int = 1) -> Callable[[], bool]:
        """A predicate: the backend answered our hello ``count`` times and offers ``env``."""
        return lambda: self.ready_count >= count and env in self.envs

    def destroy(self) -> None:
        super().destroy()
        self._stderr.close()


@dataclass
class Endpoints:
    """How the backend listens and how peers connect to it."""

    listen: List[str]
    connect: Dict[str, str]  # "zmq" / "tcp" -> connect string


class Lab:
    """A temporary folder and every process of one scenario; :meth:`close` ends them all."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="itx-f-", dir="/tmp")
        self.cond = threading.Condition()
        self.procs: List[Proc] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.destroy()
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str, fail: bool = True) -> bool:
        """Wait (on the condition the reader threads signal) until ``predicate()``; bounded."""
        with self.cond:
            ok = self.cond.wait_for(predicate, timeout)
        if not ok and fail:
            raise Stuck(f"timed out after {timeout:g} s waiting for {what}\n{self.tails()}")
        return bool(ok)

    def tails(self, n: int = 25) -> str:
        with self.cond:
            return "\n".join(f"--- {p.name} (pid {p.pid}, exit {p.popen.poll()})\n{p.tail(n)}" for p in self.procs)

    # -- endpoints -------------------------------------------------------------

    def endpoints(self, side: str, kinds: Sequence[str] = ("zmq", "tcp")) -> Endpoints:
        """Fresh endpoints for one side (``clients`` or ``agents``): ZeroMQ on an
        ipc path in the lab, TCP on a free loopback port."""
        listen, connect = [], {}
        for kind in kinds:
            if kind == "zmq":
                address = f"zmq:ipc://{self.root}/{side}.ipc"
                listen.append(address)
                connect["zmq"] = address
            elif kind == "tcp":
                port = free_port()
                listen.append(f"tcp:{port}:interface=127.0.0.1")
                connect["tcp"] = f"tcp:host=127.0.0.1:port={port}"
            else:
                raise ValueError(kind)
        return Endpoints(listen, connect)

    # -- processes -------------------------------------------------------------

    def spawn(self, name: str, argv: Sequence[str]) -> Proc:
        proc = Proc(self, name, argv)
        self.procs.append(proc)
        return proc

    def backend(
        self,
        clients: Endpoints,
        agents: Endpoints,
        *options: str,
        name: str = "backend",
        ready: bool = True,
        nofile: Optional[int] = None,
    ) -> Proc:
        """``twistd -n inginious-backend`` on the given endpoints (fast heartbeats);
        ``nofile``: its soft and hard RLIMIT_NOFILE (``ulimit -n``)."""
        program = _TWISTD
        if nofile is not None:
            program = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); {program}"
        argv = [sys.executable, "-c", program, "-n", "--pidfile=", "inginious-backend"]
        for endpoint in clients.listen:
            argv += ["--clients", endpoint]
        for endpoint in agents.listen:
            argv += ["--agents", endpoint]
        argv += ["--ping-interval", str(PING_INTERVAL), "--max-missed-pongs", str(MISSED_PONGS)]
        argv += ["--max-frame", str(MAX_FRAME), *options]
        proc = self.spawn(name, argv)
        if ready:
            self.wait_backend(proc)
        return proc

    def wait_backend(self, proc: Proc, timeout: float = 20.0) -> None:
        self.wait(lambda: proc.count("backend ready") > 0 or proc.eof, timeout, f"{proc.name} to listen")
        if not proc.has("backend ready"):
            raise Stuck(f"{proc.name} did not start\n{self.tails()}")

    def restart(self, old: Proc, name: str) -> Proc:
        """The same backend command again (``old`` must have ended)."""
        assert not old.alive
        proc = self.spawn(name, old.argv)
        self.wait_backend(proc)
        return proc

    def agent(
        self,
        name: str,
        endpoint: str,
        *,
        kind: str = "mock",
        slots: int = 4,
        envs: Sequence[str] = ("default",),
        options: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> Proc:
        """``twistd -n inginious-agent --kind KIND`` named ``name`` (not waited for: see :meth:`registered`)."""
        argv = [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "inginious-agent"]
        argv += ["--backend", endpoint, "--kind", kind, "--slots", str(slots), "--name", name]
        argv += ["--silence-timeout", str(AGENT_SILENCE)]
        for env in envs:
            argv += ["--environment", env]
        for option in options:
            argv += ["--option", option]
        return self.spawn(name, argv + list(extra))

    def client(
        self, name: str, endpoint: str, *, ping_interval: float = 0.5, connect_timeout: float = 20.0
    ) -> ClientProc:
        argv = [sys.executable, __file__, "client", "--endpoint", endpoint, "--name", name]
        argv += ["--ping-interval", str(ping_interval), "--connect-timeout", str(connect_timeout)]
        proc = ClientProc(self, name, argv)
        self.procs.append(proc)
        return proc

    @staticmethod
    def registered(backend: Proc, name: str, times: int = 1) -> Callable[[], bool]:
        """A predicate: ``backend`` logged agent ``name``'s registration ``times`` times."""
        return lambda: backend.count(f"agent '{name}' registered") >= times


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


@dataclass
class Figures:
    """What one scenario measured: every submitted job should have exactly one result."""

    scenario: str
    submitted: int = 0
    #: jobs with at least one result
    received: int = 0
    #: results beyond the first one of a job, plus BackendJobDone messages
    #: beyond the first one for a job on the wire
    duplicates: int = 0
    #: jobs without any result when the scenario gave up waiting
    lost: int = 0
    #: results for job ids that were never submitted
    strays: int = 0
    by_type: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: Dict[str, Any] = field(default_factory=dict)

    def add(self, client: ClientProc, ids: Optional[Iterable[str]] = None) -> Figures:
        """Count ``client``'s results for ``ids`` (default: everything it submitted)."""
        with client.lab.cond:
            wanted = list(client.submitted if ids is None else ids)
            known = set(client.submitted)
            types = collections.Counter(self.by_type)
            for job_id in wanted:
                results = client.results.get(job_id, [])
                self.submitted += 1
                if results:
                    self.received += 1
                    types[results[0]["type"]] += 1
                else:
                    self.lost += 1
                self.duplicates += max(0, len(results) - 1) + max(0, client.wire.get(job_id, 0) - 1)
            self.strays += sum(1 for job_id in set(client.results) | set(client.wire) if job_id not in known)
            self.by_type = dict(types)
        return self

    @property
    def exactly_once(self) -> bool:
        return (
            self.submitted > 0 and self.received == self.submitted and not (self.duplicates or self.lost or self.strays)
        )

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_type.items()))
        return (
            f"{self.scenario:<28} submitted {self.submitted:>5}  received {self.received:>5}  "
            f"duplicates {self.duplicates}  lost {self.lost}  strays {self.strays}  "
            f"{self.seconds:6.1f} s  [{kinds}]"
        )


def results_of(client: ClientProc, ids: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """The first result of each job of ``ids`` that has one."""
    with client.lab.cond:
        return {i: client.results[i][0] for i in ids if i in client.results}


def job_ids(prefix: str, n: int, start: int = 0) -> List[str]:
    return [f"{prefix}-{i}" for i in range(start, start + n)]


# ---------------------------------------------------------------------------
# Raw peers (garbage)
# ---------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """A stream-transport frame: 4-byte big-endian length, then the payload."""
    return struct.pack(">I", len(payload)) + payload


def _tcp_port(connect: str) -> int:
    return int(connect.rsplit("port=", 1)[1])


def raw_tcp(connect: str, rcvbuf: Optional[int] = None) -> socket.socket:
    """A plain TCP socket connected to a stream endpoint string ``tcp:host=...:port=N``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", _tcp_port(connect)))
    return s


def read_frames(sock: socket.socket, want: Callable[[Any], bool], timeout: float) -> Any:
    """Read stream frames from ``sock`` until a decoded message satisfies ``want``; bounded."""
    from inginious_tx.messages import MessageMeta

    deadline = time.monotonic() + timeout
    buffer = b""
    while True:
        while len(buffer) >= 4:
            (length,) = struct.unpack_from(">I", buffer)
            if len(buffer) < 4 + length:
                break
            message = MessageMeta.load(buffer[4 : 4 + length])
            buffer = buffer[4 + length :]
            if want(message):
                return message
        left = deadline - time.monotonic()
        if left <= 0:
            raise Stuck("no matching message on the raw socket")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise Stuck("the raw socket was closed by the backend")
        buffer += data


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True if the other side closed (or reset) ``sock`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            if not sock.recv(1 << 20):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def garbage_payloads(seed: int = 7) -> List[Tuple[str, bytes]]:
    """Payloads no backend should choke on: (what, bytes)."""
    import msgpack

    rng = random.Random(seed)
    pack = lambda obj: msgpack.packb(obj, use_bin_type=True)  # noqa: E731
    return [
        ("random bytes", rng.randbytes(4096)),
        ("empty", b""),
        ("truncated msgpack", pack({"type": "client_hello", "name": "x" * 100})[:20]),
        ("not a map", pack([1, 2, 3])),
        ("unknown type", pack({"type": "no_such_message"})),
        ("no type", pack({"name": "x"})),
        ("missing field", pack({"type": "client_new_job", "job_id": "x"})),
        ("wrong field type", pack({"type": "client_hello", "name": 12})),
        ("extra field", pack({"type": "ping", "extra": 1})),
        ("map32 claiming 4G entries", b"\xdf\xff\xff\xff\xff"),
        ("array32 claiming 4G items", b"\xdd\xff\xff\xff\xff"),
        ("str32 claiming 4 GB", b"\xdb\xff\xff\xff\xff" + b"a" * 10),
        ("deep nesting", b"\x91" * 100_000 + b"\xc0"),
        ("ext type", b"\xc7\x03\x05abc"),
        ("wrong job id shape", pack({"type": "client_kill_job", "job_id": [1, 2, {"a": None}]})),
    ]


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


#: Input data of a job that the mock agent answers after ``s`` seconds.
def delay(s: float) -> Dict[str, Any]:
    return {"@mock_delay": s}


#: A job the mock agent never answers unless it is killed.
HANG = {"@mock_fail": "hang"}


def _running_on(snapshot: Dict[str, Any], agent: str) -> List[str]:
    return [job_id for job_id, name in snapshot["running"] if name == agent]


def agent_killed(
    lab: Lab, jobs: int = 24, transport: str = "tcp", retries: int = 1, short: float = 0.02, slots: int = 4
) -> Figures:
    """Agent A is SIGKILLed while it runs jobs; B carries on.

    Two agents of ``slots`` slots; the first ``2 * slots`` jobs take 1 s (so
    both agents are full), the rest are short.  Once all are busy, the queue snapshot
    tells which jobs A runs; A is killed.  With ``retries`` >= 1 those jobs run
    again on B; with 0 they are answered ``crash``.  Over TCP the backend sees
    the connection close at once; over ZeroMQ only its heartbeat notices.
    """
    t0 = time.monotonic()
    clients, agents = lab.endpoints("clients", ["zmq"]), lab.endpoints("agents", [transport])
    backend = lab.backend(clients, agents, "--max-retries", str(retries))
    a = lab.agent("A", agents.connect[transport], slots=slots)
    lab.agent("B", agents.connect[transport], slots=slots)
    client = lab.client("client", clients.connect["zmq"])
    lab.wait(lambda: lab.registered(backend, "A")() and lab.registered(backend, "B")(), 20, "agents A and B")
    lab.wait(client.ready(), 20, "the client")
    first = client.submit(job_ids("long", 2 * slots), [delay(1.0)])
    rest = client.submit(job_ids("short", max(0, jobs - 2 * slots)), [delay(short)])
    lab.wait(lambda: len(client.started) >= 2 * slots, 10, "every slot busy")
    on_a = _running_on(client.queue(), "A")
    a.kill()
    killed_at = time.monotonic()
    removed = ("agent 'A'", "removed")
    lab.wait(lambda: backend.count(*removed) > 0, 10, "the backend to drop agent A")
    detected = time.monotonic() - killed_at
    lab.wait(client.answered(first + rest), 30 + jobs * short, "every result", fail=False)
    figures = Figures(f"agent SIGKILL ({transport}, retries {retries})").add(client)
    figures.seconds = time.monotonic() - t0
    figures.notes.update(
        running_on_killed_agent=on_a,
        their_results=[r["type"] for r in results_of(client, on_a).values()],
        their_texts=[r["text"] for r in results_of(client, on_a).values()],
        detection_seconds=round(detected, 2),
        removal_reason=next(line for line in backend.lines if all(f in line for f in removed)),
    )
    return figures


def agent_frozen(lab: Lab, jobs: int = 16, late_jobs: int = 8, short: float = 0.02, slots: int = 4) -> Figures:
    """A ZeroMQ agent is SIGSTOPped while it runs jobs (it vanishes without closing).

    The backend's heartbeat drops it and its jobs run again on B.  Then it is
    SIGCONTinued: its timers fire and it sends results for jobs it no longer
    owns, which the backend must drop; it then notices the silence, says hello
    again and gets new jobs.
    """
    t0 = time.monotonic()
    clients, agents = lab.endpoints("clients", ["zmq"]), lab.endpoints("agents", ["zmq"])
    backend = lab.backend(clients, agents, "--max-retries", "1")
    a = lab.agent("A", agents.connect["zmq"], slots=slots)
    lab.agent("B", agents.connect["zmq"], slots=slots)
    client = lab.client("client", clients.connect["zmq"])
    lab.wait(lambda: lab.registered(backend, "A")() and lab.registered(backend, "B")(), 20, "agents A and B")
    lab.wait(client.ready(), 20, "the client")
    first = client.submit(job_ids("long", 2 * slots), [delay(1.0)])
    rest = client.submit(job_ids("short", max(0, jobs - 2 * slots)), [delay(short)])
    lab.wait(lambda: len(client.started) >= 2 * slots, 10, "every slot busy")
    on_a = _running_on(client.queue(), "A")
    a.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    lab.wait(lambda: backend.count("agent 'A'", "removed", "pings unanswered") > 0, 10, "the heartbeat to drop A")
    detected = time.monotonic() - stopped_at
    lab.wait(client.answered(first + rest), 30 + jobs * short, "every result", fail=False)
    # A wakes up: its jobs' timers are overdue and it answers them.
    a.signal(signal.SIGCONT)
    dropped = ("AgentJobDone from", "not a registered agent: dropped")
    lab.wait(lambda: backend.count(*dropped) >= len(on_a), 10, "A's late results to be dropped", fail=False)
    # ... then hears no ping for AGENT_SILENCE seconds, reconnects and says hello again.
    lab.wait(lab.registered(backend, "A", 2), 10 + AGENT_SILENCE, "A's new hello")
    late = client.submit(job_ids("after", late_jobs), [delay(short)])
    lab.wait(client.answered(late), 20, "the jobs after A came back", fail=False)
    figures = Figures("ZeroMQ agent SIGSTOP").add(client)
    figures.seconds = time.monotonic() - t0
    with lab.cond:
        late_dropped = backend.count(*dropped)
    figures.notes.update(
        running_on_frozen_agent=on_a,
        their_results=[r["type"] for r in results_of(client, on_a).values()],
        detection_seconds=round(detected, 2),
        late_results_dropped=late_dropped,
        agent_alive=a.alive,
    )
    return figures


def backend_restart(lab: Lab, jobs: int = 6) -> Figures:
    """The backend is SIGKILLed with jobs pending, restarted, then stopped with SIGTERM.

    One ZeroMQ and one TCP client, one ZeroMQ and one TCP agent.  Pending jobs
    must come back ``crash`` (made up by the client: backend unavailable)
    rather than hang; agents and clients reconnect by themselves; new jobs
    complete; a SIGTERM answers pending jobs ``crash`` (backend shutting down).
    """
    t0 = time.monotonic()
    clients, agents = lab.endpoints("clients"), lab.endpoints("agents")
    backend = lab.backend(clients, agents)
    lab.agent("AZ", agents.connect["zmq"])
    lab.agent("AT", agents.connect["tcp"])
    cz = lab.client("cz", clients.connect["zmq"])
    ct = lab.client("ct", clients.connect["tcp"])
    lab.wait(lambda: lab.registered(backend, "AZ")() and lab.registered(backend, "AT")(), 20, "both agents")
    lab.wait(lambda: cz.ready()() and ct.ready()(), 20, "both clients")

    # 1. kill -9 with jobs running and waiting
    pending = {c: c.submit(job_ids(f"{c.name}-hang", jobs), [HANG]) for c in (cz, ct)}
    lab.wait(lambda: sum(c.started_among(ids) for c, ids in pending.items()) >= min(8, 2 * jobs), 10, "full slots")
    backend.kill()
    killed_at = time.monotonic()
    lab.wait(lambda: all(c.answered(ids)() for c, ids in pending.items()), 20, "crash answers", fail=False)
    answered_in = time.monotonic() - killed_at

    # 2. the same command again: everybody comes back on their own
    backend2 = lab.restart(backend, "backend-2")
    lab.wait(lambda: lab.registered(backend2, "AZ")() and lab.registered(backend2, "AT")(), 20, "agents back")
    lab.wait(lambda: cz.ready(count=2)() and ct.ready(count=2)(), 20, "clients back")
    fresh = {c: c.submit(job_ids(f"{c.name}-new", jobs), [delay(0.01)]) for c in (cz, ct)}
    lab.wait(lambda: all(c.answered(ids)() for c, ids in fresh.items()), 20, "new jobs", fail=False)

    # 3. a graceful stop answers what is pending
    final = {c: c.submit(job_ids(f"{c.name}-term", 2), [HANG]) for c in (cz, ct)}
    lab.wait(lambda: sum(c.started_among(ids) for c, ids in final.items()) >= 4, 10, "the last jobs to start")
    status = backend2.terminate()
    lab.wait(lambda: all(c.answered(ids)() for c, ids in final.items()), 20, "answers on SIGTERM", fail=False)

    figures = Figures("backend restart")
    for client in (cz, ct):
        figures.add(client)
    figures.seconds = time.monotonic() - t0

    def texts(group: Dict[ClientProc, List[str]]) -> List[Tuple[str, str, bool]]:
        return [(r["type"], r["text"], r["local"]) for c, ids in group.items() for r in results_of(c, ids).values()]

    figures.notes.update(
        after_kill=texts(pending),
        crash_answers_within=round(answered_in, 2),
        after_restart=texts(fresh),
        after_sigterm=texts(final),
        sigterm_exit_status=status,
    )
    return figures


def kill_storm(lab: Lab, jobs: int = 1000, slots: int = 8, after: int = 32) -> Figures:
    """``jobs`` jobs, then a kill for each one while some run and most wait.

    One job in four takes 20 ms, the others 30 s, on two agents of ``slots``
    slots: by the kill, the slots hold long jobs, a few short ones are done,
    the rest wait.  Every job must be answered once (killed, or success for
    those that finished first), and the slots must all be free afterwards.
    """
    t0 = time.monotonic()
    clients, agents = lab.endpoints("clients", ["zmq"]), lab.endpoints("agents", ["zmq"])
    backend = lab.backend(clients, agents)
    lab.agent("A", agents.connect["zmq"], slots=slots)
    lab.agent("B", agents.connect["zmq"], slots=slots)
    client = lab.client("client", clients.connect["zmq"])
    lab.wait(lambda: lab.registered(backend, "A")() and lab.registered(backend, "B")(), 20, "agents A and B")
    lab.wait(client.ready(), 20, "the client")
    ids = client.submit(job_ids("storm", jobs), [delay(0.02), delay(30), delay(30), delay(30)])
    lab.wait(lambda: len(client.answer_log) >= 1 and len(client.started) >= 2 * slots, 20, "jobs running")
    with lab.cond:
        done_before = len(client.answer_log)
    client.kill_jobs(ids)
    lab.wait(client.answered(ids), 30 + jobs / 100, "every job's answer", fail=False)
    storm_seconds = time.monotonic() - t0
    snapshot = client.queue()
    later = client.submit(job_ids("after", after), [delay(0.01)])
    lab.wait(client.answered(later), 20, "jobs after the storm", fail=False)
    figures = Figures("kill storm").add(client)
    figures.seconds = time.monotonic() - t0
    texts = collections.Counter(r["text"] for r in results_of(client, ids).values() if r["type"] == "killed")
    figures.notes.update(
        done_before_kill=done_before,
        killed_texts=dict(texts),
        queue_after=(len(snapshot["running"]), len(snapshot["waiting"])),
        storm_seconds=round(storm_seconds, 2),
        after_results=collections.Counter(r["type"] for r in results_of(client, later).values()),
    )
    return figures


def client_vanishes(lab: Lab, jobs: int = 200, slots: int = 8, after: int = 32) -> Figures:
    """Two clients are SIGKILLed with jobs running and waiting; a third one must not notice.

    The TCP client's departure is certain at once; the ZeroMQ one (which
    used to ping) is declared gone after ``--client-silence-timeout``.  Their
    waiting jobs are dropped and their running jobs killed on the agents, so
    every slot is free again for the witness's jobs.
    """
    t0 = time.monotonic()
    clients, agents = lab.endpoints("clients"), lab.endpoints("agents", ["zmq"])
    backend = lab.backend(clients, agents, "--client-silence-timeout", "2")
    lab.agent("A", agents.connect["zmq"], slots=slots)
    lab.agent("B", agents.connect["zmq"], slots=slots)
    vt = lab.client("vt", clients.connect["tcp"])
    vz = lab.client("vz", clients.connect["zmq"])
    witness = lab.client("witness", clients.connect["zmq"])
    lab.wait(lambda: lab.registered(backend, "A")() and lab.registered(backend, "B")(), 20, "agents A and B")
    lab.wait(lambda: all(c.ready()() for c in (vt, vz, witness)), 20, "the clients")
    # each victim gets one agent's worth of slots running, then jobs waiting
    for victim in (vt, vz):
        victim.submit(job_ids(f"{victim.name}-long", slots), [delay(60)])
        lab.wait(lambda v=victim: len(v.started) >= slots, 10, f"{victim.name}'s jobs to start")
    for victim in (vt, vz):
        victim.submit(job_ids(f"{victim.name}-long", jobs - slots, start=slots), [delay(60)])
        victim.queue()  # answered after the jobs sent before it: they have all arrived
    # only a ZeroMQ client that used to ping can be declared gone when it falls silent
    lab.wait(lambda: vz.pongs > 0, 10, "a ping from the ZeroMQ client")
    vt.kill()
    vz.kill()
    lab.wait(lambda: backend.count("client 'vt' left") > 0, 10, "the TCP client's departure")
    lab.wait(lambda: backend.count("client 'vz' left") > 0, 15, "the silent ZeroMQ client's departure")
    ids = witness.submit(job_ids("witness", after), [delay(0.01)])
    lab.wait(witness.answered(ids), 20, "the witness's jobs", fail=False)
    snapshot = witness.queue()
    figures = Figures("clients vanish").add(witness)
    figures.seconds = time.monotonic() - t0
    with lab.cond:
        figures.notes.update(
            departures=[line.split("] ", 1)[1] for line in backend.lines if "left (" in line],
            queue_after=(len(snapshot["running"]), len(snapshot["waiting"])),
        )
    return figures


def garbage(lab: Lab, jobs: int = 40, never_read_jobs: int = 300, result_kb: int = 100, repeat: int = 1) -> Figures:
    """Bad input of every kind on both endpoints, while two clients' jobs run.

    Random bytes, truncated frames, huge length prefixes, well-formed msgpack
    with wrong fields, messages on the wrong side, a registered rogue agent
    that forges results for jobs it does not run then stops answering, and a
    TCP client that submits many jobs with large results and never reads.
    The backend must stay up, its memory bounded, and the honest clients'
    jobs must all be answered once.
    """
    import zmq

    from inginious_tx.messages import (
        AgentHello,
        AgentJobDone,
        BackendNewJob,
        ClientHello,
        ClientKillJob,
        ClientNewJob,
        Ping,
        Pong,
    )

    t0 = time.monotonic()
    clients, agents = lab.endpoints("clients"), lab.endpoints("agents")
    backend = lab.backend(clients, agents)
    lab.agent("AZ", agents.connect["zmq"], slots=4)
    lab.agent("AT", agents.connect["tcp"], slots=4)
    # results of about result_kb kB each, for the client that never reads
    lab.agent("big", agents.connect["tcp"], slots=8, envs=["big"], options=[f"text={'x' * (result_kb * 1000)}"])
    cz = lab.client("cz", clients.connect["zmq"])
    ct = lab.client("ct", clients.connect["tcp"])
    lab.wait(lambda: all(lab.registered(backend, n)() for n in ("AZ", "AT", "big")), 20, "the agents")
    lab.wait(lambda: cz.ready()() and ct.ready()(), 20, "the clients")
    # warm-up, so that "before" includes what honest traffic costs
    warm = {c: c.submit(job_ids(f"{c.name}-warm", jobs), [delay(0.01)]) for c in (cz, ct)}
    lab.wait(lambda: all(c.answered(ids)() for c, ids in warm.items()), 20, "warm-up jobs")
    memory_before = backend.memory()
    # honest jobs that run during the garbage
    for c in (cz, ct):
        c.submit(job_ids(f"{c.name}-during", jobs), [delay(0.2)])

    def new_job(job_id: str, env: str = "default") -> ClientNewJob:
        return ClientNewJob(job_id, 0, "fault", "task", {}, env, False, 10, None, 100, False, "garbage", None)

    sent = collections.Counter()
    ctx = zmq.Context()
    sockets: List[Any] = []
    try:
        for _ in range(repeat):
            # -- ZeroMQ, both endpoints: bad payloads, bad frames, oversize frames
            for endpoint in (clients.connect["zmq"], agents.connect["zmq"]):
                dealer = ctx.socket(zmq.DEALER)
                dealer.setsockopt(zmq.LINGER, 0)
                dealer.connect(endpoint[len("zmq:") :])
                sockets.append(dealer)
                for what, payload in garbage_payloads():
                    dealer.send(payload)
                    sent[f"zmq {what}"] += 1
                dealer.send_multipart([b"two", b"frames"])
                dealer.send_multipart([b"", b"", b""])
                sent["zmq multi-frame"] += 2
                big = ctx.socket(zmq.DEALER)  # a frame over --max-frame: libzmq drops this peer
                big.setsockopt(zmq.LINGER, 0)
                big.connect(endpoint[len("zmq:") :])
                big.send(b"\0" * (MAX_FRAME + 1024))
                sockets.append(big)
                sent["zmq oversize frame"] += 1
                # raw bytes straight into the ipc socket: not even ZMTP
                raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                raw.connect(endpoint[len("zmq:ipc://") :])
                raw.sendall(random.Random(1).randbytes(8192))
                raw.close()
                sent["zmq non-ZMTP bytes"] += 1
            # -- wrong side on ZeroMQ: agent messages to the client endpoint and back
            wrong_c = ctx.socket(zmq.DEALER)
            wrong_c.setsockopt(zmq.LINGER, 0)
            wrong_c.connect(clients.connect["zmq"][len("zmq:") :])
            sockets.append(wrong_c)
            wrong_a = ctx.socket(zmq.DEALER)
            wrong_a.setsockopt(zmq.LINGER, 0)
            wrong_a.connect(agents.connect["zmq"][len("zmq:") :])
            sockets.append(wrong_a)
            forged = AgentJobDone((b"x", "cz-during-0"), ("failed", "forged"), 0.0, {}, {}, {}, "", None, "", "")
            for msg in (AgentHello("evil", 4, {"default": {}}), forged, Pong(), BackendNewJob(
                (b"x", "y"), "c", "t", {}, "default", False, 1, None, 1, False, None)):  # fmt: skip
                wrong_c.send(msg.dump())
                sent["zmq wrong side"] += 1
            wrong_c.send(ClientHello("wrong-side").dump())
            wrong_c.send(forged.dump())  # now registered as a client: still not an agent
            for msg in (ClientHello("evil"), new_job("evil-1"), ClientKillJob("cz-during-1"), Ping()):
                wrong_a.send(msg.dump())
                sent["zmq wrong side"] += 1

            # -- TCP, both endpoints: one connection per bad input (each is closed by the backend)
            for endpoint in (clients.connect["tcp"], agents.connect["tcp"]):
                cases = [(f"tcp {what}", frame(payload)) for what, payload in garbage_payloads()]
                cases += [
                    ("tcp random stream", random.Random(2).randbytes(65536)),
                    ("tcp huge length prefix", struct.pack(">I", 0xFFFFFFFF) + b"abc"),
                    ("tcp length just over max", struct.pack(">I", MAX_FRAME + 1) + b"abc"),
                    ("tcp truncated frame", struct.pack(">I", 1000) + b"only a few bytes"),
                    ("tcp truncated header", b"\x00\x00"),
                    ("tcp valid then garbage", frame(Ping().dump()) + frame(b"\xc1")),
                ]
                for what, data in cases:
                    s = raw_tcp(endpoint)
                    try:
                        s.sendall(data)
                    except OSError:
                        pass  # the backend may already have closed it
                    s.close()
                    sent[what] += 1
                # a frame left half-sent on an open connection (the backend keeps its buffer)
                s = raw_tcp(endpoint)
                s.sendall(struct.pack(">I", MAX_FRAME) + b"\0" * (MAX_FRAME // 2))
                sockets.append(s)
                sent["tcp half frame left open"] += 1
            # -- wrong side on TCP
            s = raw_tcp(clients.connect["tcp"])
            s.sendall(frame(ClientHello("wrong-side-tcp").dump()) + frame(forged.dump()))
            sockets.append(s)
            s = raw_tcp(agents.connect["tcp"])
            s.sendall(frame(new_job("evil-2").dump()) + frame(ClientKillJob("ct-during-1").dump()))
            sockets.append(s)
            sent["tcp wrong side"] += 4

        # -- a rogue agent: registers, learns a real job id, forges the others, then goes silent
        rogue = raw_tcp(agents.connect["tcp"])
        sockets.append(rogue)
        rogue.sendall(frame(AgentHello("rogue", 1, {"default": {"id": "r", "created": 0, "ports": []}}).dump()))
        lab.wait(lab.registered(backend, "rogue"), 10, "the rogue agent")
        cz.submit(job_ids("bait", 8), [delay(0.3)])
        got = read_frames(rogue, lambda m: isinstance(m, BackendNewJob), 10)
        # forge results for the other jobs of the same client (its address is in the job id)
        address, rogue_job = got.job_id
        owner = cz if rogue_job in set(cz.submitted) else ct
        victims = [(address, job_id) for job_id in owner.submitted if job_id != rogue_job]
        rogue.sendall(
            b"".join(
                frame(AgentJobDone(v, ("failed", "forged"), 0.0, {}, {}, {}, "", None, "", "").dump()) for v in victims
            )
        )
        sent["rogue forged results"] += len(victims)

        # -- a TCP client that submits jobs with large results and never reads
        deaf = raw_tcp(clients.connect["tcp"], rcvbuf=4096)
        sockets.append(deaf)
        deaf.sendall(frame(ClientHello("deaf").dump()))
        deaf.sendall(b"".join(frame(new_job(f"deaf-{i}", "big").dump()) for i in range(never_read_jobs)))
        lab.wait(lambda: backend.count("does not read") > 0, 30, "the backend to cut off the client that never reads",
                 fail=False)  # fmt: skip
        deaf_cut = closed_by_peer(deaf, 5)

        # honest traffic still flows after all that
        for c in (cz, ct):
            c.submit(job_ids(f"{c.name}-after", jobs), [delay(0.01)])
        lab.wait(lambda: backend.count("agent 'rogue'", "removed") > 0, 10, "the silent rogue to be dropped")
        everything = {c: c.submitted for c in (cz, ct)}
        lab.wait(lambda: all(c.answered(ids)() for c, ids in everything.items()), 30, "honest jobs", fail=False)
        memory_after = backend.memory()
    finally:
        for s in sockets:
            s.close()
        ctx.term()

    figures = Figures("garbage")
    for client in (cz, ct):
        figures.add(client)
    figures.seconds = time.monotonic() - t0
    forged_seen = [r for c in (cz, ct) for rs in c.results.values() for r in rs if r["text"] == "forged"]
    figures.notes.update(
        sent=dict(sent),
        backend_alive=backend.alive,
        rss_before_mb=round(memory_before["VmRSS"] / 2**20, 1),
        rss_after_mb=round(memory_after["VmRSS"] / 2**20, 1),
        peak_rss_mb=round(memory_after["VmHWM"] / 2**20, 1),
        rss_growth_mb=round((memory_after["VmRSS"] - memory_before["VmRSS"]) / 2**20, 1),
        peak_growth_mb=round((memory_after["VmHWM"] - memory_before["VmRSS"]) / 2**20, 1),
        forged_results_delivered=len(forged_seen),
        rogue_job_result=results_of(owner, [rogue_job]).get(rogue_job, {}).get("type"),
        deaf_client_cut_off=deaf_cut,
    )
    with lab.cond:
        figures.notes.update(
            strays_dropped=backend.count("not running: dropped"),
            protocol_errors_logged=backend.count("protocol error"),
            undecodable_logged=backend.count("undecodable"),
            never_reading_client_dropped=backend.count("does not read") > 0,
            internal_errors_logged=backend.count("Traceback") + backend.count("internal error"),
        )
    return figures


def zmq_never_reads(lab: Lab, jobs: int = 2000, result_kb: int = 100, honest: int = 200) -> Figures:
    """A ZeroMQ client submits ``jobs`` jobs with large results and never reads (measurement only).

    ZeroMQ gives no way to see that a peer does not read: the ROUTER queues
    what is sent to it up to its high-water mark, counted in messages, not
    bytes.  This measures what that costs the backend; an honest client's
    jobs run meanwhile and are counted.
    """
    import zmq

    from inginious_tx.messages import ClientHello, ClientNewJob

    t0 = time.monotonic()
    clients, agents = lab.endpoints("clients", ["zmq"]), lab.endpoints("agents", ["zmq"])
    backend = lab.backend(clients, agents)
    lab.agent("A", agents.connect["zmq"], slots=8)
    lab.agent("big", agents.connect["zmq"], slots=8, envs=["big"], options=[f"text={'x' * (result_kb * 1000)}"])
    client = lab.client("client", clients.connect["zmq"])
    lab.wait(lambda: lab.registered(backend, "A")() and lab.registered(backend, "big")(), 20, "the agents")
    lab.wait(client.ready(), 20, "the client")
    before = backend.memory()
    ctx = zmq.Context()
    deaf = ctx.socket(zmq.DEALER)
    deaf.setsockopt(zmq.LINGER, 0)
    deaf.setsockopt(zmq.RCVHWM, 1)
    try:
        deaf.connect(clients.connect["zmq"][len("zmq:") :])
        deaf.send(ClientHello("deaf").dump())
        for i in range(jobs):
            deaf.send(ClientNewJob(f"deaf-{i}", 0, "c", "t", {}, "big", False, 10, None, 100, False, "x", None).dump())
        ids = client.submit(job_ids("honest", honest), [delay(0.01)])
        lab.wait(client.answered(ids), 60, "the honest jobs", fail=False)
        # every result has been sent towards the deaf client once the queue is empty
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snapshot = client.queue()
            if not snapshot["running"] and not snapshot["waiting"]:
                break
        after = backend.memory()
    finally:
        deaf.close()
        ctx.term()
    figures = Figures("ZeroMQ client never reads").add(client)
    figures.seconds = time.monotonic() - t0
    figures.notes.update(
        deaf_jobs=jobs,
        result_kb=result_kb,
        rss_before_mb=round(before["VmRSS"] / 2**20, 1),
        rss_after_mb=round(after["VmRSS"] / 2**20, 1),
        peak_growth_mb=round((after["VmHWM"] - before["VmRSS"]) / 2**20, 1),
        backend_alive=backend.alive,
    )
    return figures


# ---------------------------------------------------------------------------
# Docker engine
# ---------------------------------------------------------------------------

DOCKERD_LOG = os.environ.get("DOCKERD_LOG", "/var/log/dockerd.log")


def dockerd_pid() -> Optional[int]:
    """The pid of the local ``dockerd``, or None."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "dockerd":
                        return int(entry)
            except OSError:
                continue
    return None


def dockerd_command(pid: int) -> List[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [part.decode() for part in f.read().split(b"\0") if part]


def docker_answers(timeout: float = 10.0) -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def stop_dockerd(pid: int, timeout: float = 60.0) -> None:
    """SIGTERM the engine and wait (on a pidfd, no polling) until it has exited."""
    fd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGTERM)
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise Stuck(f"dockerd (pid {pid}) did not stop within {timeout:g} s")
    finally:
        os.close(fd)


def start_dockerd(command: Sequence[str], timeout: float = 60.0) -> None:
    """Start the engine the way ``.ci/docker-setup.sh`` does and wait until ``docker info`` works."""
    # the same shell line as the setup script: its own session, output appended to the log
    subprocess.run(
        ["sh", "-c", 'setsid "$@" >>"$LOG" 2>&1 </dev/null &', "sh", *command],
        env={**os.environ, "LOG": DOCKERD_LOG},
        check=True,
    )
    deadline = time.monotonic() + timeout
    while not docker_answers():
        if time.monotonic() > deadline:
            raise Stuck(f"docker info still fails {timeout:g} s after restarting {' '.join(command)}")
        # No event tells when the engine's API is up: poll, at most twice a second.
        time.sleep(0.5)


def docker_outage(lab: Lab, image: str, jobs: int = 4) -> Figures:
    """Stop the Docker engine under a running Docker agent, then start it again.

    Jobs submitted while it is down must be answered ``crash`` with a text
    that names the engine; the agent must stay up, and jobs must succeed
    again once the engine is back.  The engine is always restarted (with the
    command line it had) before this returns.
    """
    t0 = time.monotonic()
    tasks = os.path.join(lab.root, "tasks")
    task = os.path.join(tasks, "fault", "task")
    os.makedirs(task)
    with open(os.path.join(task, "run"), "w") as f:
        f.write("#!/bin/sh\nfeedback-result success\n")
    os.chmod(os.path.join(task, "run"), 0o755)
    clients, agents = lab.endpoints("clients", ["zmq"]), lab.endpoints("agents", ["tcp"])
    backend = lab.backend(clients, agents)
    agent = lab.agent(
        "docker",
        agents.connect["tcp"],
        kind="docker",
        slots=2,
        envs=[f"default={image}"],
        options=[f"work_dir={lab.root}/work", "poll_interval=0.2"],
        extra=["--tasks", tasks],
    )
    client = lab.client("client", clients.connect["zmq"], connect_timeout=60)
    lab.wait(lab.registered(backend, "docker"), 60, "the docker agent")
    lab.wait(client.ready(), 20, "the client")
    before = client.submit(job_ids("before", jobs))
    lab.wait(client.answered(before), 120, "jobs before the outage", fail=False)

    pid = dockerd_pid()
    if pid is None:
        raise Stuck("no local dockerd process to stop")
    command = dockerd_command(pid)
    try:
        stop_dockerd(pid)
        down = client.submit(job_ids("down", jobs))
        lab.wait(client.answered(down), 60, "jobs during the outage", fail=False)
        agent_up_during = agent.alive
    finally:
        if not docker_answers():
            start_dockerd(command)
    after = client.submit(job_ids("after", jobs))
    lab.wait(client.answered(after), 120, "jobs after the outage", fail=False)
    figures = Figures("docker engine outage").add(client)
    figures.seconds = time.monotonic() - t0
    figures.notes.update(
        before=[r["type"] for r in results_of(client, before).values()],
        during=[(r["type"], r["text"]) for r in results_of(client, down).values()],
        after=[r["type"] for r in results_of(client, after).values()],
        agent_alive_during=agent_up_during,
        agent_alive_after=agent.alive,
        dockerd_command=command,
    )
    return figures


# ---------------------------------------------------------------------------
# The client process
# ---------------------------------------------------------------------------


def client_main(argv: Sequence[str]) -> None:
    """A client that obeys JSON commands on stdin and reports JSON events on stdout.

    Commands: ``submit`` (ids, inputs, env, course, task), ``kill`` (ids),
    ``queue``, ``stop``.  Events (``ev``): ``ready`` (the backend answered our
    hello), ``envs``, ``pong``, ``wire`` (a BackendJobDone arrived, duplicates
    included), ``started``, ``result`` (a job's one result, from the client
    library), ``queue``, ``error``.  Logs go to stderr.  The process ends when
    stdin closes.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="faults_support.py client")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--name", default="fault-client")
    parser.add_argument("--ping-interval", type=float, default=0.5)
    parser.add_argument("--connect-timeout", type=float, default=20.0)
    args = parser.parse_args(argv)

    from twisted.internet import reactor, stdio
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.protocols.basic import LineReceiver

    from inginious_tx.client import Client

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    def emit(**event: Any) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    class RecordingClient(Client):
        """The library's client, also reporting every BackendJobDone as it arrives."""

        def backend_job_done(self, peer: Any, message: Any) -> None:
            emit(ev="wire", id=message.job_id, type=message.result[0])
            super().backend_job_done(peer, message)

        def pong(self, peer: Any, message: Any) -> None:
            super().pong(peer, message)
            emit(ev="pong")

        def backend_update_containers(self, peer: Any, message: Any) -> None:
            was = self.connected
            super().backend_update_containers(peer, message)
            if self.connected:
                emit(ev="ready" if not was else "envs", envs=list(self.environments))

    client = RecordingClient(
        reactor, args.endpoint, args.name, ping_interval=args.ping_interval, connect_timeout=args.connect_timeout
    )

    def report(result: Any) -> None:
        emit(ev="result", id=result.job_id, type=result.result, text=result.text[:500], local=result.local)

    def submit(cmd: Dict[str, Any]) -> None:
        inputs = cmd.get("inputs") or [{}]
        for i, job_id in enumerate(cmd["ids"]):
            d = client.new_job(
                cmd.get("course", "fault"),
                cmd.get("task", "task"),
                dict(inputs[i % len(inputs)]),
                cmd.get("env", "default"),
                job_id=job_id,
                on_started=lambda j: emit(ev="started", id=j),
            )
            d.addCallback(report)
            d.addErrback(lambda f, j=job_id: emit(ev="error", id=j, error=f.getErrorMessage()))

    def queue() -> None:
        d = client.get_queue()
        d.addCallback(
            lambda s: emit(
                ev="queue",
                running=[[r.job_id, r.agent_name] for r in s.running],
                waiting=[w.job_id for w in s.waiting],
            )
        )
        d.addErrback(lambda f: emit(ev="queue-error", error=f.getErrorMessage()))

    def stop() -> None:
        if reactor.running:
            client.stop().addBoth(lambda _: reactor.stop())

    class Commands(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 64 * 1024 * 1024

        def lineReceived(self, line: bytes) -> None:
            try:
                cmd = json.loads(line)
                name = cmd["cmd"]
                if name == "submit":
                    submit(cmd)
                elif name == "kill":
                    for job_id in cmd["ids"]:
                        client.kill_job(job_id)
                elif name == "queue":
                    queue()
                elif name == "stop":
                    stop()
                else:
                    raise ValueError(f"unknown command {name!r}")
            except Exception as e:
                emit(ev="error", error=repr(e))

        def connectionLost(self, reason: Any = None) -> None:
            stop()

    reactor.callWhenRunning(client.start)
    stdio.StandardIO(Commands())
    reactor.run()


if __name__ == "__main__":
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # die with the test that started us
    if sys.argv[1:2] != ["client"]:
        sys.exit("usage: faults_support.py client --endpoint ENDPOINT [options]")
    client_main(sys.argv[2:])
