"""The Docker agent under each container runtime (runc and gVisor's runsc), plus INGInious' paths.

The isolation checks of ``test_agent_docker.py`` that matter against a
hostile task (memory, network, read-only root, capabilities, processes gone
after the job, fork bomb) run under every runtime of :data:`RUNTIMES`; the
pids-limit probe and its fallback are checked under runsc.  ``runsc`` must be
registered with the engine (``.ci/setup-runsc.sh``); outside CI its tests are
skipped with the reason when it is not.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import time
from typing import Any, Dict

import pytest
import pytest_twisted
from docker_support import (
    TEST_IMAGE,
    assert_left_clean,
    docker_client,
    make_task,
    new_job,
    processes_in_container,
    require_docker,
)
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from inginious_tx.agent.docker import DockerBackend
from inginious_tx.agent.result import AgentConfig, JobResult
from inginious_tx.agent.runtimes import EnvironmentSpec, parse_environment_specs
from inginious_tx.messages import BackendNewJob

pytestmark = pytest.mark.docker

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples", "tasks")
RUNTIMES = ["runc", "runsc"]


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def require_runtime(runtime: str) -> None:
    """Skip (outside CI) or fail (under CI) when the engine does not know ``runtime``."""
    require_docker()
    client = docker_client()
    try:
        known = set((client.info().get("Runtimes") or {}).keys())
    finally:
        client.close()
    if runtime in known:
        return
    why = f"the docker engine has no {runtime!r} runtime (known: {sorted(known)}); run .ci/setup-runsc.sh"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: Any) -> str:
    root = str(tmp_path_factory.mktemp("tasks"))
    shutil.copytree(os.path.join(EXAMPLES, "demo"), os.path.join(root, "demo"), symlinks=True)
    make_task(root, "course", "task", "feedback-result success\n")
    return root


def _backend(tasks_dir: str, work: str, runtime: str, **options: Any) -> DockerBackend:
    opts: Dict[str, Any] = {"work_dir": work, "pids_limit": 64, "poll_interval": 0.2}
    opts.update(options)
    envs = [f"default={TEST_IMAGE},runtime={runtime}"]
    return DockerBackend(_reactor(), AgentConfig(tasks_dir, envs, 4, opts))


def _check_clean(b: DockerBackend, work: str) -> None:
    assert_left_clean(b.instance_id, work)


def _close_and_check(b: DockerBackend, work: str) -> None:
    pytest_twisted.blockon(b.close())
    _check_clean(b, work)


async def _aclose_and_check(b: DockerBackend, work: str) -> None:
    await b.close()
    await deferToThread(_check_clean, b, work)


@pytest.fixture(params=RUNTIMES)
def backend(request: Any, tasks_dir: str, tmp_path: Any) -> Any:
    require_runtime(request.param)
    work = str(tmp_path / "work")
    b = _backend(tasks_dir, work, request.param)
    yield b
    _close_and_check(b, work)


async def _run(backend: DockerBackend, job: BackendNewJob, timeout: float = 60) -> JobResult:
    return await backend.run(job).addTimeout(timeout, _reactor())


# -- options ---------------------------------------------------------------------


def test_environment_specs() -> None:
    assert parse_environment_specs(["a=img:1,runtime=runsc", " b = reg/b ", "c"]) == {
        "a": EnvironmentSpec("img:1", "runsc"),
        "b": EnvironmentSpec("reg/b", None),
        "c": EnvironmentSpec("c", None),
    }
    for bad, why in [
        ("a=img,gpu=1", "unknown option 'gpu=1'"),
        ("a=img,runtime=", "bad runtime name"),
        ("a=img,runtime=x y", "bad runtime name"),
        ("a=,runtime=runsc", "expected NAME=IMAGE"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_environment_specs([bad])


@pytest_twisted.ensureDeferred
async def test_unknown_runtime_not_offered(tasks_dir: str, tmp_path: Any, log_events: Any) -> None:
    require_docker()
    work = str(tmp_path / "work")
    envs = [f"default={TEST_IMAGE}", f"odd={TEST_IMAGE},runtime=no-such-runtime"]
    b = DockerBackend(_reactor(), AgentConfig(tasks_dir, envs, 1, {"work_dir": work}))
    try:
        assert list(await b.environments()) == ["default"]
        assert log_events.has("no-such-runtime", "not registered", "not offered")
    finally:
        await _aclose_and_check(b, work)


# -- isolation under each runtime ---------------------------------------------------

ISOLATION = r"""
can_write() { ( : > "$1" ) 2>/dev/null && echo yes || echo no; }
feedback-custom uid "$(id -u)"
feedback-custom root "$(can_write /x)"
feedback-custom etc "$(can_write /etc/x)"
feedback-custom helpers "$(can_write /inginious/helpers/x)"
feedback-custom student "$(can_write "$INGINIOUS_STUDENT/x")"
feedback-custom capeff "$(awk '/^CapEff/ {print $2}' /proc/self/status)"
feedback-custom socket "$(ls /var/run/docker.sock /run/docker.sock 2>/dev/null | wc -l)"
feedback-custom links "$(ip -o link | cut -d: -f2 | tr -d ' ' | sort | tr '\n' ' ')"
feedback-custom nproc "$(ulimit -u)"
feedback-result success
"""


@pytest_twisted.ensureDeferred
async def test_isolation(backend: DockerBackend) -> None:
    result = await _run(backend, new_job(run_cmd=ISOLATION, mem_limit=48))
    assert result.result == "success", result
    c = result.custom
    assert c["uid"] != "0"
    assert (c["root"], c["etc"], c["helpers"], c["student"]) == ("no", "no", "no", "yes")
    assert int(c["capeff"], 16) == 0
    assert c["socket"] == "0"
    assert c["links"].split() == ["lo"], "network not cut off"


@pytest_twisted.ensureDeferred
async def test_memory_overflow(backend: DockerBackend) -> None:
    result = await _run(backend, new_job("demo", "memory", mem_limit=32))
    assert result.result == "overflow", result


@pytest_twisted.ensureDeferred
async def test_fork_bomb_contained(backend: DockerBackend) -> None:
    started = time.monotonic()
    result = await _run(backend, new_job("demo", "forkbomb", time_limit=2, hard_time_limit=3, mem_limit=256))
    assert result.result in ("timeout", "overflow", "error"), result
    assert time.monotonic() - started < 30


async def _container_up(backend: DockerBackend, job: BackendNewJob) -> str:
    """The id of the job's container once it runs, made for it or taken from the pool (a pooled
    container has no job label: it was made before its job was known)."""
    sandbox = await backend.debug_sandbox(job.job_id).addTimeout(60, _reactor())
    assert sandbox is not None, "the job ended before its container ran"
    return str(sandbox.container_id)


async def _wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await deferToThread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(_reactor(), 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_processes_gone_after_the_job(backend: DockerBackend) -> None:
    job = new_job(run_cmd="sleep 300 & setsid sleep 301 & sleep 302", time_limit=60)
    d = backend.run(job).addTimeout(60, _reactor())
    container = await _container_up(backend, job)
    pids = await _wait_for(lambda: processes_in_container(container), what="the container's processes")
    backend.kill(job.job_id)
    assert (await d).result == "killed"
    alive = await deferToThread(lambda: [p for p in pids if os.path.exists(f"/proc/{p}")])
    assert alive == [], "processes of the job survived it"


# -- the pids limit under runsc -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_runsc_pids_probe_and_fallback(tasks_dir: str, tmp_path: Any, log_events: Any) -> None:
    """A pids limit runsc cannot start with is replaced by RLIMIT_NPROC, loudly; a fork bomb stays contained."""
    require_runtime("runsc")
    work = str(tmp_path / "work")
    b = _backend(tasks_dir, work, "runsc", pids_limit=16)
    try:
        result = await _run(b, new_job(run_cmd='feedback-custom nproc "$(ulimit -u)"; feedback-result success'))
        assert result.result == "success", result
        assert result.custom == {"nproc": "16"}
        assert log_events.has("runtime runsc cannot run a container with a pids limit of 16", "RLIMIT_NPROC=16")
        assert log_events.has("cgroup pids limit of 272")
        bomb = await _run(b, new_job(run_cmd=FORK_COUNT, time_limit=10, hard_time_limit=10, mem_limit=256))
        assert bomb.result == "success", bomb
        assert int(bomb.custom["made"]) < 16, bomb.custom
    finally:
        await _aclose_and_check(b, work)


@pytest_twisted.ensureDeferred
async def test_runsc_takes_a_workable_pids_limit(tasks_dir: str, tmp_path: Any, log_events: Any) -> None:
    require_runtime("runsc")
    work = str(tmp_path / "work")
    b = _backend(tasks_dir, work, "runsc", pids_limit=256)
    try:
        result = await _run(b, new_job(run_cmd="feedback-result success"))
        assert result.result == "success", result
        assert log_events.has("runtime runsc takes the pids limit")
    finally:
        await _aclose_and_check(b, work)


FORK_COUNT = r"""
made=$( (i=0; while [ $i -lt 40 ]; do sleep 30 >/dev/null & i=$((i + 1)); echo $i; done) 2>/dev/null | tail -n 1)
kill -9 -1 2>/dev/null  # frees the process slots (a builtin: no fork needed)
n=0
until feedback-custom made "$made" 2>/dev/null || [ $n -ge 50 ]; do n=$((n + 1)); read -t 0.1 x </dev/zero; done
feedback-result success
"""


# -- INGInious' paths ---------------------------------------------------------------

PORTED = r"""
cat > student/t.py <<'T'
def f():
@    @code@@
T
parsetemplate student/t.py
cp student/t.py /archive/filled.py
test -f /task/run-marker && echo yes > /archive/task-seen
feedback-result success
"""


@pytest_twisted.ensureDeferred
async def test_inginious_paths_and_parsetemplate(tasks_dir: str, tmp_path: Any) -> None:
    """A ported task writes /archive and reads /task; parsetemplate fills a template (INGInious' prefix form)."""
    require_docker()
    path = make_task(tasks_dir, "ported", "t", PORTED)
    open(os.path.join(path, "run-marker"), "w").close()
    work = str(tmp_path / "work")
    b = _backend(tasks_dir, work, "runc")
    try:
        result = await _run(b, new_job("ported", "t", inputdata={"code": "x = 1\nreturn x"}))
    finally:
        await _aclose_and_check(b, work)
    assert result.result == "success", result
    assert result.archive is not None
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(result.archive)), mode="r:") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert files == {"filled.py": b"def f():\n    x = 1\n    return x\n", "task-seen": b"yes\n"}


def test_inginious_paths_option(tmp_path: Any) -> None:
    """``inginious_paths=false`` drops the /task and /archive mounts (two gofer mounts fewer under gVisor)."""
    require_docker()
    from inginious_tx.agent.job_folder import JobFolder

    folder = JobFolder(str(tmp_path), new_job())
    for value, expected in (("true", {"/job", "/inginious/helpers", "/task", "/archive"}),
                            ("false", {"/job", "/inginious/helpers"})):  # fmt: skip
        b = _backend(str(tmp_path), str(tmp_path / "w"), "runc", inginious_paths=value)
        targets = {m["Target"] for m in b._container_config(TEST_IMAGE, folder)["mounts"]}
        assert targets == expected
