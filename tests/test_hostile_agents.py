"""Hostile-peer suite, agent side: what a hostile student, client or agent tried (issue 10).

Each attack runs against real parts: ``twistd -n inginious-backend`` as a
process for the out-of-the-box backend, the real local and Docker agent
backends behind a real :class:`Agent` and backend over TCP, real Docker.

- an impostor agent finds no agent endpoint on the default backend, and one
  that says hello on the client endpoint gets no job;
- job code runs as a uid of its own (not root) on a root backend, with its
  limits capped and ``run_cmd``/network refused;
- a root local agent's job writing 300 MB in ``/tmp``, ``/var/tmp`` and
  ``/dev/shm`` fills only its own bounded disk and leaves nothing on the
  host; a job scanning ``/proc`` for another running job finds nothing and
  cannot read or write its folder; concurrent jobs, and a job and its
  run_student commands, have different uids and ``/tmp``;
- a job asking for 1 TB of memory, the network and a 2^31-1 s wall time gets
  the operator's maxima (inspected on the container during the job);
- a 1,200-deep folder chain with a file at the bottom in ``tmp/`` and in
  ``archive/`` is answered correctly and leaves nothing on disk;
- a job writing 3 GB is stopped at its disk bound (``overflow``) at once and
  the agent's disk is untouched;
- names with a trailing newline are refused.
"""

from __future__ import annotations

import io
import os
import re
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import pytest
import pytest_twisted
from docker_support import (
    TEST_IMAGE,
    containers_labelled,
    docker_client,
    remove_containers,
    require_docker,
    until_left_clean,
)
from subprocess_env import child_env
from test_cli_integration import _Collect
from twisted.internet import threads

from inginious_tx.agent.core import Agent
from inginious_tx.agent.docker import LABEL_AGENT, DockerBackend
from inginious_tx.agent.filetree import archive_tree, chown_tree, remove_tree
from inginious_tx.agent.job_folder import helpers_dir
from inginious_tx.agent.limits import JobMaxima
from inginious_tx.agent.local import LocalBackend
from inginious_tx.agent.mock import MockBackend
from inginious_tx.agent.result import AgentConfig
from inginious_tx.agent.task import ID_PATTERN, TaskError, collect_result, prepare_job, remove_job
from inginious_tx.backend.service import BackendService
from inginious_tx.client import connect_client
from inginious_tx.messages import BackendNewJob

BIN = Path(sys.executable).parent
DEPTH = 1200

