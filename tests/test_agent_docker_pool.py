"""The Docker agent's containers prepared ahead (``--option pool_max=N``), against a real engine.

Each test checks one property of the pool: a job taking a container made ahead
gets its own limits and sees nothing of another job; a container that died in
the pool costs the job nothing; a burst is answered in full with nothing
left; what a killed agent left in its pool is removed by the next agent.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List

import pytest
import pytest_twisted
from docker_support import (
    TEST_IMAGE,
    assert_left_clean,
    containers_labelled,
    docker_client,
    make_task,
    new_job,
    remove_containers,
    require_docker,
)
from subprocess_env import child_env
from test_cli_integration import _Collect
from twisted.internet.defer import DeferredSemaphore, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from inginious_tx.agent._leftovers import LABEL_OWNER, owner_token
from inginious_tx.agent.container_pool import IContainerMaker, IContainerPool
from inginious_tx.agent.docker import LABEL_AGENT, DockerBackend
from inginious_tx.agent.docker_pool import LABEL_POOL, PoolKey, pool_options, start_script
from inginious_tx.agent.result import AgentConfig, JobResult
from inginious_tx.backend.service import BackendService
from inginious_tx.client import connect_client

pytestmark = pytest.mark.docker

#: prints who it is, its limits and what it finds of others, then leaves a mark for the next job
SNOOP = """\
limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)
seen=$(ls /job/tmp /tmp 2>/dev/null | grep -c mark)
echo mark > /job/tmp/mark-$(hostname)
feedback-result success
feedback-msg -m "host=$(hostname) limit=$limit seen=$seen course=$INGINIOUS_COURSE_ID mem=$INGINIOUS_MEM_LIMIT \
stdin=$(cat | wc -c)"
"""


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: Any) -> str:
    root = str(tmp_path_factory.mktemp("pool-tasks"))
    make_task(root, "course", "snoop", SNOOP)
    make_task(root, "course", "ok", "feedback-result success\n")
    make_task(root, "course", "sleep", "sleep 60\nfeedback-result success\n")
    return root


def _backend(tasks_dir: str, work: str, slots: int = 2, **options: Any) -> DockerBackend:
    opts: Dict[str, Any] = {"work_dir": work, "pids_limit": 64, "poll_interval": 0.2, "pool_max": "2"}
    opts.update(options)
    return DockerBackend(_reactor(), AgentConfig(tasks_dir, [f"default={TEST_IMAGE}"], slots, opts))


@pytest.fixture
def pooled(tasks_dir: str, tmp_path: Any) -> Any:
    require_docker()
    work = str(tmp_path / "work")
    b = _backend(tasks_dir, work)
    yield b
    pytest_twisted.blockon(b.close())
    assert_left_clean(b.instance_id, work)


async def _run(backend: DockerBackend, job: Any, timeout: float = 60) -> JobResult:
    return await backend.run(job).addTimeout(timeout, _reactor())


def _stats(backend: DockerBackend) -> Any:
    assert backend.pool is not None
    (stats,) = backend.pool.stats().values()
    return stats


async def _wait_for(predicate: Any, timeout: float = 60, what: str = "condition") -> Any:
    """Poll ``predicate`` (on the reactor thread) until true; slow machines get a generous timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(_reactor(), 0.05, lambda: None)


def _fields(text: str) -> Dict[str, str]:
    return dict(item.split("=", 1) for item in text.split())


def test_interfaces_and_options(tmp_path: Any) -> None:
    b = _backend(str(tmp_path), str(tmp_path / "work"))
    assert b.pool is not None
    assert verifyObject(IContainerPool, b.pool.pool)
    assert verifyObject(IContainerMaker, b.pool.pool._maker)
    assert _backend(str(tmp_path), str(tmp_path / "w"), pool_max="0").pool is None, "off by pool_max=0"
    config = AgentConfig(str(tmp_path), [f"default={TEST_IMAGE}"], 3, {"work_dir": str(tmp_path)})
    on = DockerBackend(_reactor(), config)
    assert on.pool is not None and on.pool.pool.max_per_key == 3, "on by default, as many as the slots"
    assert pool_options({}, slots=4) == {
        "max_per_key": 4, "per_env": {}, "max_total": 4, "concurrency": 2, "half_life": 60.0,
        "window": 2.0}  # fmt: skip
    assert pool_options({"pool_max": "64"}, slots=8)["window"] == 30.0, "above the slots: a burst counted whole"
    assert pool_options({"pool_max": "64", "pool_window": "5"}, slots=8)["window"] == 5.0
    settings = pool_options({"pool_max": "9", "pool_max:py": "1", "pool_concurrency": "3"}, slots=4)
    assert settings["max_per_key"] == 9, "the operator may keep more than the slots"
    assert settings["per_env"] == {"py": 1} and settings["concurrency"] == 3 and settings["max_total"] == 9
    assert pool_options({"pool_max": "2", "pool_max:py": "6"}, slots=4)["max_total"] == 6
    with pytest.raises(ValueError, match="pool_max"):
        pool_options({"pool_max": "many"}, 2)
    script = start_script({"A": "same", "GONE": "x"}, {"A": "same", "B": "it's"}, ["./run"], "/job/task").decode()
    assert script == "export B='it'\"'\"'s'\nunset GONE\ncd /job/task || exit 126\nexec ./run </dev/null\n"


