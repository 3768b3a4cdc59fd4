"""SSH debug of running jobs, with the real OpenSSH client (``ssh`` + ``sshpass``).

An :class:`Agent` with a Docker or a local backend and an
:class:`SSHDebugServer` gets ``debug="ssh"`` jobs over an in-memory link; the
test logs in with the credentials of the ``AgentJobSSHDebug`` it sends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any, List, Optional

import pytest
import pytest_twisted
from docker_support import TEST_IMAGE, containers_labelled, make_task, require_docker
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from inginious_tx.agent.core import Agent
from inginious_tx.agent.debug import IDebugSandbox, ISSHDebugBackend
from inginious_tx.agent.docker import LABEL_AGENT, DockerBackend
from inginious_tx.agent.limits import JobMaxima
from inginious_tx.agent.local import LocalBackend
from inginious_tx.agent.result import AgentConfig
from inginious_tx.agent.ssh import SSHDebugServer, load_host_key
from inginious_tx.agent.ssh_sandboxes import DockerSandbox
from inginious_tx.messages import AgentHello, AgentJobDone, AgentJobSSHDebug, BackendNewJob, v09
from inginious_tx.testing import MemoryTransport, RecordingSink

# The job waits for the debugging user to create student/done (at most 30 s).
WAITING = r"""
echo "hello from the job" > student/seen.txt
i=0
while [ ! -e student/done ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
feedback-result success
feedback-msg -m "done after $i"
"""


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def require_ssh_client() -> None:
    missing = [c for c in ("ssh", "sshpass") if shutil.which(c) is None]
    if not missing:
        return
    why = f"{' and '.join(missing)} missing (apt-get install openssh-client sshpass; .ci/setup-runsc.sh)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {why}", pytrace=False)
    pytest.skip(why)


def ssh(
    port: int, password: str, *args: str, user: str = "worker", stdin: bytes = b"", tty: bool = False
) -> subprocess.CompletedProcess:
    """Run the OpenSSH client against 127.0.0.1:port (blocking)."""
    argv = [
        "sshpass", "-p", password, "ssh", "-p", str(port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
        "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10",
        *(["-tt"] if tty else ["-T"]),
        f"{user}@127.0.0.1", *args,
    ]  # fmt: skip
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60)


def _job(job_id: str, run_cmd: str, debug: Optional[str] = "ssh", hard: Optional[int] = 60) -> BackendNewJob:
    return BackendNewJob((b"ssh-client", job_id), "course", "task", {}, "default", False, 30, hard, 64, debug, run_cmd)


class _Rig:
    """An agent with an SSH server, fed through an in-memory backend link."""

    def __init__(
        self, backend: Any, keys_dir: str, max_time: float = 600, server_kwargs: Optional[dict] = None,
        **agent_kwargs: Any,
    ) -> None:  # fmt: skip
        reactor = _reactor()
        self.backend = backend
        self.agent_kwargs = agent_kwargs
        self.server = SSHDebugServer(
            reactor, keys_dir, port=0, interface="127.0.0.1", max_time=max_time, **(server_kwargs or {})
        )
        self.mem = MemoryTransport(clock=reactor, autopump=True)
        self.sink = RecordingSink()
        self.agent: Optional[Agent] = None

    async def start(self, until: Any) -> None:
        reactor = _reactor()
        await self.mem.listen(reactor, "mem:agents", self.sink)
        self.agent = Agent(
            reactor, self.backend, "ssh-agent", 4, "mem:agents", transport=self.mem, silence_timeout=120,
            ssh_debug=self.server, maxima=JobMaxima(allow_run_cmd=True), **self.agent_kwargs,
        )  # fmt: skip
        self.agent.startService()
        hello = v09.AgentHello if self.agent_kwargs.get("dialect") == "0.9" else AgentHello
        await until(lambda: self.of(hello), 15, "the agent's hello")

    def of(self, cls: type) -> List[Any]:
        return [m for _, m in self.sink.messages if isinstance(m, cls)]

    def send(self, message: Any) -> None:
        self.sink.connected[-1].send(message)

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.stopService()


@pytest.fixture(params=["docker", "local"])
def rig(request: Any, tmp_path: Any) -> Any:
    require_ssh_client()
    tasks = str(tmp_path / "tasks")
    make_task(tasks, "course", "task", "feedback-result success\n")
    work = str(tmp_path / "work")
    if request.param == "docker":
        require_docker()
        config = AgentConfig(tasks, [f"default={TEST_IMAGE}"], 4, {"work_dir": work, "poll_interval": 0.2})
        backend: Any = DockerBackend(_reactor(), config)
    else:
        backend = LocalBackend(_reactor(), AgentConfig(tasks, ["default"], 4, {"work_dir": work}))
    r = _Rig(backend, str(tmp_path / "keys"))
    r.kind = request.param  # type: ignore[attr-defined]
    yield r
    if isinstance(backend, DockerBackend):
        assert containers_labelled(LABEL_AGENT, backend.instance_id) == []


def test_interfaces(tmp_path: Any) -> None:
    tasks = str(tmp_path)
    docker = DockerBackend(_reactor(), AgentConfig(tasks, ["d=img"], 1, {}))
    local = LocalBackend(_reactor(), AgentConfig(tasks, ["default"], 1, {}))
    assert verifyObject(ISSHDebugBackend, docker) and verifyObject(ISSHDebugBackend, local)
    assert verifyObject(IDebugSandbox, DockerSandbox("cid", "1:1", "/job/task"))
    spec = DockerSandbox("cid", "4242:4242", "/job/task", "unix:///x.sock").command("ls", False, "xterm")
    assert spec.argv[1:] == [
        "-H", "unix:///x.sock", "exec", "-i", "-u", "4242:4242", "-w", "/job/task", "-e", "TERM=xterm",
        "cid", "/bin/sh", "-c", "ls",
    ]  # fmt: skip


def test_host_key_persists(tmp_path: Any) -> None:
    keys_dir = str(tmp_path / "keys")
    first = load_host_key(keys_dir)
    assert oct(os.stat(os.path.join(keys_dir, "ssh_host_ed25519_key")).st_mode & 0o777) == "0o600"
    assert load_host_key(keys_dir).fingerprint() == first.fingerprint()
    assert first.sshType() == b"ssh-ed25519"


@pytest_twisted.ensureDeferred
async def test_ssh_debug_session(rig: _Rig, until: Any) -> None:
    await rig.start(until)
    try:
        rig.send(_job("dbg-1", WAITING))
        await until(lambda: rig.of(AgentJobSSHDebug) or rig.of(AgentJobDone), 30, "the ssh debug message")
        assert rig.of(AgentJobSSHDebug), [m for _, m in rig.sink.messages]
        dbg = rig.of(AgentJobSSHDebug)[0]
        assert dbg.job_id == (b"ssh-client", "dbg-1")
        assert (dbg.host, dbg.port) == ("127.0.0.1", rig.server.port)
        assert len(dbg.password) >= 32

        # a command: sees the job's student folder, runs in its task folder
        cmd = 'until [ -e student/seen.txt ]; do sleep 0.1; done; cat "$INGINIOUS_STUDENT/seen.txt"; pwd'
        cmd += "; echo $INGINIOUS_COURSE_ID"
        r = await deferToThread(ssh, dbg.port, dbg.password, cmd)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().splitlines()
        assert lines[0] == "hello from the job"
        assert lines[1].endswith("/task") and lines[2] == "course"
        if rig.kind == "docker":  # type: ignore[attr-defined]
            assert lines[1] == "/task", "a session starts where the grader runs (INGInious' /task)"
        r = await deferToThread(ssh, dbg.port, dbg.password, "id -u")
        if rig.kind == "docker":  # type: ignore[attr-defined]
            assert r.stdout.decode().strip() == str(rig.backend._user.split(":")[0])
        elif rig.backend.job_user:  # the job's user, not the agent's
            assert r.stdout.decode().strip() == str(rig.backend.job_user[0])

        # a terminal: an interactive shell on a pty
        r = await deferToThread(ssh, dbg.port, dbg.password, stdin=b"tty; echo $((6 * 7)); exit\n", tty=True)
        out = r.stdout.decode("utf-8", "replace")
        assert "/dev/pts/" in out and "42" in out, (out, r.stderr, r.returncode)

        # wrong password, wrong user, forbidden subsystem
        bad = await deferToThread(ssh, dbg.port, "not-the-password", "true")
        assert bad.returncode != 0 and b"Permission denied" in bad.stderr + bad.stdout, bad
        bad_user = await deferToThread(ssh, dbg.port, dbg.password, "true", user="root")
        assert bad_user.returncode != 0
        sftp = await deferToThread(ssh, dbg.port, dbg.password, "-s", "sftp")
        assert sftp.returncode != 0

        # the debugging user lets the job end: its result arrives, once
        r = await deferToThread(ssh, dbg.port, dbg.password, "touch student/done")
        assert r.returncode == 0, r.stderr
        await until(lambda: rig.of(AgentJobDone), 30, "the job's result")
        done = rig.of(AgentJobDone)
        assert done[0].result[0] == "success", done[0].result

        # after the job: refused
        late = await deferToThread(ssh, dbg.port, dbg.password, "true")
        assert late.returncode != 0 and b"Permission denied" in late.stderr + late.stdout
        assert len(rig.of(AgentJobDone)) == 1
        assert len(rig.of(AgentJobSSHDebug)) == 1
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_sessions_end_with_the_job(rig: _Rig, until: Any) -> None:
    """An open session is closed when its job ends (here: killed by the backend)."""
    await rig.start(until)
    try:
        rig.send(_job("dbg-2", WAITING))
        await until(lambda: rig.of(AgentJobSSHDebug), 30, "the ssh debug message")
        dbg = rig.of(AgentJobSSHDebug)[0]
        started = time.monotonic()
        session = deferToThread(ssh, dbg.port, dbg.password, "echo in; sleep 120")
        await until(lambda: any(s.process for j in rig.server._jobs.values() for s in j.sessions), 20, "the session")
        from inginious_tx.messages import BackendKillJob

        rig.send(BackendKillJob((b"ssh-client", "dbg-2")))
        r = await session
        assert r.returncode != 0
        assert time.monotonic() - started < 60
        await until(lambda: rig.of(AgentJobDone), 30, "the job's result")
        assert [m.result[0] for m in rig.of(AgentJobDone)] == ["killed"]
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_ssh_debug_in_the_09_dialect(tmp_path: Any, until: Any) -> None:
    """INGInious 0.9: the job comes as a 0.9 message, the credentials go back with their user."""
    require_ssh_client()
    tasks = str(tmp_path / "tasks")
    make_task(tasks, "course", "task", WAITING)
    backend = LocalBackend(_reactor(), AgentConfig(tasks, ["default"], 2, {"work_dir": str(tmp_path / "w")}))
    rig = _Rig(backend, str(tmp_path / "keys"), dialect="0.9", environment_type="local")
    await rig.start(until)
    try:
        limits = {"limits": {"time": 30, "hard_time": 60, "memory": 64}}
        rig.send(v09.BackendNewJob("uuid-ssh", "course", "task", {}, {}, "local", "default", limits, "ssh"))
        await until(lambda: rig.of(v09.AgentJobSSHDebug), 30, "the ssh debug message")
        [dbg] = rig.of(v09.AgentJobSSHDebug)
        assert (dbg.job_id, dbg.user, dbg.port) == ("uuid-ssh", "worker", rig.server.port)
        r = await deferToThread(ssh, dbg.port, dbg.password, "touch student/done", user=dbg.user)
        assert r.returncode == 0, r.stderr
        await until(lambda: rig.of(v09.AgentJobDone), 30, "the job's result")
        assert [m.result[0] for m in rig.of(v09.AgentJobDone)] == ["success"]
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_ssh_job_time_is_capped(tmp_path: Any, until: Any) -> None:
    """An ssh job's wall-clock limit is capped at the server's max_time."""
    require_ssh_client()
    tasks = str(tmp_path / "tasks")
    make_task(tasks, "course", "task", "feedback-result success\n")
    backend = LocalBackend(_reactor(), AgentConfig(tasks, ["default"], 2, {"work_dir": str(tmp_path / "w")}))
    rig = _Rig(backend, str(tmp_path / "keys"), max_time=1)
    await rig.start(until)
    try:
        started = time.monotonic()
        rig.send(_job("long", "sleep 60", hard=100))
        await until(lambda: rig.of(AgentJobDone), 30, "the job's result")
        assert rig.of(AgentJobDone)[0].result[0] == "timeout"
        assert time.monotonic() - started < 20
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_ssh_jobs_refused_without_server(tmp_path: Any, until: Any) -> None:
    tasks = str(tmp_path / "tasks")
    make_task(tasks, "course", "task", "feedback-result success\n")
    backend = LocalBackend(_reactor(), AgentConfig(tasks, ["default"], 2, {"work_dir": str(tmp_path / "w")}))
    reactor = _reactor()
    mem = MemoryTransport(clock=reactor, autopump=True)
    sink = RecordingSink()
    await mem.listen(reactor, "mem:agents", sink)
    agent = Agent(reactor, backend, "a", 1, "mem:agents", transport=mem)
    agent.startService()
    try:
        await until(lambda: sink.connected, 10, "the link")
        sink.connected[-1].send(_job("nossh", "true"))
        await until(lambda: [m for _, m in sink.messages if isinstance(m, AgentJobDone)], 10, "the refusal")
        done = [m for _, m in sink.messages if isinstance(m, AgentJobDone)][0]
        assert done.result == ("crash", "ssh debug is not supported by this agent")
    finally:
        await agent.stopService()


def test_command_line_options(tmp_path: Any) -> None:
    from twisted.python import usage

    from inginious_tx.agent.ssh_options import ssh_server
    from inginious_tx.agent.tap import Options

    opts = Options()
    opts.parseOptions(["--backend", "tcp:127.0.0.1:1", "--kind", "mock"])
    assert ssh_server(_reactor(), opts) is None
    opts = Options()
    keys = str(tmp_path / "k")
    opts.parseOptions(
        ["--backend", "tcp:127.0.0.1:1", "--kind", "mock", "--ssh-port", "2222", "--ssh-host", "grader.example.org",
         "--ssh-keys", keys, "--ssh-max-time", "60"]
    )  # fmt: skip
    server = ssh_server(_reactor(), opts)
    assert isinstance(server, SSHDebugServer)
    assert (server.port, server.host, server.interface, server.keys_dir, server.max_time) == (
        2222, "grader.example.org", "127.0.0.1", keys, 60.0
    )  # fmt: skip
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--backend", "tcp:127.0.0.1:1", "--ssh-port", "70000"])


def _pids_of_uid(uid: int) -> List[int]:
    """Live (not zombie) processes with ``uid`` among their uids."""
    from inginious_tx.agent.local import _uids_of

    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            state, uids = _uids_of(name)
            if state not in (None, "Z", "X") and uid in uids:
                found.append(int(name))
    return found


def _local_rig(tmp_path: Any, **server_kwargs: Any) -> _Rig:
    require_ssh_client()
    tasks = str(tmp_path / "tasks")
    make_task(tasks, "course", "task", WAITING)
    backend = LocalBackend(_reactor(), AgentConfig(tasks, ["default"], 2, {"work_dir": str(tmp_path / "w")}))
    return _Rig(backend, str(tmp_path / "keys"), server_kwargs=server_kwargs)


@pytest_twisted.ensureDeferred
async def test_local_session_is_inside_the_job(tmp_path: Any, until: Any) -> None:
    """Audit: a local session's ``nohup setsid`` process outlived its job and, with the next job's
    uid, rewrote that job's feedback.  The session now lives in the job's PID and network
    namespaces, and every process of the job's uids is killed when the job ends."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the local backend's per-job users need it", pytrace=False)
        pytest.skip("needs root (per-job users, PID namespaces)")
    rig = _local_rig(tmp_path)
    await rig.start(until)
    try:
        rig.send(_job("inside", WAITING))
        await until(lambda: rig.of(AgentJobSSHDebug), 30, "the ssh debug message")
        dbg = rig.of(AgentJobSSHDebug)[0]
        uid = rig.backend.job_user[0]  # the first job takes the first slot
        await until(lambda: _pids_of_uid(uid), 10, "the job's processes, as its own uid")
        # the session sees the job's processes only, and the job's network (loopback only)
        r = await deferToThread(ssh, dbg.port, dbg.password, "ls /proc | grep -c '^[0-9]'; cat /proc/net/dev")
        assert r.returncode == 0, r.stderr
        count, *net = r.stdout.decode().splitlines()
        host_procs = len([n for n in os.listdir("/proc") if n.isdigit()])
        assert int(count) < 20 < host_procs, (count, host_procs)
        ifaces = sorted(line.split(":")[0].strip() for line in net if ":" in line)
        with open("/proc/net/dev") as f:
            host_ifaces = sorted(line.split(":")[0].strip() for line in f if ":" in line)
        assert ifaces == ["lo"] and host_ifaces != ["lo"], (ifaces, host_ifaces)
        # a background process that leaves the session, as the audit's survivor did
        r = await deferToThread(
            ssh, dbg.port, dbg.password, "nohup setsid sh -c 'sleep 1234' >/dev/null 2>&1 & echo started"
        )
        assert r.returncode == 0 and b"started" in r.stdout, r
        # and one of the job's uid started some other way (here: by the test, as root)
        other = subprocess.Popen(["sleep", "1235"], user=uid, group=uid, start_new_session=True)
        await until(lambda: _pids_of_uid(uid) and other.pid in _pids_of_uid(uid), 10, "the strays")

        def sleepers() -> List[str]:
            found = []
            for pid in _pids_of_uid(uid):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        found.append(f.read().replace(b"\0", b" ").decode().strip())
                except OSError:
                    pass
            return [c for c in found if c.startswith("sleep 123")]

        assert sorted(sleepers()) == ["sleep 1234", "sleep 1235"]
        r = await deferToThread(ssh, dbg.port, dbg.password, "touch student/done")
        assert r.returncode == 0, r.stderr
        await until(lambda: rig.of(AgentJobDone), 30, "the job's result")
        assert rig.of(AgentJobDone)[0].result[0] == "success"
        await until(lambda: other.poll() is not None, 10, "the stray's end")
        assert other.returncode == -9
        assert _pids_of_uid(uid) == [] and sleepers() == []
    finally:
        await rig.stop()


def _held(port: int, n: int) -> List[Any]:
    """``n`` raw TCP connections that never log in, each having read the server's banner (blocking)."""
    import socket

    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert s.recv(100).startswith(b"SSH-2.0-")
        conns.append(s)
    return conns


def _closed_within(conn: Any, seconds: float) -> bool:
    """True if the server closes ``conn`` within ``seconds`` (blocking)."""
    conn.settimeout(seconds)
    try:
        while True:
            data = conn.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except OSError:
        return True  # reset


@pytest_twisted.ensureDeferred
async def test_connection_caps_and_login_deadline(tmp_path: Any, until: Any) -> None:
    """Audit: 21,000 idle connections took the agent's file descriptors.  Beyond the caps a
    connection is closed at once; one that does not log in is closed at the deadline; a real
    session still works."""
    import socket

    rig = _local_rig(tmp_path, max_connections=3, max_unauthenticated=2, login_timeout=1.5)
    await rig.start(until)
    try:
        port = rig.server.port
        started = time.monotonic()
        held = await deferToThread(_held, port, 2)
        assert rig.server.connections() == (2, 2)
        # over the cap of unauthenticated connections: closed at once, before any banner
        extra = await deferToThread(socket.create_connection, ("127.0.0.1", port), 10)
        assert await deferToThread(_closed_within, extra, 5)
        # the idle ones: closed at the login deadline
        for conn in held:
            assert await deferToThread(_closed_within, conn, 20)
        assert time.monotonic() - started >= 1.4
        await until(lambda: rig.server.connections() == (0, 0), 10, "the count back to 0")

        # a real session while the unauthenticated slots are full: still works
        rig.send(_job("caps", WAITING))
        await until(lambda: rig.of(AgentJobSSHDebug), 30, "the ssh debug message")
        dbg = rig.of(AgentJobSSHDebug)[0]
        session = deferToThread(ssh, dbg.port, dbg.password, "echo in; sleep 5; echo out")
        await until(lambda: rig.server.connections() == (1, 0), 20, "the logged-in session")
        held = await deferToThread(_held, port, 2)
        assert rig.server.connections() == (3, 2)
        # over the total cap now
        extra = await deferToThread(socket.create_connection, ("127.0.0.1", port), 10)
        assert await deferToThread(_closed_within, extra, 5)
        r = await session
        assert r.returncode == 0 and r.stdout.split() == [b"in", b"out"], r
        for conn in held:
            conn.close()
        r = await deferToThread(ssh, dbg.port, dbg.password, "touch student/done")
        assert r.returncode == 0, r.stderr
        await until(lambda: rig.of(AgentJobDone), 30, "the job's result")
        assert rig.of(AgentJobDone)[0].result[0] == "success"
    finally:
        await rig.stop()


def test_caps_options(tmp_path: Any) -> None:
    from twisted.python import usage

    from inginious_tx.agent.ssh_options import ssh_server
    from inginious_tx.agent.tap import Options

    opts = Options()
    opts.parseOptions(["--backend", "tcp:127.0.0.1:1", "--kind", "mock", "--ssh-port", "0"])
    server = ssh_server(_reactor(), opts)
    assert (server.max_connections, server.max_unauthenticated, server.login_timeout) == (64, 16, 20.0)
    opts = Options()
    opts.parseOptions(
        ["--backend", "tcp:127.0.0.1:1", "--kind", "mock", "--ssh-port", "0", "--ssh-max-connections", "5",
         "--ssh-max-unauthenticated", "2", "--ssh-login-timeout", "3"]
    )  # fmt: skip
    server = ssh_server(_reactor(), opts)
    assert (server.max_connections, server.max_unauthenticated, server.login_timeout) == (5, 2, 3.0)
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--backend", "tcp:127.0.0.1:1", "--ssh-port", "0", "--ssh-max-connections", "0"])
