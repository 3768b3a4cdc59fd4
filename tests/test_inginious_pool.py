"""Grading containers of INGInious images prepared ahead (``--option pool_max=N``), on a real engine.

Each test checks one property with as few containers as give the proof: a
pooled job's verdict is the unpooled one's; a job sees nothing of another
job's task, course or files; a container that died in the pool costs the job
nothing; the limits a job runs with are its own; what a killed agent left in
its pool is removed by the next agent; under gVisor the memory limit is
fixed at creation.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List

import pytest
import pytest_twisted
from docker_support import assert_left_clean, containers_labelled, docker_client, new_job, remove_containers
from host_tools import missing_setup
from inginious_image_support import INGINIOUS_IMAGE, SHARED, require_inginious_image, require_shared
from subprocess_env import child_env
from test_cli_integration import _Collect
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from inginious_tx.agent._leftovers import LABEL_OWNER, owner_token
from inginious_tx.agent._oom import oom_counter, oom_kills
from inginious_tx.agent.container_pool import IContainerMaker, IContainerPool
from inginious_tx.agent.docker import LABEL_AGENT, DockerBackend
from inginious_tx.agent.docker_pool import LABEL_POOL
from inginious_tx.agent.inginious_pool import IngiKey
from inginious_tx.agent.result import AgentConfig, JobResult
from inginious_tx.backend.service import BackendService
from inginious_tx.client import connect_client

pytestmark = pytest.mark.docker

#: what a job finds of its folders (each listing sorted, names joined by ","), then leaves marks for the next
SNOOP = """#!/bin/bash
l() { ls -A "$1" 2>/dev/null | sort | paste -sd, -; }
out="task=$(l /task);common=$(l /course/common);cstudent=$(l /course/common/student);student=$(l /task/student)"
out="$out;sockets=$(l /sockets);tmp=$(l /tmp);archive=$(l /archive)"
out="$out;limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
touch /task/mark-$$ /task/student/mark-$$ /tmp/mark-$$ /archive/mark-$$ 2>/dev/null
i=0
while [ -e /task/wait ] && [ ! -e /task/student/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
feedback-result success
feedback-msg -m "$out"
"""


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: Any) -> str:
    """Two courses, each with its own files in the task, its student folder and its $common."""
    root = str(tmp_path_factory.mktemp("ingi-pool-tasks"))
    for course in ("ca", "cb"):
        _write(os.path.join(root, course, "snoop", "run"), SNOOP, 0o755)
        _write(os.path.join(root, course, "snoop", f"file-{course}"), course)
        _write(os.path.join(root, course, "snoop", "student", f"student-{course}"), course)
        _write(os.path.join(root, course, "$common", f"common-{course}"), course)
        _write(os.path.join(root, course, "$common", "student", f"cstudent-{course}"), course)
    _write(os.path.join(root, "ca", "held", "run"), SNOOP, 0o755)
    _write(os.path.join(root, "ca", "held", "wait"), "")
    shared = SHARED / "inginious-0.9.2" / "tasks" / "ingi"
    for task in ("trivial",):
        if (shared / task).is_dir():
            os.symlink(shared / task, os.path.join(root, "ca", task))
    for task in ("student_stdin", "memory"):
        os.symlink(os.path.join(os.path.dirname(__file__), "data", "inginious_tasks", "itx", task),
                   os.path.join(root, "ca", task))  # fmt: skip
    _write(os.path.join(root, "ca", "spin", "run"), "#!/bin/bash\nwhile :; do :; done\n", 0o755)
    return root


def _backend(tasks_dir: str, work: str, slots: int = 2, env: str = INGINIOUS_IMAGE, **options: Any) -> DockerBackend:
    opts: Dict[str, Any] = {"work_dir": work, "poll_interval": 0.2, "pool_max": "2", "inginious_images": "false"}
    opts.update(options)
    return DockerBackend(_reactor(), AgentConfig(tasks_dir, [f"default={env}"], slots, opts))


@pytest.fixture
def pooled(tasks_dir: str, tmp_path: Any) -> Any:
    require_inginious_image()
    work = str(tmp_path / "work")
    b = _backend(tasks_dir, work)
    yield b
    pytest_twisted.blockon(b.close())
    assert_left_clean(b.instance_id, work)


async def _run(backend: DockerBackend, job: Any, timeout: float = 120) -> JobResult:
    return await backend.run(job).addTimeout(timeout, _reactor())


def _stats(backend: DockerBackend) -> Any:
    assert backend.ingi_pool is not None
    (stats,) = backend.ingi_pool.stats().values()
    return stats


async def _wait_for(predicate: Any, timeout: float = 120, what: str = "condition") -> Any:
    """Poll ``predicate`` (on the reactor thread) until true; slow machines get a generous timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(_reactor(), 0.05, lambda: None)


async def _ready(backend: DockerBackend) -> None:
    await _wait_for(lambda: _stats(backend).ready >= 1, what="a grading container made ahead")


def _fields(text: str) -> Dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(";"))