#: the tasks of the attacks (POSIX sh: run by busybox in Docker, by the host's sh locally)
TASKS = {
    "whoami": """\
feedback-msg -m "uid=$(id -u) time=$INGINIOUS_TIME_LIMIT mem=$INGINIOUS_MEM_LIMIT net=$INGINIOUS_NETWORK"
feedback-result success
""",
    "deep": f"""\
for where in "$INGINIOUS_JOB/tmp" "$INGINIOUS_ARCHIVE"; do
  cd "$where" || exit 1
  i=0
  while [ $i -lt {DEPTH} ]; do mkdir d && cd d || exit 1; i=$((i+1)); done
  echo bottom > file
  dd if=/dev/zero of=big bs=1024 count=64 2>/dev/null
  ln -s /etc/passwd link
done
feedback-result success
""",
    "bigfile": """\
dd if=/dev/zero of="$INGINIOUS_JOB/tmp/big" bs=1M count=3072 2>&1
feedback-msg -m "wrote $(wc -c < "$INGINIOUS_JOB/tmp/big")"
feedback-result success
""",
    "sleep": """\
sleep 60
feedback-result success
""",
    # 100 MB each in the host's shared temporary folders, with a marker the test looks for
    "tmpwrite": """\
tag=$(getinput tag)
for d in /tmp /var/tmp /dev/shm; do echo mark > "$d/$tag" || exit 1; done
for d in /tmp /var/tmp /dev/shm; do dd if=/dev/zero of="$d/$tag.big" bs=1M count=100 2>/dev/null; done
feedback-msg -m "uid=$(id -u)"
feedback-result success
""",
    # a grader and its student: each its own user and /tmp
    "tmpshare": """\
echo secret > /tmp/grader-file
out=$(run_student sh -c 'id -u; cat /tmp/grader-file 2>/dev/null || echo hidden
echo x > /tmp/student-file && echo wrote' 2>&1)
[ -e /tmp/student-file ] && leak=yes || leak=no
feedback-msg -m "grader=$(id -u) student=$(echo $out) leak=$leak"
feedback-result success
""",
    # a job that waits (for the test's go) with a secret in its input
    "victim": """\
touch "$INGINIOUS_JOB/tmp/started"
while [ ! -e "$INGINIOUS_JOB/tmp/go" ]; do sleep 0.05; done
feedback-msg -m "victim uid=$(id -u)"
feedback-result success
""",
    # another job scanning /proc for a job's environment, then reading and writing its folder
    "snoop": """\
me=$INGINIOUS_JOB
victim=$(getinput victim)
seen=0; procs=0; read=no; wrote=no; killed=no
for e in /proc/[0-9]*/environ; do
  procs=$((procs+1))
  j=$(tr '\\0' '\\n' < "$e" 2>/dev/null | sed -n 's/^INGINIOUS_JOB=//p')
  if [ -n "$j" ] && [ "$j" != "$me" ]; then
    seen=$((seen+1)); victim=$j
    p=${e%/environ}; kill -0 "${p#/proc/}" 2>/dev/null && killed=yes
  fi
done
cat "$victim/input.json" > /dev/null 2>&1 && read=yes
echo 100 > "$victim/feedback/grade" 2>/dev/null && wrote=yes
ls "$victim/tmp" > /dev/null 2>&1 && read=yes
feedback-msg -m "uid=$(id -u) seen=$seen read=$read wrote=$wrote signal=$killed procs=$procs"
feedback-result success
""",
}


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: Any) -> str:
    root = tmp_path_factory.mktemp("hostile-tasks")
    for name, body in TASKS.items():
        task = root / "hostile" / name
        task.mkdir(parents=True)
        (task / "run").write_text("#!/bin/sh\n" + body)
        (task / "run").chmod(0o755)
    return str(root)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening_ports(pid: int) -> Set[int]:
    """TCP ports the process ``pid`` listens on (from its socket descriptors and /proc/net)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _job_mounts(under: str) -> List[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(under)]


def _archive_names(archive: bytes) -> Dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def _check_deep_archive(archive: Optional[bytes]) -> None:
    assert archive is not None
    members = _archive_names(archive)
    bottom = "/".join(["d"] * DEPTH)
    assert members[f"{bottom}/file"].size == 7 and members[f"{bottom}/big"].size == 64 << 10
    link = members[f"{bottom}/link"]
    assert link.issym() and link.linkname == "/etc/passwd"  # kept as a link, never followed


def _root_only() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: these attacks need a root agent")
        pytest.skip("needs root (a root agent: job user, tmpfs job folders)")


# -- the out-of-the-box backend, as a process ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_default_backend_has_no_agent_endpoint_and_runs_jobs_unprivileged(
    tasks_dir: str, short_tmp: str, closers: list, until: Any, within: Any
) -> None:
    """Impostor agent, job code's uid, capped limits, refused run_cmd and network, deep tree, 3 GB file."""
    _root_only()
    reactor = _reactor()
    port = _free_port()
    endpoint = f"zmq:tcp://127.0.0.1:{port}"
    twistd = _Collect()
    run_twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    argv = [str(BIN / "twistd")] if (BIN / "twistd").exists() else [sys.executable, "-c", run_twistd]
    argv += ["-n", "--pidfile=", "inginious-backend", "--clients", endpoint, "--tasks", tasks_dir]
    process = reactor.spawnProcess(twistd, argv[0], argv, env=child_env(), path=short_tmp)
    await within(twistd.started, 10)
    pid = process.pid

    def kill() -> None:
        if process.pid is not None:
            process.signalProcess("KILL")

    closers.append(kill)
    await until(lambda: b"backend ready" in b"".join(twistd.out + twistd.err), 20, "the backend to listen")
    log = b"".join(twistd.out + twistd.err).decode()
    assert "agents on []" in log, log
    # the only thing listening is the client endpoint: no agent endpoint for an impostor
    assert _listening_ports(pid) == {port}

    # an impostor agent that says hello where it can (the client endpoint) gets nothing
    impostor = Agent(
        reactor, MockBackend(reactor, AgentConfig(options={"result": "success", "grade": "100"})), "evil", 4, endpoint
    )
    impostor.startService()
    closers.append(impostor.stopService)

    client = connect_client(reactor, endpoint, "student")
    closers.append(client.stop)
    who = await within(client.new_job("hostile", "whoami", {}, time_limit=0, mem_limit=10**6), 30)
    assert who.result == "success", who
    # job code is not root; the limits it asked for (none, 1 TB) were capped to the agent's maxima
    assert who.text.strip() == "uid=64000 time=300 mem=1024 net=0", who.text  # the first job uid
    assert impostor.busy == 0 and not impostor._jobs  # the impostor never got a job

    cmd = await within(client.new_job("hostile", "whoami", {}, run_cmd="id > /tmp/pwned"), 30)
    assert cmd.result == "crash" and "run_cmd" in cmd.text, cmd
    net = await within(client.new_job("hostile", "whoami", {}, enable_network=True), 30)
    assert net.result == "crash" and "network" in net.text, net

    work = f"/tmp/inginious-tx-local-{pid}-"
    deep = await within(client.new_job("hostile", "deep", {}), 60)
    assert deep.result == "success", deep
    _check_deep_archive(deep.archive)
    big = await within(client.new_job("hostile", "bigfile", {}, mem_limit=1024), 60)
    assert big.result == "overflow" and "disk space of 256 MB" in big.text, big
    assert _job_mounts(work) == []
    for folder in Path("/tmp").glob(f"inginious-tx-local-{pid}-*"):
        assert list(folder.iterdir()) == [], "a job folder was left behind"
    assert "Traceback" not in b"".join(twistd.out + twistd.err).decode()