@pytest_twisted.ensureDeferred
async def test_pooled_job_gets_its_own_limits_and_nothing_of_another(pooled: DockerBackend) -> None:
    """Two jobs in turn: the second takes a container made ahead, with its own memory limit applied
    at take time, and finds nothing of the first (another container, a fresh folder)."""
    await pooled.environments()
    first = await _run(pooled, new_job(task="snoop", mem_limit=48))
    await _wait_for(lambda: _stats(pooled).ready >= 1, what="a container made ahead")
    second = await _run(pooled, new_job(task="snoop", mem_limit=72))
    assert first.result == second.result == "success", (first, second)
    one, two = _fields(first.text), _fields(second.text)
    assert (_stats(pooled).hits, _stats(pooled).misses) == (1, 1), "the second job took a container made ahead"
    assert one["limit"] == str(48 << 20) and two["limit"] == str(72 << 20), "each job has its own memory limit"
    assert (two["course"], two["mem"], two["stdin"]) == ("course", "72", "0"), "its own variables, no input"
    assert one["host"] != two["host"] and two["seen"] == "0", "another container, nothing of the first job"
    assert _stats(pooled).ready_seconds_hit and _stats(pooled).ready_seconds_miss
    assert pooled.pool is not None and pooled.pool.updates == 1
    # the containers made since were made with the last job's limit: the next such job needs no update
    await _wait_for(lambda: _stats(pooled).ready >= 1 and not _stats(pooled).creating, what="a fresh container")
    await deferLater(_reactor(), 0, lambda: None)
    third = await _run(pooled, new_job(task="snoop", mem_limit=72))
    assert _fields(third.text)["limit"] == str(72 << 20)
    assert _stats(pooled).hits == 2 and pooled.pool.updates == 1, "no update for a container made with the limit"


@pytest_twisted.ensureDeferred
async def test_a_container_dead_in_the_pool_costs_the_job_nothing(pooled: DockerBackend) -> None:
    await pooled.environments()
    assert (await _run(pooled, new_job(task="ok"))).result == "success"
    await _wait_for(lambda: _stats(pooled).ready >= 1, what="a container made ahead")

    def kill_pooled() -> List[str]:
        ids = containers_labelled(LABEL_POOL, "1")
        client = docker_client()
        try:
            mine = [c for c in ids if client.api.inspect_container(c)["Config"]["Labels"].get(LABEL_AGENT)
                    == pooled.instance_id]  # fmt: skip
            for cid in mine:
                client.api.kill(cid)
        finally:
            client.close()
        return mine

    assert await deferToThread(kill_pooled), "a container waiting in the pool"
    result = await _run(pooled, new_job(task="snoop"))
    assert result.result == "success", result
    assert _stats(pooled).dead >= 1


@pytest_twisted.ensureDeferred
async def test_a_burst_is_answered_in_full_and_leaves_nothing(tasks_dir: str, tmp_path: Any) -> None:
    """16 jobs at once on 4 slots (as the agent would run them): every one succeeds, most take a
    container made ahead once the pool has seen the demand, and nothing is left after close."""
    require_docker()
    work = str(tmp_path / "work")
    backend = _backend(tasks_dir, work, slots=4, pool_max="4")
    try:
        await backend.environments()
        slots = DeferredSemaphore(4)
        results = await gatherResults(
            [slots.run(_run, backend, new_job(task="ok"), 120) for _ in range(16)]
        ).addTimeout(300, _reactor())
        assert [r.result for r in results] == ["success"] * 16, results
        stats = _stats(backend)
        assert stats.hits + stats.misses == 16 and stats.hits >= 4, stats
        assert stats.ready + stats.creating <= 4, "never more than the pool's maximum waiting"
    finally:
        await backend.close()
    await deferToThread(assert_left_clean, backend.instance_id, work)