def _names(value: str) -> List[str]:
    return [n for n in value.split(",") if n]


def _comparable(r: JobResult) -> Any:
    return (r.result, r.text, r.grade, r.problems, r.tests, r.custom, r.state, r.stdout, r.stderr)


def test_interfaces_and_options(tmp_path: Any) -> None:
    b = _backend(str(tmp_path), str(tmp_path / "work"))
    assert b.ingi_pool is not None
    assert verifyObject(IContainerPool, b.ingi_pool.pool)
    assert verifyObject(IContainerMaker, b.ingi_pool.pool._maker)
    assert _backend(str(tmp_path), str(tmp_path / "w"), pool_max="0").ingi_pool is None, "off by pool_max=0"
    assert _backend(str(tmp_path), str(tmp_path / "w"), pool_max="0", **{"pool_max:x": "1"}).ingi_pool is not None
    assert str(IngiKey("default", "sha256:1", "runsc", False, 64)) == (
        "default (INGInious image, runsc, no network, 64 MB)"
    )


@pytest_twisted.ensureDeferred
async def test_a_pooled_job_gets_the_verdict_of_an_unpooled_one(
    pooled: DockerBackend, tasks_dir: str, tmp_path: Any
) -> None:
    """The same jobs (a trivial task; a task whose grader calls run_student with input), each in a
    container made ahead, and on an agent without the pool."""
    alone = _backend(tasks_dir, str(tmp_path / "alone"), pool_max="0")
    try:
        await pooled.environments()
        await alone.environments()
        assert alone.ingi_pool is None
        assert (await _run(pooled, new_job("ca", "snoop"))).result == "success"  # a miss: demand
        for task, inputdata in (("trivial", {"unittest": ["0", "1"]}), ("student_stdin", {"q": "42"})):
            if not os.path.isdir(os.path.join(tasks_dir, "ca", task)):
                require_shared("inginious-0.9.2", "tasks", "ingi", task)
            await _ready(pooled)
            hits = _stats(pooled).hits
            ours = await _run(pooled, new_job("ca", task, inputdata=inputdata, time_limit=30, mem_limit=100))
            assert _stats(pooled).hits == hits + 1, "it took a container made ahead"
            theirs = await _run(alone, new_job("ca", task, inputdata=inputdata, time_limit=30, mem_limit=100))
            assert theirs.result == "success", theirs
            assert _comparable(ours) == _comparable(theirs)
            assert ours.archive is not None and theirs.archive is not None
    finally:
        await alone.close()
    assert_left_clean(alone.instance_id, str(tmp_path / "alone"))


