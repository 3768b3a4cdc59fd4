"""The local agent backend with real child processes and the example course."""

from __future__ import annotations

import glob
import io
import os
import tarfile
from typing import Any, Dict, List, Optional

import pytest
import pytest_twisted
from host_tools import require_program, require_wget
from twisted.internet.defer import gatherResults
from zope.interface import directlyProvides, providedBy
from zope.interface.verify import verifyClass, verifyObject

from inginious_tx.agent.local import LocalBackend
from inginious_tx.agent.result import AgentConfig, JobResult
from inginious_tx.interfaces import IAgentBackend
from inginious_tx.messages import BackendNewJob
from inginious_tx.plugin import load

TASKS = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "examples", "tasks"))
_n = iter(range(1, 1_000_000))


def job(
    task: str,
    inputdata: Optional[Dict[str, Any]] = None,
    *,
    time_limit: int = 10,
    hard: Optional[int] = None,
    mem: int = 128,
    network: bool = False,
    run_cmd: Optional[str] = None,
    env: str = "default",
    debug: bool = False,
) -> BackendNewJob:
    return BackendNewJob(
        (b"test", f"job-{next(_n)}"), "demo", task, inputdata or {}, env, network, time_limit, hard, mem, debug, run_cmd
    )


def leftovers(marker: str) -> List[int]:
    """Pids of live processes whose cwd or command line mentions ``marker``."""
    found = []
    for proc in glob.glob("/proc/[0-9]*"):
        try:
            cwd = os.readlink(f"{proc}/cwd")
            with open(f"{proc}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            with open(f"{proc}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if not zombie and (marker in cwd or marker in cmd):
            found.append(int(proc[6:]))
    return found


def listing(path: str) -> List[str]:
    return os.listdir(path) if os.path.exists(path) else []


@pytest.fixture
def make_backend(tmp_path: Any, closers: List[Any]) -> Any:
    made = []

    def make(**options: Any) -> LocalBackend:
        work = tmp_path / f"work{len(made)}"
        options = {"work_dir": str(work), **options}
        config = AgentConfig(tasks_dir=TASKS, environments=["default", "other"], options=options)
        from twisted.internet import reactor

        backend = LocalBackend(reactor, config)
        backend.work_dir = str(work)  # type: ignore[attr-defined]
        made.append(backend)
        closers.append(backend.close)
        return backend

    return make


async def run(backend: LocalBackend, j: BackendNewJob, within: Any, timeout: float = 20) -> JobResult:
    result = await within(backend.run(j), timeout)
    assert isinstance(result, JobResult)
    assert listing(backend.work_dir) == [], "the job folder was not removed"  # type: ignore[attr-defined]
    assert leftovers(backend.work_dir) == []  # type: ignore[attr-defined]
    return result


def test_plugin_and_config(tmp_path: Any) -> None:
    from twisted.internet import reactor

    assert load("inginious_tx.agent_backends", "local") is LocalBackend
    verifyClass(IAgentBackend, LocalBackend)
    verifyObject(IAgentBackend, LocalBackend(reactor, AgentConfig(tasks_dir=TASKS)))
    with pytest.raises(ValueError, match="--tasks"):
        LocalBackend(reactor, AgentConfig())
    with pytest.raises(ValueError, match="NAME"):
        LocalBackend(reactor, AgentConfig(tasks_dir=TASKS, environments=["py=python:3"]))
    with pytest.raises(ValueError, match="network_isolation"):
        LocalBackend(reactor, AgentConfig(tasks_dir=TASKS, options={"network_isolation": "maybe"}))


@pytest_twisted.ensureDeferred
async def test_environments(make_backend: Any) -> None:
    envs = await make_backend().environments()
    assert set(envs) == {"default", "other"}
    assert envs["other"]["id"] == "local:other" and envs["other"]["ports"] == []


@pytest_twisted.ensureDeferred
async def test_success_failed_error(make_backend: Any, within: Any) -> None:
    b = make_backend()
    r1, r2, r3, r4 = await within(
        gatherResults(
            [
                b.run(job("pass", {"answer": "hello"})),
                b.run(job("quiz", {"q1": "42", "q2": "london"}, env="other")),
                b.run(job("bad-feedback")),
                b.run(job("quiz", {"q1": "42", "q2": "Paris"})),
            ]
        ),
        20,
    )
    assert (r1.result, r1.grade, r1.text) == ("success", 100.0, "Well done! You answered: hello"), r1
    assert r1.custom == {"language": "demo/pass"}
    assert (r2.result, r2.grade) == ("failed", 50.0)
    assert r2.problems == {"q1": ("success", "Right."), "q2": ("failed", "Wrong: it is the capital of France.")}
    assert r3.result == "error" and "the grade '150' is not between 0 and 100" in r3.text
    assert (r4.result, r4.grade) == ("success", 100.0)
    assert listing(b.work_dir) == []


@pytest_twisted.ensureDeferred
async def test_missing_task_and_run_cmd(make_backend: Any, within: Any) -> None:
    b = make_backend()
    r = await run(b, job("nope"), within)
    assert r.result == "crash" and "demo/nope does not exist" in r.text
    noisy = "echo to-stdout; echo to-stderr >&2; feedback-result failed"
    r = await run(b, job("pass", run_cmd=noisy, debug=True), within)
    assert (r.result, r.stdout, r.stderr) == ("failed", "to-stdout\n", "to-stderr\n")
    r = await run(b, job("pass", run_cmd=noisy), within)
    assert (r.result, r.stdout, r.stderr) == ("failed", "", ""), "a job's output goes back only when it is debugged"
    r = await run(b, job("pass", run_cmd="exit 4"), within)
    assert r.result == "error" and "exited with code 4" in r.text


@pytest_twisted.ensureDeferred
async def test_cpu_and_wall_timeouts(make_backend: Any, within: Any) -> None:
    b = make_backend()
    cpu, wall = await within(
        gatherResults(
            [
                b.run(job("loop", time_limit=1, hard=30)),  # CPU time, whatever the machine's load
                b.run(job("loop", {"mode": "sleep"}, time_limit=1, hard=1)),
            ]
        ),
        15,
    )
    assert cpu.result == "timeout" and "CPU" in cpu.text
    assert wall.result == "timeout" and "wall-clock" in wall.text
    assert leftovers(b.work_dir) == []


@pytest_twisted.ensureDeferred
async def test_memory_overflow(make_backend: Any, within: Any) -> None:
    r = await run(make_backend(), job("memory", mem=48, debug=True), within)
    assert r.result == "overflow" and "48 MB" in r.text
    assert r.stdout == "eating memory...\n"


@pytest_twisted.ensureDeferred
async def test_kill(make_backend: Any, within: Any, until: Any) -> None:
    from twisted.internet import reactor

    b = make_backend()
    j = job("loop", {"mode": "sleep"}, time_limit=30)
    d = b.run(j)
    b.kill((b"test", "unknown"))  # ignored
    await until(lambda: leftovers(b.work_dir), 10, "the job to start")
    started = reactor.seconds()
    b.kill(j.job_id)
    r = await within(d, 10)
    assert r.result == "killed"
    assert reactor.seconds() - started < 3
    assert leftovers(b.work_dir) == [] and listing(b.work_dir) == []


@pytest_twisted.ensureDeferred
async def test_kill_while_preparing(make_backend: Any, within: Any) -> None:
    b = make_backend()
    j = job("loop", {"mode": "sleep"}, time_limit=30)
    d = b.run(j)
    b.kill(j.job_id)  # the job folder is still being made in a thread
    r = await within(d, 10)
    assert r.result == "killed"


@pytest_twisted.ensureDeferred
async def test_archive(make_backend: Any, within: Any) -> None:
    r = await run(make_backend(), job("archive", {"code": "print(42)\n"}), within)
    assert r.result == "success"
    with tarfile.open(fileobj=io.BytesIO(r.archive), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["logs", "logs/build.log", "submission.txt"]
        assert tar.extractfile("submission.txt").read() == b"print(42)\n"


@pytest_twisted.ensureDeferred
async def test_orphans_are_killed(make_backend: Any, within: Any) -> None:
    token = f"tok{os.getpid()}x{next(_n)}"
    r = await run(make_backend(), job("orphans", {"token": token}), within)
    assert r.result == "success"
    assert leftovers(token) == []


@pytest.fixture
def web_server(closers: List[Any]) -> Any:
    """A real HTTP server on 127.0.0.1: the URL it serves."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            return b"hello from the host"

    port = reactor.listenTCP(0, Site(Hello()), interface="127.0.0.1")
    closers.append(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}/hello"


@pytest_twisted.ensureDeferred
async def test_network_is_cut_off(make_backend: Any, within: Any, web_server: str) -> None:
    require_wget()
    b = make_backend()
    off, on = await within(
        gatherResults(
            [b.run(job("network", {"url": web_server})), b.run(job("network", {"url": web_server}, network=True))]
        ),
        20,
    )
    assert off.result == "failed" and "Could not reach" in off.text
    assert on.result == "success" and on.custom == {"body": "hello from the host"}


@pytest_twisted.ensureDeferred
async def test_loopback_works_without_network(make_backend: Any, within: Any) -> None:
    require_program("busybox")
    # a job may still talk to itself over 127.0.0.1, as in a Docker container without network
    cmd = (
        "cd $INGINIOUS_TMP_DIR 2>/dev/null; mkdir -p $TMPDIR/www && echo local > $TMPDIR/www/x && "
        "(busybox httpd -f -p 127.0.0.1:18080 -h $TMPDIR/www &) && sleep 0.3 && "
        "if busybox wget -q -O - http://127.0.0.1:18080/x | grep -q local; then feedback-result success; "
        "else feedback-result failed; fi"
    )
    r = await run(make_backend(), job("pass", run_cmd=cmd), within)
    assert r.result == "success", (r.text, r.stderr)


@pytest_twisted.ensureDeferred
async def test_fork_bomb_is_contained(make_backend: Any, within: Any) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    b = make_backend(max_processes="64")
    # What is asserted is durable: the limit the job's cgroup had and its count
    # of refused forks (which only grows), not a momentary peak of pids.current
    # that a sample every 10 ms on a busy machine can miss.
    seen = {"current": 0, "denied": 0, "system": 0, "max": 0}
    before = len(glob.glob("/proc/[0-9]*"))

    def measure() -> None:
        seen["system"] = max(seen["system"], len(glob.glob("/proc/[0-9]*")) - before)
        for state in list(b._jobs.values()):  # the job's pids cgroup, while it exists
            folder = state.cgroup.dirs.get("pids") if state.cgroup else None
            try:
                with open(os.path.join(folder, "pids.max")) as f:
                    seen["max"] = int(f.read())
                with open(os.path.join(folder, "pids.current")) as f:
                    seen["current"] = max(seen["current"], int(f.read()))
                with open(os.path.join(folder, "pids.events")) as f:
                    seen["denied"] = max(seen["denied"], int(f.read().split()[-1]))
            except (OSError, TypeError, ValueError, IndexError):
                pass

    watch = LoopingCall(measure)
    watch.clock = reactor
    watch.start(0.01)
    try:
        r = await run(b, job("forkbomb", time_limit=2, hard=2), within, timeout=20)
    finally:
        watch.stop()
    assert r.result in ("timeout", "error"), r
    assert seen["system"] < 1000, seen  # an unbounded bomb makes thousands in 2 s
    if b._support is not None and b._support.has("pids"):
        # the limit was set, reached (forks refused) and held
        assert seen["max"] == 64 and seen["denied"] > 0 and seen["current"] <= 64, seen


@pytest_twisted.ensureDeferred
async def test_fallbacks_without_cgroups_or_pid_namespace(make_backend: Any, within: Any, until: Any) -> None:
    b = make_backend(cgroups="off", pid_namespace="off")
    token = f"fb{os.getpid()}x{next(_n)}"
    r = await run(b, job("orphans", {"token": token}), within)
    assert r.result == "success" and leftovers(token) == []
    r = await run(b, job("memory", mem=48), within)
    assert r.result == "overflow", (r.text, r.stderr)
    r = await run(b, job("loop", time_limit=1, hard=30), within)
    assert r.result == "timeout" and "CPU" in r.text
    j = job("loop", {"mode": "sleep"}, time_limit=30)
    d = b.run(j)
    # kill it once it really runs (its process was spawned)
    await until(lambda: j.job_id in b._jobs and b._jobs[j.job_id].proto is not None, 10, "the job to start")
    b.kill(j.job_id)
    assert (await within(d, 10)).result == "killed"
    assert leftovers(b.work_dir) == []


@pytest_twisted.ensureDeferred
async def test_close_removes_everything(make_backend: Any, within: Any) -> None:
    b = make_backend()
    d = b.run(job("loop", {"mode": "sleep"}, time_limit=30))
    await within(b.close(), 10)
    assert (await within(d, 1)).result == "killed"
    assert not glob.glob(f"/sys/fs/cgroup/*/inginious-tx-{os.getpid()}-{id(b):x}")
    assert not glob.glob(f"/sys/fs/cgroup/*/*/*/inginious-tx-{os.getpid()}-{id(b):x}")


def test_stale_cgroups_of_dead_agents_are_removed() -> None:
    from inginious_tx.agent._cgroup import CgroupSupport

    probe = CgroupSupport.probe(f"inginious-tx-{os.getpid()}-stale-probe")
    probe.cleanup()
    if not probe.places:
        pytest.skip("no usable cgroups here")
    parent = os.path.dirname(probe.places["track"].base)
    stale = os.path.join(parent, "inginious-tx-4194305-dead")  # above any pid_max: never alive
    os.makedirs(os.path.join(stale, "job-1"))
    support = CgroupSupport.probe(f"inginious-tx-{os.getpid()}-stale-test")
    support.cleanup()
    assert not os.path.exists(stale)


class _NoSharedPool:
    """The global reactor, minus its shared thread pool."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        directlyProvides(self, providedBy(reactor))  # what it wraps, it provides

    def getThreadPool(self) -> Any:
        raise AssertionError("the local backend used the reactor's shared thread pool")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@pytest_twisted.ensureDeferred
async def test_blocking_work_runs_in_the_backends_own_threads(tmp_path: Any, within: Any) -> None:
    # Job folders and cgroups block: in the backend's own pool, sized by its
    # slots, so that a slow disk cannot starve the reactor's shared pool.
    from twisted.internet import reactor

    config = AgentConfig(tasks_dir=TASKS, slots=3, options={"work_dir": str(tmp_path / "work")})
    backend = LocalBackend(_NoSharedPool(reactor), config)
    result = await within(backend.run(job("pass", {"answer": "yes"})), 20)
    assert result.result == "success", (result.text, result.stderr)
    pool = backend._threads.pool
    assert pool is not None and pool.max == 5 and pool.name == "local-backend"
    await within(backend.close(), 20)
    assert backend._threads.pool is None and pool.joined  # stopped with the backend
    assert not any(t.is_alive() for t in pool.threads)
