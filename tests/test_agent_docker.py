"""The Docker agent backend against a real Docker engine.

Jobs run in the offline busybox image of ``.ci/docker-setup.sh``.  Each test
checks one outcome or one isolation property; the ``backend`` fixture checks
after every test that no container and no job folder is left behind.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import time
from typing import Any, Dict, List, Optional

import pytest
import pytest_twisted
from docker_support import (
    TEST_IMAGE,
    assert_left_clean,
    bridge_gateway,
    containers_labelled,
    docker_problem,
    make_task,
    new_job,
    pool_containers,
    processes_in_container,
    require_docker,
)
from twisted.internet import protocol
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols import portforward
from zope.interface.verify import verifyObject

from inginious_tx.agent.core import Agent
from inginious_tx.agent.docker import (
    LABEL_AGENT,
    DockerBackend,
    DockerEngineError,
    _created,
    _flag,
    _parse_environments,
    _parse_user,
)
from inginious_tx.agent.result import AgentConfig, JobResult
from inginious_tx.interfaces import IAgentBackend
from inginious_tx.messages import AgentHello, AgentJobDone, BackendNewJob
from inginious_tx.testing import MemoryTransport, RecordingSink

pytestmark = pytest.mark.docker

RUN_SUCCESS = """\
name=$(getinput name)
feedback-result success
feedback-grade 87.5
feedback-msg -m "hello $name"
echo to-stdout
echo to-stderr >&2
"""


EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples", "tasks")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: Any) -> str:
    """The example course ``demo`` plus a small task of our own, ``course/task``."""
    root = str(tmp_path_factory.mktemp("tasks"))
    shutil.copytree(os.path.join(EXAMPLES, "demo"), os.path.join(root, "demo"), symlinks=True)
    make_task(root, "course", "task", RUN_SUCCESS)
    return root


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _make_backend(tasks_dir: str, work: str, **options: Any) -> DockerBackend:
    opts: Dict[str, Any] = {"work_dir": work, "pids_limit": 64, "poll_interval": 0.2}
    opts.update(options)
    config = AgentConfig(
        tasks_dir=tasks_dir,
        environments=[f"default={TEST_IMAGE}", "absent=inginious-tx/no-such-image:none"],
        slots=4,
        options=opts,
    )
    return DockerBackend(_reactor(), config)


@pytest.fixture
def backend(tasks_dir: str, tmp_path: Any) -> Any:
    require_docker()
    work = str(tmp_path / "work")
    b = _make_backend(tasks_dir, work)
    yield b
    pytest_twisted.blockon(b.close())
    assert_left_clean(b.instance_id, work)


async def _run(backend: DockerBackend, job: BackendNewJob, timeout: float = 30) -> JobResult:
    d = backend.run(job)
    d.addTimeout(timeout, _reactor())
    return await d


async def _wait_for(predicate: Any, timeout: float = 15, what: str = "condition") -> Any:
    """Poll blocking ``predicate`` in a thread until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = await deferToThread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(_reactor(), 0.05, lambda: None)