@pytest_twisted.ensureDeferred
async def test_a_job_sees_nothing_of_another_job(pooled: DockerBackend) -> None:
    """Two jobs of different courses, each in a container made ahead: each sees its own task,
    student folder and $common, nothing the other brought or left."""
    await pooled.environments()
    assert (await _run(pooled, new_job("ca", "snoop"))).result == "success"  # a miss: demand
    seen: Dict[str, Dict[str, str]] = {}
    for course in ("ca", "cb"):
        await _ready(pooled)
        hits = _stats(pooled).hits
        result = await _run(pooled, new_job(course, "snoop"))
        assert result.result == "success", result
        assert _stats(pooled).hits == hits + 1, "it took a container made ahead"
        seen[course] = _fields(result.text)
    for course, other in (("ca", "cb"), ("cb", "ca")):
        mine = seen[course]
        assert set(_names(mine["task"])) == {"run", "student", f"file-{course}"}, mine
        assert _names(mine["student"]) == ["scripts", f"student-{course}"], mine
        assert set(_names(mine["common"])) == {f"common-{course}", "student"}, mine
        assert _names(mine["cstudent"]) == [f"cstudent-{course}"], mine
        assert not [n for n in _names(mine["tmp"]) + _names(mine["archive"]) if n.startswith("mark-")], mine
        assert not [n for n in _names(mine["sockets"]) if n != "main.sock"], mine
        assert other not in ";".join(mine.values())
    takes = _stats(pooled).hits + _stats(pooled).misses
    for course, task in (("ca", "missing"), ("..", "snoop")):
        refused = await _run(pooled, new_job(course, task))
        assert refused.result == "crash" and ("invalid" in refused.text or "does not exist" in refused.text), refused
    assert _stats(pooled).hits + _stats(pooled).misses == takes, "a job that cannot run takes no container"


@pytest_twisted.ensureDeferred
async def test_a_container_dead_in_the_pool_costs_the_job_nothing(pooled: DockerBackend) -> None:
    """A container killed while it waited (its line ends), then one paused (its line stays open: the
    engine says it does not run): each job still runs, in a container of its own."""
    await pooled.environments()
    assert (await _run(pooled, new_job("ca", "snoop"))).result == "success"

    def waiting() -> List[str]:
        client = docker_client()
        try:
            found = client.api.containers(filters={"label": [f"{LABEL_AGENT}={pooled.instance_id}", LABEL_POOL]})
            return [c["Id"] for c in found]
        finally:
            client.close()

    def hit(action: str) -> None:
        client = docker_client()
        try:
            for cid in waiting():
                getattr(client.api, action)(cid)
                if action == "kill":
                    client.api.wait(cid, timeout=60)
        finally:
            client.close()

    for action in ("kill", "pause"):
        await _ready(pooled)
        dead = _stats(pooled).dead
        await deferToThread(hit, action)
        result = await _run(pooled, new_job("ca", "snoop"))
        assert result.result == "success", (action, result)
        assert _stats(pooled).dead == dead + 1, action


@pytest_twisted.ensureDeferred
async def test_the_limits_a_job_runs_with_are_its_own(pooled: DockerBackend) -> None:
    """A container made ahead with the last job's memory limit gets the next job's own when it
    takes it (the engine says so while the job runs); the next containers are made with it."""
    await pooled.environments()
    assert pooled.ingi_pool is not None
    first = await _run(pooled, new_job("ca", "snoop", mem_limit=48))
    assert _fields(first.text)["limit"] == str(48 << 20)
    await _ready(pooled)
    d = pooled.run(new_job("ca", "held", mem_limit=72)).addTimeout(120, _reactor())
    await _wait_for(lambda: any(r.container_id for r in pooled._runs.values()), what="the job's container")
    (cid,) = [r.container_id for r in pooled._runs.values()]

    def inspect_and_go() -> int:
        client = docker_client()
        try:
            info = client.api.inspect_container(cid)
        finally:
            client.close()
        assert LABEL_POOL in info["Config"]["Labels"], "a container made ahead"
        (student,) = [m["Source"] for m in info["Mounts"] if m["Destination"] == "/task/student"]
        with open(os.path.join(student, "go"), "w"):
            pass
        return int(info["HostConfig"]["Memory"])

    assert await deferToThread(inspect_and_go) == 72 << 20
    second = await d
    assert second.result == "success" and _fields(second.text)["limit"] == str(72 << 20), second
    assert pooled.ingi_pool.updates == 1
    await _ready(pooled)
    await deferLater(_reactor(), 0, lambda: None)
    third = await _run(pooled, new_job("ca", "snoop", mem_limit=72))
    assert _fields(third.text)["limit"] == str(72 << 20)
    assert _stats(pooled).hits == 2 and pooled.ingi_pool.updates == 1, "made with the last job's limit: no update"