# -- every agent kind obeys the operator's maxima ---------------------------------------


async def _grader(closers: list, within: Any, until: Any, backend: Any, maxima: JobMaxima) -> Any:
    """A backend on TCP with one agent over ``backend``; returns a connected client."""
    reactor = _reactor()
    service = BackendService(reactor, ["tcp:0:interface=127.0.0.1"], ["tcp:0:interface=127.0.0.1"], shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    clients, agents = await within(service.ready)
    agent = Agent(reactor, backend, "target", 2, agents.connect_endpoint, maxima=maxima)
    agent.startService()
    closers.append(agent.stopService)
    await until(lambda: service.backend.agents, 20, "the agent")
    client = connect_client(reactor, clients.connect_endpoint, "attacker")
    closers.append(client.stop)
    return client


def _docker_backend(tasks_dir: str, work: str, **options: Any) -> DockerBackend:
    require_docker()
    opts: Dict[str, Any] = {"work_dir": work, "poll_interval": 0.2}
    opts.update(options)
    return DockerBackend(_reactor(), AgentConfig(tasks_dir, [f"default={TEST_IMAGE}"], 2, opts))


def _inspect(container_id: str) -> Dict[str, Any]:
    client = docker_client()
    try:
        return dict(client.api.inspect_container(container_id)["HostConfig"])
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_docker_agent_caps_a_1tb_request_and_refuses_the_network(
    tasks_dir: str, tmp_path: Path, closers: list, until: Any, within: Any
) -> None:
    backend = _docker_backend(tasks_dir, str(tmp_path / "work"))
    closers.append(
        lambda: threads.deferToThread(remove_containers, containers_labelled(LABEL_AGENT, backend.instance_id))
    )
    client = await _grader(closers, within, until, backend, JobMaxima(max_hard_time=3, max_memory=256))

    refused = await within(client.new_job("hostile", "sleep", {}, mem_limit=10**6, enable_network=True), 30)
    assert refused.result == "crash" and "network" in refused.text, refused
    assert containers_labelled(LABEL_AGENT, backend.instance_id) == []  # nothing was run

    d = client.new_job("hostile", "sleep", {}, mem_limit=10**6, time_limit=0, hard_time_limit=2**31 - 1)
    running: List[str] = []

    def container() -> bool:
        running[:] = containers_labelled(LABEL_AGENT, backend.instance_id)
        return bool(running)

    await until(container, 20, "the job's container")
    host = await threads.deferToThread(_inspect, running[0])
    assert host["Memory"] == 256 << 20 and host["MemorySwap"] == 256 << 20  # not 1 TB
    assert host["NetworkMode"] == "none"
    result = await within(d, 30)
    assert result.result == "timeout" and "more than 3 seconds" in result.text, result


@pytest_twisted.ensureDeferred
async def test_every_kind_refuses_run_cmd_and_caps_limits(within: Any) -> None:
    """The rule lives in the Agent: the mock backend (no limits of its own) sees capped jobs too."""
    from inginious_tx.testing import MemoryTransport, RecordingSink

    reactor = _reactor()
    seen: List[BackendNewJob] = []

    class Recording(MockBackend):
        def run(self, job: BackendNewJob) -> Any:
            seen.append(job)
            return super().run(job)

    maxima = JobMaxima(max_time=10, max_hard_time=20, max_memory=64)
    job = BackendNewJob((b"c", "j"), "c", "t", {}, "default", False, 2**31 - 1, 2**31 - 1, 10**6, False, None)
    assert maxima.capped(job).time_limit == 10 and maxima.capped(job).hard_time_limit == 20
    assert maxima.capped(job).mem_limit == 64 and maxima.capped(job).job_id == job.job_id
    unlimited = BackendNewJob((b"c", "j"), "c", "t", {}, "default", False, 0, None, 0, False, None)
    assert (maxima.capped(unlimited).time_limit, maxima.capped(unlimited).hard_time_limit) == (10, 20)
    small = BackendNewJob((b"c", "j"), "c", "t", {}, "default", False, 2, None, 32, False, None)
    assert maxima.capped(small) is small  # within the maxima: untouched (an unset hard limit stays 3 x 2 s)
    longer = BackendNewJob((b"c", "j"), "c", "t", {}, "default", False, 9, None, 32, False, None)
    assert maxima.capped(longer).hard_time_limit == 20  # 3 x 9 s would pass the maximum: set explicitly
    assert "run_cmd" in (maxima.refusal(BackendNewJob((b"c", "j"), "c", "t", {}, "default", False, 1, None, 1,
                                                      False, "id")) or "")  # fmt: skip
    assert (
        JobMaxima(allow_run_cmd=True, allow_network=True).refusal(
            BackendNewJob((b"c", "j"), "c", "t", {}, "default", True, 1, None, 1, False, "id")
        )
        is None
    )
    with pytest.raises(ValueError):
        JobMaxima(max_memory=0)
    # and through a real Agent
    backend_side = RecordingSink()
    transport = MemoryTransport(reactor, autopump=True)
    transport.listen(reactor, "mem:x", backend_side)
    agent = Agent(reactor, Recording(reactor, AgentConfig()), "a", 1, "mem:x", transport=transport, maxima=maxima)
    agent.startService()
    try:
        await within(_wait(lambda: backend_side.connected and backend_side.messages), 5)
        [peer] = backend_side.connected
        peer.send(job)
        await within(_wait(lambda: seen), 5)
        assert (seen[0].time_limit, seen[0].hard_time_limit, seen[0].mem_limit) == (10, 20, 64)
    finally:
        await agent.stopService()


def _wait(predicate: Any) -> Any:
    from conftest import _until

    return _until(predicate, 5.0, "condition")


# -- disk: deep trees and big files ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_docker_deep_folders_and_a_3gb_file_leave_nothing(
    tasks_dir: str, short_tmp: str, closers: list, until: Any, within: Any
) -> None:
    _root_only()
    work = os.path.join(short_tmp, "work")
    backend = _docker_backend(tasks_dir, work, job_disk_mb=64)
    closers.append(
        lambda: threads.deferToThread(remove_containers, containers_labelled(LABEL_AGENT, backend.instance_id))
    )
    client = await _grader(closers, within, until, backend, JobMaxima(max_memory=512))
    before = os.statvfs(short_tmp)
    deep = await within(client.new_job("hostile", "deep", {}, mem_limit=256), 60)
    assert deep.result == "success", deep
    _check_deep_archive(deep.archive)
    big = await within(client.new_job("hostile", "bigfile", {}, mem_limit=256), 60)
    assert big.result == "overflow" and "disk space of 64 MB" in big.text, big
    after = os.statvfs(short_tmp)
    assert (before.f_bavail - after.f_bavail) * after.f_frsize < 32 << 20  # the agent's disk did not take it
    # a job taken from the pool is removed after its answer; the pool's own folders wait for jobs to come
    await until_left_clean(work, backend.instance_id)