def _processes_with(token: str) -> List[int]:
    """Host pids whose command line contains ``token`` (blocking)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


async def _container_up(backend: DockerBackend, job: BackendNewJob) -> str:
    """The id of the job's container once it runs, made for it or taken from the pool (a pooled
    container has no job label: it was made before its job was known)."""
    sandbox = await backend.debug_sandbox(job.job_id).addTimeout(60, _reactor())
    assert sandbox is not None, "the job ended before its container ran"
    return str(sandbox.container_id)


# -- the plugin ----------------------------------------------------------------


def test_provides_interface(tmp_path: Any) -> None:
    b = _make_backend(str(tmp_path), str(tmp_path / "work"))
    assert verifyObject(IAgentBackend, b)
    assert b.name == "docker"


def test_no_environment_is_a_clear_error(tmp_path: Any) -> None:
    # without --environment the agent offers the engine's INGInious images (docs/inginious-images.rst)...
    DockerBackend(_reactor(), AgentConfig(tasks_dir=str(tmp_path), environments=[]))
    # ...unless told not to: then it has nothing to offer
    with pytest.raises(ValueError, match="--environment NAME=IMAGE"):
        no_images = {"inginious_images": "false"}
        DockerBackend(_reactor(), AgentConfig(tasks_dir=str(tmp_path), environments=[], options=no_images))


def test_bad_environment_option(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="NAME=IMAGE"):
        DockerBackend(_reactor(), AgentConfig(str(tmp_path), ["broken="], 1, {}))


def test_option_parsing() -> None:
    assert _parse_environments(["default=img:1", " py = reg/py:3 ", "plain"]) == {
        "default": "img:1",
        "py": "reg/py:3",
        "plain": "plain",
    }
    assert _created({"Created": "2024-01-02T03:04:05.123456789Z"}) == 1704164645
    assert _created({"Created": "garbage"}) == 0
    assert _parse_user("1000:1001") == ("1000:1001", (1000, 1001))
    assert _parse_user("1000") == ("1000", (1000, 1000))
    assert _parse_user("worker") == ("worker", None)
    assert [_flag(v) for v in ("false", "no", "0", "true", "ON", True, False)] == [0, 0, 0, 1, 1, 1, 0]
    with pytest.raises(ValueError):
        _flag("maybe")


@pytest_twisted.ensureDeferred
async def test_environments(backend: DockerBackend, log_events: Any) -> None:
    envs = await backend.environments()
    assert list(envs) == ["default"], "the missing image must not be offered"
    info = envs["default"]
    assert info["id"].startswith("sha256:")
    assert isinstance(info["created"], int) and info["created"] > 1_500_000_000
    assert info["ports"] == []
    assert log_events.has("inginious-tx/no-such-image:none", "not offered")


# -- results (the example course: examples/tasks/demo) ------------------------


@pytest_twisted.ensureDeferred
async def test_success_with_output(backend: DockerBackend) -> None:
    result = await _run(backend, new_job(inputdata={"name": "Ada"}, debug=True))
    assert (result.result, result.text, result.grade) == ("success", "hello Ada", 87.5)
    assert result.stdout == "to-stdout\n"
    assert result.stderr == "to-stderr\n"
    # an empty archive/ still gives an archive, as INGInious: the folder alone
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(result.archive)), mode="r:") as tar:
        assert tar.getnames() == [""]
    quiet = await _run(backend, new_job(inputdata={"name": "Ada"}))
    assert (quiet.result, quiet.stdout, quiet.stderr) == ("success", "", ""), "output goes back only when debugged"


@pytest_twisted.ensureDeferred
async def test_example_pass(backend: DockerBackend) -> None:
    result = await _run(backend, new_job("demo", "pass", inputdata={"answer": "42"}))
    assert result.result == "success", result
    assert result.grade == 100.0
    assert "You answered: 42" in result.text
    assert result.custom == {"language": "demo/pass"}


@pytest_twisted.ensureDeferred
async def test_example_quiz_failed_with_problem_feedback(backend: DockerBackend) -> None:
    result = await _run(backend, new_job("demo", "quiz", inputdata={"q1": "42", "q2": "London"}))
    assert result.result == "failed", result
    assert result.grade == 50.0
    assert result.problems == {"q1": ("success", "Right."), "q2": ("failed", "Wrong: it is the capital of France.")}


@pytest_twisted.ensureDeferred
async def test_custom_json_and_state(backend: DockerBackend) -> None:
    cmd = "feedback-custom -j score 5; feedback-state s1; feedback-result failed"
    result = await _run(backend, new_job(run_cmd=cmd))
    assert (result.result, result.custom, result.state) == ("failed", {"score": 5}, "s1")


@pytest_twisted.ensureDeferred
async def test_example_bad_feedback_is_error(backend: DockerBackend) -> None:
    result = await _run(backend, new_job("demo", "bad-feedback"))
    assert result.result == "error", result
    assert "grade" in result.text and "between 0 and 100" in result.text


@pytest_twisted.ensureDeferred
async def test_no_feedback_is_error(backend: DockerBackend) -> None:
    result = await _run(backend, new_job(run_cmd="echo oops >&2; exit 3", debug=True))
    assert result.result == "error"
    assert "code 3" in result.text
    assert result.stderr == "oops\n"


@pytest_twisted.ensureDeferred
async def test_output_is_capped(backend: DockerBackend) -> None:
    cmd = "head -c 1200000 /dev/zero | tr '\\0' a; feedback-result success"
    result = await _run(backend, new_job(run_cmd=cmd, debug=True))
    assert result.result == "success", result.text
    assert result.stdout is not None
    assert result.stdout.startswith("a" * 1000)
    assert result.stdout.endswith("[output cut at 1048576 bytes]")
    assert len(result.stdout) < 1048576 + 100


@pytest_twisted.ensureDeferred
async def test_concurrent_jobs(backend: DockerBackend) -> None:
    jobs = [new_job("demo", "pass", inputdata={"answer": str(i)}) for i in range(4)]
    results = await gatherResults([backend.run(j) for j in jobs]).addTimeout(60, _reactor())
    assert [r.result for r in results] == ["success"] * 4
    assert [r.text.rsplit(" ", 1)[-1] for r in results] == ["0", "1", "2", "3"]


@pytest_twisted.ensureDeferred
async def test_example_archive(backend: DockerBackend) -> None:
    result = await _run(backend, new_job("demo", "archive", inputdata={"code": "print(1)"}))
    assert result.result == "success", result
    assert result.archive is not None
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(result.archive)), mode="r:") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert files == {"logs/build.log": b"compiled fine\n", "submission.txt": b"print(1)"}


@pytest_twisted.ensureDeferred
async def test_example_loop_cpu_timeout(backend: DockerBackend) -> None:
    started = time.monotonic()
    result = await _run(backend, new_job("demo", "loop", time_limit=1, hard_time_limit=20))
    assert result.result == "timeout", result
    assert "CPU" in result.text
    assert time.monotonic() - started < 10


@pytest_twisted.ensureDeferred
async def test_example_loop_wall_timeout(backend: DockerBackend) -> None:
    started = time.monotonic()
    job = new_job("demo", "loop", inputdata={"mode": "sleep"}, time_limit=10, hard_time_limit=1)
    result = await _run(backend, job)
    assert result.result == "timeout", result
    assert "wall-clock" in result.text
    assert time.monotonic() - started < 10


@pytest_twisted.ensureDeferred
async def test_example_memory_overflow(backend: DockerBackend) -> None:
    result = await _run(backend, new_job("demo", "memory", mem_limit=16, debug=True))
    assert result.result == "overflow", result
    assert "16 MB" in result.text
    assert result.stdout == "eating memory...\n", "the output so far comes back with an overflow"


@pytest_twisted.ensureDeferred
async def test_example_forkbomb_contained(backend: DockerBackend) -> None:
    started = time.monotonic()
    result = await _run(backend, new_job("demo", "forkbomb", time_limit=2, hard_time_limit=2, mem_limit=256))
    # The pids limit holds it and the time limit ends it; a burst of forks may also hit the memory
    # limit, or make the task's own shell die on a failed fork (an error: no result reported).
    assert result.result in ("timeout", "overflow", "error"), result
    assert "can't fork" in (result.stderr or "") or result.result != "error", result
    assert time.monotonic() - started < 15


@pytest_twisted.ensureDeferred
async def test_example_orphans_do_not_survive(backend: DockerBackend) -> None:
    token = f"orphan-{os.getpid()}-{time.monotonic_ns()}"
    result = await _run(backend, new_job("demo", "orphans", inputdata={"token": token}))
    assert result.result == "success", result
    left = await deferToThread(_processes_with, token)
    assert left == [], "background processes of the job survived it"


@pytest_twisted.ensureDeferred
async def test_kill_stops_every_process(backend: DockerBackend) -> None:
    job = new_job(run_cmd="sleep 300 & setsid sleep 301 & sleep 302", time_limit=60)
    d = backend.run(job)
    d.addTimeout(30, _reactor())
    container = await _container_up(backend, job)
    pids = await _wait_for(lambda: len(processes_in_container(container)) >= 3 and processes_in_container(container))
    backend.kill(job.job_id)
    backend.kill((b"nobody", "unknown"))  # ignored
    result = await d
    assert result.result == "killed"
    alive = await deferToThread(lambda: [p for p in pids if os.path.exists(f"/proc/{p}")])
    assert alive == [], "processes of a killed job survived"


class _LosesFirstKill(DockerBackend):
    """A kill that reaches the engine before the container started is lost: simulate it."""

    lost = 0

    def _thd_kill(self, client: Any, container_id: str) -> None:
        if not self.lost:
            self.lost += 1
            return
        super()._thd_kill(client, container_id)


@pytest_twisted.ensureDeferred
async def test_lost_kill_is_repeated(tasks_dir: str, tmp_path: Any) -> None:
    require_docker()
    config = AgentConfig(tasks_dir, [f"default={TEST_IMAGE}"], 1, {"work_dir": str(tmp_path), "poll_interval": 0.2})
    b = _LosesFirstKill(_reactor(), config)
    try:
        job = new_job(run_cmd="sleep 300", time_limit=60)
        d = b.run(job)
        await _container_up(b, job)
        started = time.monotonic()
        b.kill(job.job_id)
        result = await d.addTimeout(30, _reactor())
        assert (result.result, b.lost) == ("killed", 1)
        assert time.monotonic() - started < 5
    finally:
        await b.close()
    assert await deferToThread(containers_labelled, LABEL_AGENT, b.instance_id) == []


@pytest_twisted.ensureDeferred
async def test_kill_while_preparing(backend: DockerBackend) -> None:
    job = new_job(run_cmd="feedback-result success")
    d = backend.run(job)
    backend.kill(job.job_id)  # before the container exists
    result = await d.addTimeout(30, _reactor())
    assert result.result == "killed"


@pytest_twisted.ensureDeferred
async def test_unknown_environment_and_task(backend: DockerBackend) -> None:
    r1 = await _run(backend, new_job(environment="absent-too"))
    assert r1.result == "crash" and "absent-too" in r1.text
    r2 = await _run(backend, new_job(task="nope"))
    assert r2.result == "crash" and "does not exist" in r2.text


# -- isolation -----------------------------------------------------------------

ISOLATION = r"""
can_write() { ( : > "$1" ) 2>/dev/null && echo yes || echo no; }
first() { for f in "$@"; do [ -r "$f" ] && { cat "$f"; return; }; done; echo none; }
feedback-custom uid "$(id -u)"
feedback-custom root "$(can_write /x)"
feedback-custom etc "$(can_write /etc/x)"
feedback-custom bin "$(can_write /bin/x)"
feedback-custom tmp "$(can_write /tmp/x)"
feedback-custom helpers "$(can_write /inginious/helpers/x)"
feedback-custom helpers_mount "$(grep ' /inginious/helpers ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1)"
feedback-custom student "$(can_write "$INGINIOUS_STUDENT/x")"
feedback-custom task "$(can_write ./made-by-task)"
feedback-custom jobtmp "$(can_write "$TMPDIR/x")"
feedback-custom socket "$(ls /var/run/docker.sock /run/docker.sock 2>/dev/null | wc -l)"
feedback-custom docker_env "$(env | grep -c DOCKER)"
feedback-custom capeff "$(awk '/^CapEff/ {print $2}' /proc/self/status)"
feedback-custom nnp "$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status)"
feedback-custom mem "$(first /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max)"
feedback-custom memsw "$(first /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes /sys/fs/cgroup/memory.swap.max)"
feedback-custom pids "$(first /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max)"
feedback-custom links "$(ip -o link | cut -d: -f2 | tr -d ' ' | sort | tr '\n' ' ')"
feedback-result success
"""


@pytest_twisted.ensureDeferred
async def test_isolation(backend: DockerBackend) -> None:
    result = await _run(backend, new_job(run_cmd=ISOLATION, mem_limit=48))
    assert result.result == "success", result
    c = result.custom
    assert c["uid"] != "0", "tasks must not run as root"
    for place in ("root", "etc", "bin", "tmp", "helpers"):
        assert c[place] == "no", f"the task could write in {place}"
    assert c["helpers_mount"] == "ro"
    assert (c["student"], c["task"], c["jobtmp"]) == ("yes", "yes", "yes")
    assert c["socket"] == "0", "the Docker socket is visible in the container"
    assert c["docker_env"] == "0"
    assert int(c["capeff"], 16) == 0
    assert c["nnp"] == "1"
    assert c["mem"] == str(48 << 20)
    # no swap on top of the memory limit: v1 memsw == mem, v2 swap.max == 0
    assert c["memsw"] in (str(48 << 20), "0"), c["memsw"]
    assert c["pids"] == "64"
    assert c["links"].split() == ["lo"], "network not cut off"


FORK_BOMB = r"""
stop="$TMPDIR/stop"
( bomb() { [ -e "$stop" ] && exit 0; bomb | bomb & }; bomb ) 2>/dev/null &
read -t 1 x < /dev/zero
: > "$stop"
for i in 1 2 3 4 5; do kill -9 -1 2>/dev/null; read -t 0.1 x < /dev/zero; done
feedback-custom events "$(cat /sys/fs/cgroup/pids/pids.events 2>/dev/null || cat /sys/fs/cgroup/pids.events)"
feedback-result success
"""


@pytest_twisted.ensureDeferred
async def test_fork_bomb_hits_pids_limit(backend: DockerBackend) -> None:
    result = await _run(backend, new_job(run_cmd=FORK_BOMB, time_limit=20, hard_time_limit=20, mem_limit=256))
    assert result.result == "success", result
    hits = int(result.custom["events"].split()[-1])
    assert hits > 0, "the fork bomb never reached the pids limit"


class _Collect(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)  # type: ignore[attr-defined]


NETWORK = (
    'echo hi-from-job | nc -w 2 "$(getinput host)" "$(getinput port)" && r=reached || r=unreachable;'
    'feedback-custom net "$r"; feedback-result success'
)


@pytest_twisted.ensureDeferred
async def test_network(backend: DockerBackend) -> None:
    """Cut off by default; with enable_network the job reaches a server on the host."""
    gateway = await deferToThread(bridge_gateway)
    factory = protocol.Factory.forProtocol(_Collect)
    factory.received = []  # type: ignore[attr-defined]
    port = _reactor().listenTCP(0, factory, interface="0.0.0.0")
    try:
        inputs = {"host": gateway or "172.17.0.1", "port": str(port.getHost().port)}
        cut = await _run(backend, new_job(run_cmd=NETWORK, inputdata=inputs))
        assert cut.custom == {"net": "unreachable"}, cut
        assert factory.received == []  # type: ignore[attr-defined]
        if gateway is None:
            return  # no bridge network on this engine: only the cut-off can be checked
        allowed = await _run(backend, new_job(run_cmd=NETWORK, inputdata=inputs, enable_network=True))
        assert allowed.custom == {"net": "reached"}, allowed
        assert b"".join(factory.received) == b"hi-from-job\n"  # type: ignore[attr-defined]
    finally:
        await port.stopListening()


# -- engine down -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_engine_down(tasks_dir: str, tmp_path: Any, log_events: Any) -> None:
    work = str(tmp_path / "work")
    b = _make_backend(tasks_dir, work, docker_url="unix:///nonexistent.sock")
    try:
        with pytest.raises(DockerEngineError, match="^docker engine unavailable: "):
            await b.environments()
        assert log_events.has("docker engine unavailable")
        result = await _run(b, new_job())
        assert result.result == "crash"
        assert result.text.startswith("docker engine unavailable: ")
        assert os.listdir(work) == [], "the job folder was left behind"
    finally:
        await b.close()


@pytest_twisted.ensureDeferred
async def test_own_work_dir_removed_on_close(tasks_dir: str) -> None:
    config = AgentConfig(tasks_dir, [f"default={TEST_IMAGE}"], 1, {"docker_url": "unix:///nonexistent.sock"})
    b = DockerBackend(_reactor(), config)
    result = await _run(b, new_job())
    assert result.result == "crash"
    work = b._work_dir
    assert work is not None and os.path.isdir(work)
    await b.close()
    assert not os.path.exists(work)


class _UnixProxyServer(portforward.ProxyServer):
    """One connection through the proxy, to the engine's real socket."""

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        client = self.clientProtocolFactory()
        client.setServer(self)
        self.factory.live.append(self)  # type: ignore[attr-defined]
        _reactor().connectUNIX(self.factory.target, client)  # type: ignore[attr-defined]


