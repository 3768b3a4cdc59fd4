"""run_student's containers prepared ahead (``--option student_pool_max=N``), against a real engine.

Each test checks one property of the sibling pool (:mod:`inginious_tx.agent.student_pool`):
a pooled sibling sees its job's student folder (and the grader its writes),
two jobs' siblings never see each other's files; a grader's link to ``/`` or
to another job's folder is refused on the pooled path as without it (254,
nothing on the host); a sibling dead in the pool costs the call nothing; what
a killed agent left (siblings, their areas, the job's folder bound in one) is
removed by the next agent; under gVisor the take-time check refuses a
sibling that cannot see the job's folder.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
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
from test_agent_docker_runtimes import require_runtime
from test_cli_integration import _Collect
from test_hostile_agents import _grader, _job_mounts, _root_only
from test_hostile_jobfolders import TASKS as HOSTILE_TASKS
from test_hostile_jobfolders import _check_untouched, _fields, _victim_and_thief
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from inginious_tx.agent import student_pool
from inginious_tx.agent._leftovers import LABEL_OWNER, owner_token, sweep_work_dir
from inginious_tx.agent.container_pool import IContainerMaker, IContainerPool
from inginious_tx.agent.docker import LABEL_AGENT, DockerBackend
from inginious_tx.agent.limits import JobMaxima
from inginious_tx.agent.result import AgentConfig, JobResult
from inginious_tx.agent.student_pool import LABEL_STUDENT_POOL, StudentKey, go_script, student_pool_options
from inginious_tx.backend.service import BackendService
from inginious_tx.client import connect_client

pytestmark = pytest.mark.docker

#: the grader leaves a secret in the student folder; the student lists what it sees, reads its
#: input and the secret, writes back; the grader reports all of it
SEE = r"""
secret=$(getinput secret)
echo "$secret" > "$INGINIOUS_STUDENT/mine-$secret"
out=$(printf 'in-%s' "$secret" | run_student sh -c 'cd "$INGINIOUS_STUDENT"; cat; echo " ls=$(ls | tr "\n" ,)";
  echo "cat=$(cat mine-*)"; echo "task=$(ls /task/student | tr "\n" ,)"; echo "back-$1" > back; exit 4' sh "$secret")
rc=$?
feedback-msg -m "rc=$rc back=$(cat "$INGINIOUS_STUDENT/back") out=$(echo $out | tr ' ' _)"
feedback-result success
"""
#: one call, to make demand (then the pool keeps a sibling ready)
WARM = "run_student true && feedback-result success\n"
#: a call that lasts (the killed agent's test)
HOLD = "run_student sleep 600\nfeedback-result success\n"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: Any) -> str:
    root = str(tmp_path_factory.mktemp("student-pool-tasks"))
    for name, body in HOSTILE_TASKS.items():
        make_task(root, "hostile", name, body)
    make_task(root, "hostile", "warm", WARM)
    make_task(root, "sp", "see", SEE)
    make_task(root, "sp", "warm", WARM)
    make_task(root, "sp", "hold", HOLD)
    return root


def _backend(tasks_dir: str, work: str, runtime: str = "runc", **options: Any) -> DockerBackend:
    # the grading containers made ahead would add their own folders to the work folder's checks
    opts: Dict[str, Any] = {"work_dir": work, "poll_interval": 0.2, "student_pool_max": "2", "pool_max": "0"}
    opts.update(options)
    opts = {k: v for k, v in opts.items() if v is not None}  # None: the option not given
    return DockerBackend(_reactor(), AgentConfig(tasks_dir, [f"default={TEST_IMAGE},runtime={runtime}"], 2, opts))


def _stats(backend: DockerBackend) -> Any:
    assert backend.student_pool is not None
    found = list(backend.student_pool.stats().values())
    return found[0] if found else None


def _ready(backend: DockerBackend) -> int:
    stats = _stats(backend)
    return 0 if stats is None else int(stats.ready)


async def _run(backend: DockerBackend, job: Any, timeout: float = 90) -> JobResult:
    return await backend.run(job).addTimeout(timeout, _reactor())


async def _warm(backend: DockerBackend, until: Any, course: str = "sp", ready: int = 1) -> None:
    """``ready`` calls at once, to make that much demand; then wait until that many siblings wait."""
    jobs = [backend.run(new_job(course, "warm", hard_time_limit=60)) for _ in range(ready)]
    results = await gatherResults(jobs).addTimeout(90, _reactor())
    assert [r.result for r in results] == ["success"] * ready, results
    await until(lambda: _ready(backend) >= ready, 60, f"{ready} sibling(s) made ahead")


async def _stop(backend: DockerBackend, work: str, until: Any) -> None:
    """Close the backend (the agent's stop may be closing it already: then wait for its areas to
    go), then remove whatever container of it is left.  One closer, in this order: the closers
    run at once, and the first that fails ends the wait for the others."""
    await backend.close()
    await until(lambda: _job_mounts(work) == [], 60, "the pool's areas to be unmounted")
    await deferToThread(remove_containers, containers_labelled(LABEL_AGENT, backend.instance_id))


def _areas(work: str) -> List[str]:
    return sorted(n for n in os.listdir(work) if n.startswith("student-")) if os.path.isdir(work) else []


def test_interfaces_options_and_keys(tmp_path: Any) -> None:
    _root_only()  # the pool binds folders: a root agent only (else it is off, which the log says)
    b = _backend(str(tmp_path), str(tmp_path / "work"))
    assert b.student_pool is not None
    assert verifyObject(IContainerMaker, b.student_pool._maker)
    assert verifyObject(IContainerPool, b.student_pool.pool)
    assert _backend(str(tmp_path), str(tmp_path / "w"), student_pool_max="0").student_pool is None, "0: off"
    defaulted = _backend(str(tmp_path), str(tmp_path / "w"), student_pool_max=None, pool_max="1")
    assert defaulted.student_pool is not None, "defaults to pool_max"
    assert student_pool_options({"pool_max": "3"}, slots=2)["max_per_key"] == 2, "never more than the slots"
    assert student_pool_options({"pool_max": "3", "student_pool_max": "0"}, slots=2)["max_per_key"] == 0
    with pytest.raises(ValueError, match="student_pool_max"):
        student_pool_options({"student_pool_max": "-1"}, 2)
    pool = b.student_pool
    assert pool.key_for("e", "img", "runsc") is None, "gVisor shows no mount made after the start"
    assert pool.key_for("e", "img", None) == StudentKey("e", "img", None)
    script = go_script(["/bin/sh", "-c", 'exec "$@"', "x", "it's\n"], "/task").decode()
    assert script == (
        "cd /task || exit 126\nunset OLDPWD; SHLVL=0; export SHLVL\nexec /bin/sh -c 'exec \"$@\"' x 'it'\"'\"'s\n'\n"
    )


def test_an_unmarked_area_of_a_dead_agent_is_swept(tmp_path: Any) -> None:
    """An agent killed between making an area and marking it: the pid in the area's name tells
    the next agent it may go; an unmarked area of a live pid (the agent about to mark it) stays."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid runs no more (reused by then: the area stays, the safe side)
    work = tmp_path / "work"
    work.mkdir()
    dead, live = work / f"student-{gone.pid}-abc.stdin", work / f"student-{os.getpid()}-def.stdin"
    for area in (dead, live):
        (area / "student").mkdir(parents=True)
    removed = sweep_work_dir(str(work))
    if os.path.exists(f"/proc/{gone.pid}"):
        pytest.skip("the pid was reused at once")
    assert removed == [dead.name[: -len(".stdin")]] and sorted(os.listdir(work)) == [live.name]


@pytest_twisted.ensureDeferred
async def test_siblings_see_their_job_s_folder_and_never_another_s(tasks_dir: str, tmp_path: Any, until: Any) -> None:
    """Two jobs at once, each taking a sibling made ahead: each call gets its input, sees its own
    job's student files (at both paths) and nothing of the other's; the grader sees its writes."""
    _root_only()
    require_docker()
    work = str(tmp_path / "work")
    backend = _backend(tasks_dir, work)
    try:
        await backend.environments()
        await _warm(backend, until, ready=2)
        hits = _stats(backend).hits
        secrets = [uuid.uuid4().hex[:12] for _ in range(2)]
        results = await gatherResults(
            [backend.run(new_job("sp", "see", inputdata={"secret": s}, hard_time_limit=60)) for s in secrets]
        )
        assert _stats(backend).hits == hits + 2, "both calls took a sibling made ahead"
        for secret, other, result in zip(secrets, reversed(secrets), results, strict=True):
            assert result.result == "success", result
            fields = _fields(result.text)
            assert (fields["rc"], fields["back"]) == ("4", f"back-{secret}"), result.text
            out = fields["out"]
            assert f"in-{secret}_ls=mine-{secret}," in out and f"cat={secret}" in out, out
            assert f"task=mine-{secret}," in out, "the same folder at /task/student"
            assert other not in out, "a sibling saw another job's files"
    finally:
        await backend.close()
    await deferToThread(assert_left_clean, backend.instance_id, work)
    assert _job_mounts(work) == []


@pytest_twisted.ensureDeferred
async def test_pooled_link_to_the_hosts_root_is_refused(
    tasks_dir: str, tmp_path: Path, closers: list, until: Any, within: Any
) -> None:
    """Issue 16 (a) on the pooled path: task/student -> / is refused (254, why), nothing on the host."""
    _root_only()
    require_docker()
    tag = f"itx-pwn-{uuid.uuid4().hex}"
    closers.append(lambda: os.path.lexists(f"/tmp/{tag}") and os.unlink(f"/tmp/{tag}"))
    work = str(tmp_path / "work")
    backend = _backend(tasks_dir, work)
    closers.append(lambda: ensureDeferred(_stop(backend, work, until)))
    client = await _grader(closers, within, until, backend, JobMaxima())
    assert (await within(client.new_job("hostile", "warm", {}), 60)).result == "success"
    await until(lambda: _ready(backend) >= 1, 60, "a sibling made ahead")
    hits = _stats(backend).hits
    result = await within(client.new_job("hostile", "pwn", {"tag": tag}), 90)
    assert _stats(backend).hits > hits, "the hostile call took a sibling made ahead"
    assert not os.path.lexists(f"/tmp/{tag}"), "run_student wrote on the host through the grader's link"
    fields = _fields(result.text)
    assert result.result == "success" and fields["rc"] == "254" and "TOUCHED" not in result.text, result.text
    assert "not a folder of the job" in result.text and fields["again"] == "fine", result.text

    def only_areas_left() -> bool:  # the job's folder gone; what stays is the pool's own, unbound
        areas = _areas(work)
        return sorted(os.listdir(work)) == areas and sorted(_job_mounts(work)) == [os.path.join(work, a) for a in areas]

    await until(only_areas_left, 20, "the job folders to go")


@pytest_twisted.ensureDeferred
async def test_pooled_link_to_another_job_is_refused(
    tasks_dir: str, tmp_path: Path, closers: list, until: Any, within: Any
) -> None:
    """Issue 16 (b) on the pooled path: links to another running job's folder, then to its
    task/student, are refused; the victim's verdict stays its own."""
    _root_only()
    require_docker()
    work = str(tmp_path / "work")
    backend = _backend(tasks_dir, work)
    closers.append(lambda: ensureDeferred(_stop(backend, work, until)))
    client = await _grader(closers, within, until, backend, JobMaxima())
    assert (await within(client.new_job("hostile", "warm", {}), 60)).result == "success"
    await until(lambda: _ready(backend) >= 1, 60, "a sibling made ahead")
    hits = _stats(backend).hits
    secret = f"s3cret-{uuid.uuid4().hex}"
    thief, done = await _victim_and_thief(client, work, until, within, secret)
    assert _stats(backend).hits > hits, "a hostile call took a sibling made ahead"
    _check_untouched(thief, done, secret)
    assert "not a folder of the job" in thief.text, thief.text


@pytest_twisted.ensureDeferred
async def test_a_sibling_dead_in_the_pool_costs_the_call_nothing(tasks_dir: str, tmp_path: Any, until: Any) -> None:
    _root_only()
    require_docker()
    work = str(tmp_path / "work")
    backend = _backend(tasks_dir, work)
    try:
        await backend.environments()
        await _warm(backend, until)

        def kill_siblings() -> List[str]:
            client = docker_client()
            try:
                found = client.api.containers(
                    filters={"label": [f"{LABEL_AGENT}={backend.instance_id}", f"{LABEL_STUDENT_POOL}=student"]}
                )
                for c in found:
                    client.api.kill(c["Id"])
            finally:
                client.close()
            return [c["Id"] for c in found]

        assert await deferToThread(kill_siblings), "a sibling waiting in the pool"
        secret = uuid.uuid4().hex[:12]
        result = await _run(backend, new_job("sp", "see", inputdata={"secret": secret}, hard_time_limit=60))
        assert result.result == "success" and _fields(result.text)["back"] == f"back-{secret}", result.text
        assert _stats(backend).dead >= 1
    finally:
        await backend.close()
    await deferToThread(assert_left_clean, backend.instance_id, work)
    assert _job_mounts(work) == []


@pytest_twisted.ensureDeferred
async def test_what_a_killed_agent_left_is_removed_by_the_next(
    tasks_dir: str, short_tmp: str, closers: list, within: Any, until: Any
) -> None:
    """SIGKILL a real twistd agent with a sibling waiting and another running a call (the job's
    student folder bound in its area): the next agent removes the siblings, the areas, the mounts."""
    _root_only()
    require_docker()
    reactor = _reactor()
    work = os.path.join(short_tmp, "work")
    service = BackendService(reactor, ["tcp:0:interface=127.0.0.1"], ["tcp:0:interface=127.0.0.1"], shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    clients, agents = await within(service.ready)
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "inginious-agent", "--backend", agents.connect_endpoint, "--kind", "docker", "--tasks", tasks_dir,
            "--slots", "2", "--option", f"work_dir={work}", "--option", "student_pool_max=2",
            "--environment", f"default={TEST_IMAGE}"]  # fmt: skip
    proto = _Collect()
    process = reactor.spawnProcess(proto, sys.executable, argv, env=child_env(), path=short_tmp)
    closers.append(lambda: process.pid is not None and process.signalProcess("KILL"))
    owner = owner_token(process.pid)
    closers.append(lambda: deferToThread(lambda: remove_containers(containers_labelled(LABEL_OWNER, owner))))
    await until(lambda: service.backend.agents, 60, "the agent")
    client = connect_client(reactor, clients.connect_endpoint, "student")
    closers.append(client.stop)
    assert (await within(client.new_job("sp", "warm", {}), 60)).result == "success"

    def siblings(status: str) -> List[str]:
        c = docker_client()
        try:
            found = c.api.containers(
                filters={"label": [f"{LABEL_OWNER}={owner}", f"{LABEL_STUDENT_POOL}=student"], "status": status}
            )
        finally:
            c.close()
        return [x["Id"] for x in found]

    waiting: List[str] = []
    deadline = reactor.seconds() + 60
    while not waiting:
        assert reactor.seconds() < deadline, "no sibling made ahead"
        waiting[:] = await deferToThread(siblings, "running")
    client.new_job("sp", "hold", {})  # never answered: the agent is killed while its call runs

    def bound() -> bool:
        return any(p.endswith(".stdin/student") for p in _job_mounts(work))

    await until(bound, 60, "a job's student folder bound in an area")
    await until(lambda: len(_areas(work)) >= 2, 60, "a fresh area beside it")
    process.signalProcess("KILL")
    await within(proto.done, 10)
    assert set(waiting) <= set(await deferToThread(containers_labelled, LABEL_OWNER, owner)), "they stay"
    assert bound() and len(_areas(work)) >= 2, "the areas and the bound folder stay until the sweep"

    backend = DockerBackend(reactor, AgentConfig(tasks_dir, [f"default={TEST_IMAGE}"], 1, {"work_dir": work}))
    closers.append(backend.close)
    await within(backend.environments(), 60)  # at start: the sweep
    assert await deferToThread(containers_labelled, LABEL_OWNER, owner) == []
    left = (os.listdir(work), _job_mounts(work), [os.listdir(os.path.join(work, n)) for n in os.listdir(work)])
    assert left == ([], [], []), left


@pytest_twisted.ensureDeferred
async def test_under_runsc_the_take_time_check_refuses_the_sibling(
    tasks_dir: str, tmp_path: Any, until: Any, monkeypatch: Any, log_events: Any
) -> None:
    """gVisor does not show a mount made after the sandbox started.  Pooled anyway (the runtime
    forced into the allowed ones), its sibling is refused by the take-time check before anything
    runs in it: the call gets its container made as without the pool, and the environment is not
    pooled any more."""
    _root_only()
    require_runtime("runsc")
    work = str(tmp_path / "work")
    backend = _backend(tasks_dir, work, runtime="runsc", pids_limit=256)
    pool = backend.student_pool
    assert pool is not None and pool.key_for("default", TEST_IMAGE, "runsc") is None, "not pooled by default"
    monkeypatch.setattr(student_pool, "POOLABLE_RUNTIMES", student_pool.POOLABLE_RUNTIMES | {"runsc"})
    key = StudentKey("default", TEST_IMAGE, "runsc")
    try:
        await backend.environments()
        await _warm(backend, until)
        secret = uuid.uuid4().hex[:12]
        result = await _run(backend, new_job("sp", "see", inputdata={"secret": secret}, hard_time_limit=90), 180)
        fields = _fields(result.text)
        assert (result.result, fields["rc"], fields["back"]) == ("success", "4", f"back-{secret}"), result.text
        assert f"ls=mine-{secret}," in fields["out"], "the call ran in a container made for it"
        assert _stats(backend).hits >= 1 and key in pool._maker.refused, "taken, then refused"
        assert "not the job's folder" in pool._maker.refused[key] or "cannot be seen" in pool._maker.refused[key]
        assert pool.key_for("default", TEST_IMAGE, "runsc") is None, "not pooled any more"
        assert log_events.has("student pool: no sibling made ahead for", "runsc")
    finally:
        await backend.close()
    await deferToThread(assert_left_clean, backend.instance_id, work)
    assert _job_mounts(work) == []
