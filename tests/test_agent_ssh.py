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

    def __init__(self, backend: Any, keys_dir: str, max_time: float = 600, **agent_kwargs: Any) -> None:
        reactor = _reactor()
        self.backend = backend
        self.agent_kwargs = agent_kwargs
        self.server = SSHDebugServer(reactor, keys_dir, port=0, interface="127.0.0.1", max_time=max_time)
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