@pytest_twisted.ensureDeferred
async def test_limits_and_kills_give_the_same_verdicts_in_a_pooled_container(pooled: DockerBackend) -> None:
    """Memory overflow (its grader still sends a result), CPU time, wall time and a kill, each in a
    container made ahead: the verdicts of a container of the job's own, and the job's previous state."""
    await pooled.environments()
    assert (await _run(pooled, new_job("ca", "snoop"))).result == "success"  # a miss: demand
    cases: List[Any] = [
        ("memory", dict(mem_limit=60), "overflow"),
        ("spin", dict(time_limit=1, hard_time_limit=30), "timeout"),
        ("spin", dict(time_limit=30, hard_time_limit=2), "timeout"),
        ("held", dict(time_limit=60), "killed"),
    ]
    for task, limits, verdict in cases:
        await _ready(pooled)
        hits = _stats(pooled).hits
        job = new_job("ca", task, inputdata={"q": "x", "@state": "kept"}, **limits)
        d = pooled.run(job).addTimeout(120, _reactor())
        if verdict == "killed":
            await _wait_for(lambda: any(r.container_id for r in pooled._runs.values()), what="the job's container")
            pooled.kill(job.job_id)
        result = await d
        assert _stats(pooled).hits == hits + 1, (task, "it took a container made ahead")
        assert (result.result, result.state) == (verdict, "kept"), (task, limits, result)


def test_the_kernel_counts_a_containers_out_of_memory_kills() -> None:
    """What an early answer reads instead of asking the engine (``_oom``): a container whose process
    was killed for memory has its count at 1, read from the host while it still runs."""
    require_inginious_image()
    client = docker_client()
    cid = client.api.create_container(
        INGINIOUS_IMAGE, ["sh", "-c", "python3 -c 'x = bytearray(300 << 20)'; sleep 60"],
        labels={"org.inginious-tx.test": "oom"},
        host_config=client.api.create_host_config(mem_limit="64m", memswap_limit="64m", network_mode="none"),
    )["Id"]  # fmt: skip
    try:
        client.api.start(cid)
        pid = client.api.inspect_container(cid)["State"]["Pid"]
        path = oom_counter(pid)
        if path is None:
            missing_setup("the memory cgroups of containers are not visible from here (the engine is asked)")
        deadline = time.monotonic() + 60
        while oom_kills(path) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert oom_kills(path) == 1
        assert oom_counter(2**22 + 1) is None and oom_kills("/nonexistent") is None
    finally:
        client.api.remove_container(cid, force=True)
        client.close()