@pytest.mark.parametrize("disk_mb", [64, 0], ids=["tmpfs", "plain-folder"])
@pytest_twisted.ensureDeferred
async def test_local_deep_folders_and_a_3gb_file_leave_nothing(
    disk_mb: int, tasks_dir: str, short_tmp: str, closers: list, until: Any, within: Any
) -> None:
    """With a tmpfs (root) and without one (the iterative remover does the work)."""
    _root_only()
    work = os.path.join(short_tmp, "work")
    options = {"work_dir": work, "job_disk_mb": str(disk_mb), "max_file_size_mb": "64"}
    backend = LocalBackend(_reactor(), AgentConfig(tasks_dir, ["default"], 2, options))
    client = await _grader(closers, within, until, backend, JobMaxima())
    deep = await within(client.new_job("hostile", "deep", {}), 60)
    assert deep.result == "success", deep
    _check_deep_archive(deep.archive)
    big = await within(client.new_job("hostile", "bigfile", {}), 60)
    if disk_mb:
        assert big.result == "overflow" and "disk space of 64 MB" in big.text, big
    else:  # no tmpfs (an agent that is not root): only RLIMIT_FSIZE (max_file_size_mb) stops the file
        assert big.result == "success" and big.text.split() == ["wrote", str(64 << 20)], big
    assert os.listdir(work) == [] and _job_mounts(work) == []


# -- the remover and the archiver on their own ---------------------------------------------