class _UnixProxy:
    """A proxy to the engine's socket that the test can cut, as if the engine died."""

    def __init__(self, path: str, target: str) -> None:
        self.path = path
        self.factory = protocol.Factory.forProtocol(_UnixProxyServer)
        self.factory.noisy = False
        self.factory.target = target  # type: ignore[attr-defined]
        self.factory.live = []  # type: ignore[attr-defined]
        self.port: Optional[Any] = None

    def start(self) -> None:
        self.port = _reactor().listenUNIX(self.path, self.factory)

    async def stop(self) -> None:
        live: List[Any] = self.factory.live  # type: ignore[attr-defined]
        for server in live:
            server.transport.abortConnection()
        live.clear()
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()


def _engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        pytest.skip("the engine is not on a Unix socket: cannot put a proxy in front of it")
    return host[len("unix://") :]


@pytest.fixture
def proxied(tasks_dir: str, short_tmp: str) -> Any:
    """(backend, proxy): a backend that reaches the engine through a proxy, initially down."""
    require_docker()
    sock = os.path.join(short_tmp, "docker.sock")
    proxy = _UnixProxy(sock, _engine_socket())
    b = _make_backend(tasks_dir, os.path.join(short_tmp, "work"), docker_url=f"unix://{sock}")
    yield b, proxy
    # closed while the engine is there: it removes what waits in its pool (and what it could not remove before)
    pytest_twisted.blockon(b.close())
    pytest_twisted.blockon(ensureDeferred(proxy.stop()))
    assert_left_clean(b.instance_id)