@pytest_twisted.ensureDeferred
async def test_under_runsc_the_memory_limit_is_fixed_at_creation(tasks_dir: str, tmp_path: Any) -> None:
    """gVisor cannot change a running container's limits: its containers are made with the job's
    memory limit, part of the key."""
    from test_agent_docker_runtimes import require_runtime

    require_inginious_image()
    require_runtime("runsc")
    work = str(tmp_path / "work")
    backend = DockerBackend(_reactor(), AgentConfig(tasks_dir, [f"default={INGINIOUS_IMAGE},runtime=runsc"], 2, {
        "work_dir": work, "poll_interval": 0.2, "pool_max": "2", "pool_total": "4",
        "inginious_images": "false"}))  # fmt: skip
    try:
        await backend.environments()
        assert backend.ingi_pool is not None
        for mem in (64, 64, 96):
            if backend.ingi_pool.stats() and mem == 64:
                await _ready(backend)
            result = await _run(backend, new_job("ca", "snoop", mem_limit=mem), 240)
            assert result.result == "success", result
        stats = {key.mem_mb: s for key, s in backend.ingi_pool.stats().items()}
        assert set(stats) == {64, 96}, "the memory limit is part of the key"
        assert (stats[64].hits, stats[96].hits, stats[96].misses) == (1, 0, 1)

        def waiting_memory() -> List[int]:
            client = docker_client()
            try:
                found = client.api.containers(filters={"label": [f"{LABEL_AGENT}={backend.instance_id}", LABEL_POOL]})
                return sorted(client.api.inspect_container(c["Id"])["HostConfig"]["Memory"] for c in found)
            finally:
                client.close()

        await _wait_for(lambda: all(s.ready for s in backend.ingi_pool.stats().values()), 240, "both keys ready")  # type: ignore[union-attr]
        assert set(await deferToThread(waiting_memory)) == {64 << 20, 96 << 20}
    finally:
        await backend.close()
    await deferToThread(assert_left_clean, backend.instance_id, work)


@pytest_twisted.ensureDeferred
async def test_what_a_killed_agent_left_in_its_pool_is_removed_by_the_next(
    tasks_dir: str, short_tmp: str, closers: list, within: Any
) -> None:
    """SIGKILL a real twistd agent with grading containers waiting in its pool: they and their
    folders stay; a new agent on the same work folder removes them when it starts."""
    require_inginious_image()
    reactor = _reactor()
    work = os.path.join(short_tmp, "work")
    service = BackendService(reactor, ["tcp:0:interface=127.0.0.1"], ["tcp:0:interface=127.0.0.1"], shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    clients, agents = await within(service.ready)
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "inginious-agent", "--backend", agents.connect_endpoint, "--kind", "docker", "--tasks", tasks_dir,
            "--slots", "2", "--option", f"work_dir={work}", "--option", "pool_max=2",
            "--option", "inginious_images=false", "--environment", f"default={INGINIOUS_IMAGE}"]  # fmt: skip
    proto = _Collect()
    process = reactor.spawnProcess(proto, sys.executable, argv, env=child_env(), path=short_tmp)
    closers.append(lambda: process.pid is not None and process.signalProcess("KILL"))
    owner = owner_token(process.pid)
    closers.append(lambda: deferToThread(lambda: remove_containers(containers_labelled(LABEL_OWNER, owner))))
    await _wait_for(lambda: service.backend.agents, what="the agent")
    client = connect_client(reactor, clients.connect_endpoint, "student")
    closers.append(client.stop)
    assert (await within(client.new_job("ca", "snoop", {}, time_limit=30), 120)).result == "success"

    def waiting() -> List[str]:
        client = docker_client()
        try:
            found = client.api.containers(filters={"label": [f"{LABEL_OWNER}={owner}", LABEL_POOL],
                                                   "status": "running"})  # fmt: skip
        finally:
            client.close()
        return [c["Id"] for c in found]

    left: List[str] = []
    deadline = time.monotonic() + 120
    while not left:
        assert time.monotonic() < deadline, "the pool never filled"
        await deferLater(reactor, 0.1, lambda: None)
        left = await deferToThread(waiting)
    process.signalProcess("KILL")
    await within(proto.done, 10)
    assert set(left) <= set(await deferToThread(containers_labelled, LABEL_OWNER, owner)), "the pool's stay"
    assert [n for n in os.listdir(work) if not n.endswith(".stdin")], "the pool's job folders are still there"

    backend = DockerBackend(reactor, AgentConfig(tasks_dir, [f"default={INGINIOUS_IMAGE}"], 1, {"work_dir": work}))
    closers.append(backend.close)
    await within(backend.environments(), 60)  # at start: the sweep
    assert await deferToThread(containers_labelled, LABEL_OWNER, owner) == []
    assert os.listdir(work) == []