def _chain(root: Path, depth: int) -> Path:
    """A ``depth``-deep chain of folders under ``root``, built with descriptors (deeper than PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(b"bottom")
    os.close(fd)
    return root


def test_remove_tree_is_iterative_and_follows_no_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    victim = tmp_path / "victim"
    victim.mkdir()
    _chain(victim, 5000)  # 10,000 characters of path: beyond PATH_MAX and any recursion limit
    (victim / "link").symlink_to(outside)
    (victim / "dirlink").symlink_to(outside, target_is_directory=True)
    closed = victim / "closed"
    (closed / "inner").mkdir(parents=True)
    (closed / "inner" / "f").write_text("x")
    (closed / "inner").chmod(0)
    closed.chmod(0)
    fifo = victim / "fifo"
    os.mkfifo(fifo)
    remove_tree(str(victim))
    assert not victim.exists()
    assert (outside / "keep").read_text() == "precious"
    remove_tree(str(victim))  # missing is fine


def test_archive_tree_is_iterative_keeps_links_and_bounds(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    try:
        _check_archive_tree(tmp_path, root)
    finally:
        remove_tree(str(root))  # pytest's own clean-up recurses: leave it no deep tree


def _check_archive_tree(tmp_path: Path, root: Path) -> None:
    _chain(root, 3000)
    (root / "link").symlink_to("/etc/shadow")
    if os.geteuid() == 0:  # the same walk hands trees over: links themselves, never their targets
        chown_tree(str(root), 4242, 4243)
        assert os.lstat(root / "link").st_uid == 4242 and os.stat("/etc/shadow").st_uid == 0
        bottom = os.open(root, os.O_RDONLY)
        try:
            assert os.stat("/".join(["d"] * 1000), dir_fd=bottom).st_gid == 4243
        finally:
            os.close(bottom)
    os.mkfifo(root / "fifo")  # left out, never opened
    data = archive_tree(str(root), 10000, 16 << 20)  # the 3,000 names take 9 MB
    members = _archive_names(data or b"")
    assert members["/".join(["d"] * 3000) + "/file"].size == 6
    assert members["link"].issym() and members["link"].linkname == "/etc/shadow"
    assert "fifo" not in members
    from inginious_tx.agent.filetree import TreeTooLarge

    with pytest.raises(TreeTooLarge):
        archive_tree(str(root), 100, 16 << 20)  # 3,000 entries
    with pytest.raises(TreeTooLarge):
        archive_tree(str(root), 10000, 1 << 20)  # the names alone are 9 MB
    empty = tmp_path / "empty"
    empty.mkdir()
    assert archive_tree(str(empty), 10, 10) is None


# -- names (finding 7b) ------------------------------------------------------------------------


def test_names_with_a_trailing_newline_are_refused(tmp_path: Path) -> None:
    assert ID_PATTERN.match("demo") and not ID_PATTERN.match("demo\n") and not ID_PATTERN.fullmatch("demo\n")
    tasks = tmp_path / "tasks"
    (tasks / "demo" / "pass").mkdir(parents=True)
    (tasks / "demo" / "pass" / "run").write_text("#!/bin/sh\n")
    for course, task in (("demo\n", "pass"), ("demo", "pass\n")):
        job = BackendNewJob((b"c", "j"), course, task, {}, "default", False, 5, None, 64, False, None)
        with pytest.raises(TaskError, match="invalid"):
            prepare_job(str(tasks), job, str(tmp_path / "work"))
    job = BackendNewJob((b"c", "j"), "demo", "pass", {"ok": "1", "bad\n": "2"}, "default", False, 5, None, 64, False,
                        None)  # fmt: skip
    folder = prepare_job(str(tasks), job, str(tmp_path / "work"))
    try:
        assert sorted(os.listdir(folder.input_dir)) == ["ok"]  # the bad key only in input.json
        os.makedirs(os.path.join(folder.feedback_dir, "custom"))
        Path(folder.feedback_dir, "result").write_text("success")
        Path(folder.feedback_dir, "custom", "key\n").write_text("v")
        result = collect_result(folder, 0)
        assert result.result == "error" and "invalid name" in result.text
    finally:
        remove_job(folder)
    assert re.fullmatch(r"job-.*", os.path.basename(folder.root)) and not os.path.exists(folder.root)
    assert stat.S_IMODE(os.stat(tmp_path / "work").st_mode) == 0o711


def test_job_user_of_a_root_agent() -> None:
    """Who job code runs as: nobody by default when the agent is root; never a user it cannot become."""
    from inginious_tx.agent.local import job_user

    if os.geteuid() != 0:
        assert job_user(None) is None
        with pytest.raises(ValueError, match="root"):
            job_user("nobody")
        return
    import pwd

    nobody = pwd.getpwnam("nobody")
    assert job_user(None) == (nobody.pw_uid, nobody.pw_gid) and job_user(None) != (0, 0)
    assert job_user("1234:5678") == (1234, 5678) and job_user("nobody:99") == (nobody.pw_uid, 99)
    with pytest.raises(ValueError, match="unknown user"):
        job_user("no-such-user-here")


# -- jobs of a root local agent are apart from the host and from each other ----------------

SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")


def _local_grader_backend(tasks_dir: str, work: str, **options: Any) -> LocalBackend:
    opts: Dict[str, Any] = {"work_dir": work, "poll_interval": "0.1"}
    opts.update(options)
    return LocalBackend(_reactor(), AgentConfig(tasks_dir, ["default"], 2, opts))


@pytest_twisted.ensureDeferred
async def test_local_job_temporary_folders_are_its_own_and_bounded(
    tasks_dir: str, short_tmp: str, closers: list, until: Any, within: Any
) -> None:
    """300 MB in /tmp, /var/tmp and /dev/shm: on the job's 64 MB disk (overflow), nothing left on the host."""
    _root_only()
    work = os.path.join(short_tmp, "work")
    tag = f"itx-hostile-{os.getpid()}-{os.path.basename(short_tmp)}"
    leftovers = [os.path.join(d, tag + suffix) for d in SHARED_TMP for suffix in ("", ".big")]

    def clean() -> None:
        for path in leftovers:
            if os.path.lexists(path):
                os.unlink(path)

    closers.append(clean)
    free = {d: os.statvfs(d) for d in SHARED_TMP}
    backend = _local_grader_backend(tasks_dir, work, job_disk_mb="64")
    client = await _grader(closers, within, until, backend, JobMaxima())
    result = await within(client.new_job("hostile", "tmpwrite", {"tag": tag}), 60)
    assert [p for p in leftovers if os.path.lexists(p)] == [], "the job's files outlived it on the host"
    assert result.result == "overflow" and "disk space of 64 MB" in result.text, result
    for d in SHARED_TMP:  # the host's folders did not take the writes
        after = os.statvfs(d)
        assert (free[d].f_bavail - after.f_bavail) * after.f_frsize < 64 << 20, d
    assert os.listdir(work) == [] and _job_mounts(work) == []