@pytest_twisted.ensureDeferred
async def test_engine_goes_away_and_comes_back(proxied: Any, short_tmp: str) -> None:
    b, proxy = proxied
    work = os.path.join(short_tmp, "work")
    # the engine is not there yet
    with pytest.raises(DockerEngineError):
        await b.environments()
    r = await _run(b, new_job())
    assert r.result == "crash" and "docker engine unavailable" in r.text
    # it comes up: environments come back, jobs run
    proxy.start()
    assert list(await b.environments()) == ["default"]
    r = await _run(b, new_job(inputdata={"name": "x"}))
    assert r.result == "success", r
    # it goes away while a job runs
    job = new_job(run_cmd="sleep 300")
    d = b.run(job)
    d.addTimeout(30, _reactor())
    cid = await _container_up(b, job)
    await proxy.stop()
    r = await d
    assert r.result == "crash" and r.text.startswith("docker engine unavailable: "), r
    assert os.listdir(work) == []
    # back again: the container it could not remove then is removed now (those waiting in the pool for the
    # next jobs stay)
    proxy.start()
    assert list(await b.environments()) == ["default"]
    await _wait_for(lambda: cid not in containers_labelled(LABEL_AGENT, b.instance_id), what="orphan removal")
    assert set(containers_labelled(LABEL_AGENT, b.instance_id)) <= set(pool_containers(b.instance_id))