@pytest_twisted.ensureDeferred
async def test_what_a_killed_agent_left_in_its_pool_is_removed_by_the_next(
    tasks_dir: str, short_tmp: str, closers: list, within: Any
) -> None:
    """SIGKILL a real twistd agent with containers waiting in its pool: they and their folders
    stay; a new agent on the same work folder removes them when it starts."""
    require_docker()
    reactor = _reactor()
    work = os.path.join(short_tmp, "work")
    service = BackendService(reactor, ["tcp:0:interface=127.0.0.1"], ["tcp:0:interface=127.0.0.1"], shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    clients, agents = await within(service.ready)
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "inginious-agent", "--backend", agents.connect_endpoint, "--kind", "docker", "--tasks", tasks_dir,
            "--slots", "2", "--option", f"work_dir={work}", "--option", "pool_max=2",
            "--environment", f"default={TEST_IMAGE}"]  # fmt: skip
    proto = _Collect()
    process = reactor.spawnProcess(proto, sys.executable, argv, env=child_env(), path=short_tmp)
    closers.append(lambda: process.pid is not None and process.signalProcess("KILL"))
    owner = owner_token(process.pid)
    closers.append(lambda: deferToThread(lambda: remove_containers(containers_labelled(LABEL_OWNER, owner))))
    await _wait_for(lambda: service.backend.agents, what="the agent")
    client = connect_client(reactor, clients.connect_endpoint, "student")
    closers.append(client.stop)
    for _ in range(2):
        assert (await within(client.new_job("course", "ok", {}), 60)).result == "success"
    left: List[str] = []

    def waiting() -> List[str]:
        client = docker_client()
        try:
            # running: waiting for a job (a container taken by a job that ended has exited)
            found = client.api.containers(filters={"label": [f"{LABEL_OWNER}={owner}", LABEL_POOL],
                                                   "status": "running"})  # fmt: skip
        finally:
            client.close()
        return [c["Id"] for c in found]

    async def pool_full() -> bool:
        left[:] = await deferToThread(waiting)
        return len(left) >= 1

    deadline = time.monotonic() + 60
    while not await pool_full():
        assert time.monotonic() < deadline, "the pool never filled"
        await deferLater(reactor, 0.1, lambda: None)
    process.signalProcess("KILL")
    await within(proto.done, 10)
    assert set(left) <= set(await deferToThread(containers_labelled, LABEL_OWNER, owner)), "the pool's stay"
    assert [n for n in os.listdir(work) if not n.endswith(".stdin")], "the pool's job folders are still there"

    backend = DockerBackend(reactor, AgentConfig(tasks_dir, [f"default={TEST_IMAGE}"], 1, {"work_dir": work}))
    closers.append(backend.close)
    await within(backend.environments(), 60)  # at start: the sweep
    assert await deferToThread(containers_labelled, LABEL_OWNER, owner) == []
    assert os.listdir(work) == []


def test_pool_key_text() -> None:
    assert str(PoolKey("py", "img", None, False)) == "py (default runtime, no network)"
    assert str(PoolKey("py", "img", "runsc", True, 64)) == "py (runsc, network, 64 MB)"


@pytest_twisted.ensureDeferred
async def test_under_runsc_the_memory_limit_is_fixed_at_creation(tasks_dir: str, tmp_path: Any) -> None:
    """gVisor cannot change a running container's limits: its pooled containers are made with the
    job's memory limit (part of the key), so a job only takes one made for its limit."""
    from test_agent_docker_runtimes import require_runtime

    require_runtime("runsc")
    work = str(tmp_path / "work")
    backend = DockerBackend(_reactor(), AgentConfig(tasks_dir, [f"default={TEST_IMAGE},runtime=runsc"], 2, {
        "work_dir": work, "poll_interval": 0.2, "pool_max": "2", "pool_total": "4", "pids_limit": 256}))  # fmt: skip
    try:
        await backend.environments()
        for mem in (64, 64, 96):
            if mem == 64 and backend.pool is not None and backend.pool.stats():
                await _wait_for(lambda: _stats(backend).ready >= 1, what="a container made ahead")
            assert (await _run(backend, new_job(task="ok", mem_limit=mem), 120)).result == "success"
        assert backend.pool is not None
        stats = {key.mem_mb: s for key, s in backend.pool.stats().items()}
        assert set(stats) == {64, 96}, "the memory limit is part of the key"
        assert (stats[64].hits, stats[96].hits, stats[96].misses) == (1, 0, 1)

        def waiting_memory() -> List[int]:
            client = docker_client()
            try:
                found = client.api.containers(filters={"label": [f"{LABEL_AGENT}={backend.instance_id}", LABEL_POOL]})
                return sorted(client.api.inspect_container(c["Id"])["HostConfig"]["Memory"] for c in found)
            finally:
                client.close()

        await _wait_for(lambda: _stats_ready(backend) >= 2, what="containers made ahead for both limits")
        assert set(await deferToThread(waiting_memory)) == {64 << 20, 96 << 20}
    finally:
        await backend.close()
    await deferToThread(assert_left_clean, backend.instance_id, work)


def _stats_ready(backend: DockerBackend) -> int:
    """How many keys have a container ready."""
    assert backend.pool is not None
    return sum(1 for s in backend.pool.stats().values() if s.ready)