@pytest.mark.parametrize("where", ["/tmp", "/run"], ids=["work-in-tmp", "work-elsewhere"])
@pytest_twisted.ensureDeferred
async def test_local_jobs_cannot_see_or_reach_each_other(
    where: str, tasks_dir: str, closers: list, until: Any, within: Any
) -> None:
    """A job scanning /proc for another running job's environment finds nothing, cannot read or
    write its folder (told its path), and runs as another uid.  The work folder is reachable by
    anyone (as the default one in /tmp): only the job's own isolation stands in the way."""
    _root_only()
    import shutil
    import tempfile

    top = tempfile.mkdtemp(prefix="itx-", dir=where)
    closers.append(lambda: shutil.rmtree(top, ignore_errors=True))
    os.chmod(top, 0o755)
    work = os.path.join(top, "work")
    backend = _local_grader_backend(tasks_dir, work)
    client = await _grader(closers, within, until, backend, JobMaxima())
    victim = client.new_job("hostile", "victim", {"secret": "s3cret"})
    roots: List[str] = []

    def started() -> bool:
        roots[:] = [os.path.join(work, n) for n in os.listdir(work) if not n.endswith(".stdin")] if os.path.isdir(
            work) else []  # fmt: skip
        return len(roots) == 1 and os.path.exists(os.path.join(roots[0], "tmp", "started"))

    await until(started, 20, "the victim job to run")
    victim_root = roots[0]
    try:
        st = os.stat(victim_root)
        snoop = await within(client.new_job("hostile", "snoop", {"victim": victim_root}), 30)
    finally:
        Path(victim_root, "tmp", "go").touch()
    done = await within(victim, 30)
    assert snoop.result == "success" and done.result == "success", (snoop, done)
    fields = dict(item.split("=", 1) for item in snoop.text.split())
    assert (fields["seen"], fields["read"], fields["wrote"], fields["signal"]) == ("0", "no", "no", "no"), snoop.text
    assert int(fields["procs"]) < 10, "the job sees the host's processes"
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid != 0, "the job folder is open to others"
    victim_uid = done.text.split("uid=")[1].strip()
    assert victim_uid == str(st.st_uid) and fields["uid"] != victim_uid  # a uid per running job
    assert done.grade == 100.0 and "victim uid=" in done.text  # untouched by the other job
    assert os.listdir(work) == [] and _job_mounts(work) == []