@pytest_twisted.ensureDeferred
async def test_agent_says_hello_once_the_engine_is_up(proxied: Any, log_events: Any, until: Any) -> None:
    """With the agent framework: no hello while the engine is down, then hello and jobs."""
    b, proxy = proxied
    reactor = _reactor()
    mem = MemoryTransport(clock=reactor, autopump=True)
    sink = RecordingSink()
    await mem.listen(reactor, "mem:agents", sink)
    agent = Agent(reactor, b, "docker-agent", 2, "mem:agents", transport=mem, hello_retry=0.1, silence_timeout=60)
    agent.startService()
    try:

        def of(cls: type) -> List[Any]:
            return [m for _, m in sink.messages if isinstance(m, cls)]

        await until(lambda: log_events.has("docker engine unavailable"), 10, "the engine to be found down")
        assert of(AgentHello) == []
        proxy.start()
        await until(lambda: of(AgentHello), 10, "the agent's hello")
        assert list(of(AgentHello)[0].available_containers) == ["default"]
        sink.connected[-1].send(new_job("demo", "pass", inputdata={"answer": "yes"}))
        await until(lambda: of(AgentJobDone), 30, "the job's result")
        assert of(AgentJobDone)[0].result[0] == "success"
    finally:
        await agent.stopService()


def test_ci_never_skips() -> None:
    """Under CI the Docker tests above must have run: a missing engine is an error there."""
    if os.environ.get("CI"):
        assert docker_problem() is None, f"CI is set but Docker is unusable: {docker_problem()}"