@pytest_twisted.ensureDeferred
async def test_local_student_has_its_own_user_and_tmp(
    tasks_dir: str, short_tmp: str, closers: list, until: Any, within: Any
) -> None:
    """run_student's command runs as the job's second uid, with a /tmp of its own: it neither
    reads the grader's /tmp nor leaves anything in it."""
    _root_only()
    work = os.path.join(short_tmp, "work")
    closers.append(lambda: [os.unlink(p) for p in ("/tmp/grader-file", "/tmp/student-file") if os.path.lexists(p)])
    backend = _local_grader_backend(tasks_dir, work)
    client = await _grader(closers, within, until, backend, JobMaxima())
    result = await within(client.new_job("hostile", "tmpshare", {}), 30)
    assert result.result == "success", result
    assert result.text.strip() == "grader=64000 student=64001 hidden wrote leak=no", result.text
    assert not os.path.exists("/tmp/grader-file") and not os.path.exists("/tmp/student-file")
    assert os.listdir(work) == [] and _job_mounts(work) == []


def test_local_job_users_are_per_job_and_configurable() -> None:
    """A root agent gives each running job a (grader, student) uid pair from job_uid_base;
    the option user makes every job share one user (the operator's choice)."""
    _root_only()
    from inginious_tx.agent.local import _LocalJob

    job = BackendNewJob((b"c", "j"), "c", "t", {}, "default", False, 1, None, 1, False, None)
    backend = LocalBackend(_reactor(), AgentConfig("/nonexistent", ["default"], 2, {"job_uid_base": "70000"}))
    states = [_LocalJob(job, name=f"j{i}") for i in range(3)]
    for state in states:
        assert backend._take_users(state) is None
    assert [s.user for s in states] == [(70000, 70000), (70002, 70002), (70004, 70004)]
    assert [s.student_user for s in states] == [(70001, 70001), (70003, 70003), (70005, 70005)]
    backend._release_users(states[1])
    again = _LocalJob(job, name="j3")
    backend._take_users(again)
    assert again.user == (70002, 70002)  # the lowest free pair
    few = LocalBackend(_reactor(), AgentConfig("/nonexistent", ["default"], 1, {"job_uid_count": "1"}))
    assert few._take_users(_LocalJob(job, name="a")) is None
    assert "no free job user" in (few._take_users(_LocalJob(job, name="b")) or "")
    shared = LocalBackend(_reactor(), AgentConfig("/nonexistent", ["default"], 2, {"user": "1234:5678"}))
    one, two = _LocalJob(job, name="a"), _LocalJob(job, name="b")
    shared._take_users(one), shared._take_users(two)
    assert one.user == two.user == (1234, 5678) and one.student_user == (4243, 4243)


# -- an agent killed outright: the next one on the host removes what it left ----------------


@pytest.mark.parametrize("kind", ["local", "docker"])
@pytest_twisted.ensureDeferred
async def test_what_a_killed_agent_left_is_removed_by_the_next(
    kind: str, tasks_dir: str, short_tmp: str, closers: list, until: Any, within: Any
) -> None:
    """SIGKILL an agent (a real twistd process) during a job: its job tmpfs stays mounted (and its
    container stays, Docker); a new agent of the kind, on the same work folder, removes them at start."""
    from inginious_tx.agent._leftovers import LABEL_OWNER, owner_token

    _root_only()
    if kind == "docker":
        require_docker()
    reactor = _reactor()
    work = os.path.join(short_tmp, "work")
    service = BackendService(reactor, ["tcp:0:interface=127.0.0.1"], ["tcp:0:interface=127.0.0.1"], shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    clients, agents = await within(service.ready)
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "inginious-agent", "--backend", agents.connect_endpoint, "--kind", kind, "--tasks", tasks_dir,
            "--slots", "1", "--option", f"work_dir={work}"]  # fmt: skip
    if kind == "docker":
        argv += ["--environment", f"default={TEST_IMAGE}"]
    proto = _Collect()
    process = reactor.spawnProcess(proto, sys.executable, argv, env=child_env(), path=short_tmp)
    closers.append(lambda: process.pid is not None and process.signalProcess("KILL"))
    await until(lambda: service.backend.agents, 30, "the agent")
    owner = owner_token(process.pid)
    left: List[str] = []

    def labelled() -> List[str]:
        return containers_labelled(LABEL_OWNER, owner) if kind == "docker" else []

    closers.append(lambda: threads.deferToThread(remove_containers, labelled()))
    client = connect_client(reactor, clients.connect_endpoint, "student")
    closers.append(client.stop)
    client.new_job("hostile", "sleep", {}).addErrback(lambda _: None)

    def running() -> bool:
        left[:] = _job_mounts(work)
        return bool(left) and (kind == "local" or bool(labelled()))

    await until(running, 30, "the job to run")
    process.signalProcess("KILL")
    await within(proto.done, 10)
    # (a container made ahead after the job took its own may have added its tmpfs since)
    assert left and set(left) <= set(_job_mounts(work)), "the killed agent's job tmpfs should still be there"
    if kind == "docker":
        assert await threads.deferToThread(labelled), "the killed agent's container should still be there"

    options = {"work_dir": work}
    config = (AgentConfig(tasks_dir, [f"default={TEST_IMAGE}"], 1, options) if kind == "docker"
              else AgentConfig(tasks_dir, ["default"], 1, options))  # fmt: skip
    backend: Any = (DockerBackend if kind == "docker" else LocalBackend)(reactor, config)
    closers.append(backend.close)
    await within(backend.environments(), 30)  # at start: the sweep
    await until(lambda: os.listdir(work) == [] and _job_mounts(work) == [], 20, "the leftovers to go")
    assert await threads.deferToThread(labelled) == []


@pytest.mark.skipif(os.getuid() != 0, reason="handing a job folder to another user needs root")
def test_a_job_run_as_another_user_reaches_its_helpers_wherever_the_package_is(tmp_path: Path) -> None:
    """The installed package may be out of the job user's reach (a home folder closed to
    others, or a checkout under /tmp, which a local job sees privately): the job gets its
    own copy of the helpers in its folder, and its PATH starts there."""
    tasks = tmp_path / "tasks"
    (tasks / "demo" / "pass").mkdir(parents=True)
    (tasks / "demo" / "pass" / "run").write_text("#!/bin/sh\nfeedback-result success\n")
    job = BackendNewJob((b"c", "j"), "demo", "pass", {}, "default", False, 5, None, 64, False, None)
    work = tempfile.mkdtemp(prefix="itx-", dir="/tmp")  # pytest's own tmp_path is closed to other users
    os.chmod(work, 0o711)
    folder = prepare_job(str(tasks), job, work + "/work", owner=(64999, 64999), private=True)
    try:
        assert folder.helpers is not None and os.path.dirname(folder.helpers) == folder.root
        path = folder.env()["PATH"].split(":")
        assert path[0] == folder.helpers
        for name in ("feedback-result", "getinput", "run_student", "parsetemplate"):
            st = os.stat(os.path.join(folder.helpers, name))
            assert st.st_mode & 0o111 and st.st_uid == 64999, name
        # ...and it really runs as that user, from a folder closed to everybody else
        out = subprocess.run(
            ["/bin/sh", "-c", "feedback-result success && cat \"$INGINIOUS_FEEDBACK/result\""],
            env=folder.env(), cwd=folder.task_dir, user=64999, group=64999, extra_groups=[],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0 and out.stdout.strip() == "success", out
    finally:
        remove_job(folder)
        os.rmdir(work + "/work")
        os.rmdir(work)
    # a job run as the agent's own user uses the installed helpers
    folder = prepare_job(str(tasks), job, str(tmp_path / "work"))
    try:
        assert folder.helpers is None and folder.env()["PATH"].split(":")[0] == helpers_dir()
    finally:
        remove_job(folder)


def test_job_uid_leases_are_exclusive_across_agents(tmp_path: Path) -> None:
    """Two agents of one host (here two lease holders, as two LocalBackends in one process
    would be) never hold the same job uid, so that one's end-of-job sweep of a uid's
    processes never hits the other's job."""
    from inginious_tx.agent.uid_leases import UidLeases

    first, second = UidLeases(str(tmp_path / "leases")), UidLeases(str(tmp_path / "leases"))
    assert first.take(64000) and not second.take(64000) and second.take(64002)
    assert not first.take(64000), "a holder does not take its own uid twice"
    first.release(64000)
    assert second.take(64000)
    second.release_all()
    assert first.take(64000) and first.take(64002)
    # A holder that dies (a killed agent) leaves no lease behind: the kernel drops the lock.
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[2]); from inginious_tx.agent.uid_leases import UidLeases; "
        "l = UidLeases(sys.argv[1]); print(l.take(64010), flush=True); time.sleep(60)"
    )
    repo = str(Path(__file__).resolve().parent.parent)
    argv = [sys.executable, "-c", script, str(tmp_path / "leases"), repo]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "True"
        assert not first.take(64010)
    finally:
        child.kill()
        child.wait()
    assert first.take(64010)
    first.release_all()
