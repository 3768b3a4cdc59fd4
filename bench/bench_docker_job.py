"""What the Docker agent costs on top of Docker itself, side by side in one run.

    python bench/bench_docker_job.py [--jobs 20] [--runtimes runc,runsc] [--image IMAGE]
                                     [--slots 8] [--burst 64] [--idle 30]

In one process: a backend (``BackendService`` on TCP), three Docker agents
with one environment per runtime (``NAME=IMAGE,runtime=RUNTIME``): one with
no containers prepared ahead (``pool_max=0``), one as it is by default
(containers prepared ahead, up to its slots; environments ``RUNTIME+pool``),
one with a pool as large as a burst (``pool_max=BURST``; environments
``RUNTIME+big``), and a client.  For each runtime, alternately (so that all
see the same machine load):

- **job**: a trivial task (``feedback-result success``) submitted by the
  client, timed from ``ClientNewJob`` to ``BackendJobDone``, with no pool;
- **pool job**: the same, on the agent as it is by default;
- **bare**: ``docker run --rm --network none [--runtime R] IMAGE /bin/sh -c true``;
- **run_student job**: a task that calls ``run_student true`` once;
- **2 bare**: two such ``docker run`` one after the other.

Then, per runtime, a **burst**: ``--burst`` trivial jobs submitted at once,
to each agent (``--slots`` slots each): p50/p99/max of submit-to-result,
how many were answered, and the containers of jobs left 30 s after the
last answer (a pooled job is answered before its container is removed).
The agent with the large pool gets two: a first one that shows it the
demand (``+big cold``), then, once its pool has refilled (how many were
ready is printed), a second (``+big warm``).  Then the **idle cost** of a
full pool, for the default pool and the large one: over ``--idle`` seconds
with the pool full, the CPU time of ``dockerd`` and ``containerd``, against
the same span with no container waiting (measured first), and the memory
(RSS) of this process and of the processes of the waiting containers
(their shims, init and shell; under runsc the sandbox too; RSS counts
shared pages in each process, PSS splits them), in total and per waiting
container (PSS).

Prints p50/p90 per row and the p50 ratios job/bare, pool job/bare and
run_student job/2 bare.  Needs the Docker engine, the test image
(``.ci/docker-setup.sh``) and, for runsc, ``.ci/setup-runsc.sh``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from inginious_tx import transport  # noqa: E402
from inginious_tx.agent.container_pool import KeyStats  # noqa: E402
from inginious_tx.agent.core import Agent  # noqa: E402
from inginious_tx.agent.docker import LABEL_AGENT, DockerBackend  # noqa: E402
from inginious_tx.agent.docker_pool import LABEL_POOL  # noqa: E402
from inginious_tx.agent.result import AgentConfig  # noqa: E402
from inginious_tx.backend.service import BackendService  # noqa: E402
from inginious_tx.messages import BackendJobDone, BackendUpdateContainers, ClientHello, ClientNewJob  # noqa: E402

TASKS = {
    "trivial": "#!/bin/sh\nfeedback-result success\n",
    "student": "#!/bin/sh\nrun_student true || exit 1\nfeedback-result success\n",
}


class _Client:
    """A client that resolves one Deferred per job id."""

    def __init__(self) -> None:
        self.waiting: Dict[str, defer.Deferred] = {}
        self.envs: List[str] = []
        self.peer: Any = None

    def peer_connected(self, peer: Any) -> None:
        self.peer = peer

    def peer_disconnected(self, peer: Any, reason: str) -> None:
        pass

    def message_received(self, peer: Any, message: Any) -> None:
        if isinstance(message, BackendUpdateContainers):
            self.envs = list(message.available_containers)
        elif isinstance(message, BackendJobDone):
            d = self.waiting.pop(message.job_id, None)
            if d is not None:
                d.callback(message)

    def run(self, job_id: str, task_id: str, env: str) -> defer.Deferred:
        from twisted.internet import reactor

        d: defer.Deferred = defer.Deferred()
        d.addTimeout(300, reactor)  # a lost answer fails the bench instead of hanging it
        self.waiting[job_id] = d
        self.peer.send(ClientNewJob(job_id, 0, "bench", task_id, {}, env, False, 10, 30, 64, False, "bench", None))
        return d


def bare_run(image: str, runtime: str, times: int) -> float:
    """Seconds for ``times`` sequential bare ``docker run`` (blocking)."""
    argv = ["docker", "run", "--rm", "--network", "none"]
    if runtime != "runc":
        argv.append(f"--runtime={runtime}")
    argv += [image, "/bin/sh", "-c", "true"]
    start = time.perf_counter()
    for _ in range(times):
        subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


async def wait_for(reactor: Any, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await task.deferLater(reactor, 0.05, lambda: None)


def pct(values: List[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _pids_named(*names: str) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() in names:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _cpu_seconds(pids: List[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _pss_mb(pid: int) -> float:
    """The proportional set size of ``pid`` (shared pages split among their users), in MB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _container_processes(cids: List[str]) -> List[int]:
    """Host pids whose command line or cgroup names one of the containers (shims, runsc, init, shell)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                text = f.read()
            with open(f"/proc/{entry}/cgroup", "rb") as f:
                text += f.read()
        except OSError:
            continue
        if any(cid.encode() in text for cid in cids):
            found.append(int(entry))
    return found


def _containers_of(instance_id: str, pooled: bool) -> List[str]:
    """Ids of the agent's containers: waiting in its pool, or not (blocking)."""
    argv = ["docker", "ps", "-a", "-q", "--no-trunc", "--filter", f"label={LABEL_AGENT}={instance_id}"]
    ids = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()
    waiting = subprocess.run(argv + ["--filter", f"label={LABEL_POOL}"], check=True, capture_output=True, text=True)
    in_pool = set(waiting.stdout.split())
    return [c for c in ids if (c in in_pool) == pooled]


async def idle_cost(reactor: Any, seconds: float) -> Tuple[float, float]:
    """CPU seconds of dockerd and containerd over ``seconds`` of idleness; this process's RSS in MB."""
    pids = await deferToThread(_pids_named, "dockerd", "containerd")
    before = _cpu_seconds(pids)
    await task.deferLater(reactor, seconds, lambda: None)
    return _cpu_seconds(pids) - before, _rss_mb(os.getpid())


async def main(reactor: Any, args: argparse.Namespace) -> None:
    tasks = tempfile.mkdtemp(prefix="bench-tasks-")
    work = tempfile.mkdtemp(prefix="bench-work-")
    for name, run in TASKS.items():
        os.makedirs(os.path.join(tasks, "bench", name))
        path = os.path.join(tasks, "bench", name, "run")
        with open(path, "w") as f:
            f.write(run)
        os.chmod(path, 0o755)
    runtimes = args.runtimes.split(",")
    service = BackendService(reactor, ["tcp:0:interface=127.0.0.1"], ["tcp:0:interface=127.0.0.1"], shutdown_grace=0)
    service.startService()
    (clients,), (agents,) = [[x] for x in await service.ready]
    options = {"poll_interval": 0.5}
    plain = DockerBackend(reactor, AgentConfig(
        tasks, [f"{r}={args.image},runtime={r}" for r in runtimes], args.slots,
        {**options, "work_dir": os.path.join(work, "plain"), "pool_max": "0"}))  # fmt: skip
    pooled = DockerBackend(reactor, AgentConfig(
        tasks, [f"{r}+pool={args.image},runtime={r}" for r in runtimes], args.slots,
        {**options, "work_dir": os.path.join(work, "pool")}))  # fmt: skip
    big = DockerBackend(reactor, AgentConfig(
        tasks, [f"{r}+big={args.image},runtime={r}" for r in runtimes], args.slots,
        {**options, "work_dir": os.path.join(work, "big"), "pool_max": str(args.burst)}))  # fmt: skip
    assert plain.pool is None and pooled.pool is not None and big.pool is not None
    bench_agents = [
        Agent(reactor, backend, f"bench-{name}", args.slots, agents.connect_endpoint)
        for name, backend in (("plain", plain), ("pool", pooled), ("big", big))
    ]
    client = _Client()
    conn = transport.connect(reactor, clients.connect_endpoint, client)
    await wait_for(reactor, lambda: client.peer is not None, 10)
    client.peer.send(ClientHello("bench"))
    base_cpu, base_rss = await idle_cost(reactor, args.idle)  # before any container exists
    for agent in bench_agents:
        agent.startService()
    wanted = set(runtimes) | {f"{r}+pool" for r in runtimes} | {f"{r}+big" for r in runtimes}
    await wait_for(reactor, lambda: wanted <= set(client.envs), 30)
    rows = []
    bursts = []
    idles = []
    n = 0
    try:
        for runtime in runtimes:
            samples: Dict[str, List[float]] = {k: [] for k in ("job", "pool job", "bare", "run_student job", "2 bare")}
            for i in range(args.jobs + 1):  # the first round warms up (runtime probe, page cache, pool demand)
                n += 1
                start = time.perf_counter()
                done = await client.run(f"t{n}", "trivial", runtime)
                job = time.perf_counter() - start
                assert done.result[0] == "success", done.result
                start = time.perf_counter()
                done = await client.run(f"p{n}", "trivial", f"{runtime}+pool")
                pool_job = time.perf_counter() - start
                assert done.result[0] == "success", done.result
                bare = await deferToThread(bare_run, args.image, runtime, 1)
                start = time.perf_counter()
                done = await client.run(f"s{n}", "student", runtime)
                rs_job = time.perf_counter() - start
                assert done.result[0] == "success", done.result
                bare2 = await deferToThread(bare_run, args.image, runtime, 2)
                if i:
                    for key, value in (("job", job), ("pool job", pool_job), ("bare", bare),
                                       ("run_student job", rs_job), ("2 bare", bare2)):  # fmt: skip
                        samples[key].append(value * 1000)
            rows.append((runtime, samples))

            async def burst(env: str, backend: DockerBackend, label: str, ready: Any = "") -> None:
                nonlocal n
                n += 1
                start = time.perf_counter()

                def timed(done: Any, start: float = start) -> Tuple[Any, float]:
                    return done, time.perf_counter() - start

                results = await defer.gatherResults(
                    [client.run(f"b{n}-{k}", "trivial", env).addCallback(timed) for k in range(args.burst)]
                )
                ok = sum(1 for done, _ in results if done.result[0] == "success")
                times = [t * 1000 for _, t in results]
                # pooled jobs are answered before their container is removed: give the removals 30 s
                deadline = time.monotonic() + 30
                while (left := await deferToThread(_containers_of, backend.instance_id, False)) and (
                    time.monotonic() < deadline
                ):
                    await task.deferLater(reactor, 0.2, lambda: None)
                row = (label, len(results), ok, pct(times, 0.5), pct(times, 0.99), max(times), len(left), ready)
                bursts.append(row)

            async def full(backend: DockerBackend) -> int:
                """Wait until the pool has what it wants (at most 180 s); how many wait in it."""
                assert backend.pool is not None
                await wait_for(reactor, lambda: all(
                    s.ready >= s.target and not s.creating for s in backend.pool.stats().values()), 180)  # fmt: skip
                return sum(s.ready for s in backend.pool.stats().values())

            async def idle(backend: DockerBackend, label: str) -> None:
                await full(backend)
                waiting = await deferToThread(_containers_of, backend.instance_id, True)
                procs = await deferToThread(_container_processes, waiting)
                mem = sum(_rss_mb(p) for p in procs)
                pss = sum(_pss_mb(p) for p in procs)
                cpu, rss = await idle_cost(reactor, args.idle)
                idles.append((label, len(waiting), cpu, rss, mem, pss, len(procs)))

            await burst(f"{runtime}+pool", pooled, f"{runtime}+pool")
            await burst(runtime, plain, runtime)
            await burst(f"{runtime}+big", big, f"{runtime}+big cold")
            ready = await full(big)
            await burst(f"{runtime}+big", big, f"{runtime}+big warm", ready)
            # the idle cost of the pools, once full (their targets after the bursts)
            await idle(pooled, f"{runtime}+pool")
            await idle(big, f"{runtime}+big")
        stats = {f"{name} {k}": (s.hits, s.misses, s.dead, KeyStats.percentile(s.ready_seconds_hit, 0.5),
                                 KeyStats.percentile(s.ready_seconds_miss, 0.5))
                 for name, backend in (("default", pooled), ("big", big))
                 for k, s in (backend.pool.stats() if backend.pool else {}).items()}  # fmt: skip
    finally:
        await conn.stop()
        for agent in bench_agents:
            await agent.stopService()
        await service.stopService()
        shutil.rmtree(tasks, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    after = [
        len(await deferToThread(_containers_of, b.instance_id, p)) for b in (plain, pooled, big) for p in (True, False)
    ]
    print(f"{args.jobs} samples per row, image {args.image}, {os.cpu_count()} CPUs, {args.slots} slots per agent")
    print(f"{'runtime':8} {'what':16} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8}")
    for runtime, samples in rows:
        for key, values in samples.items():
            print(
                f"{runtime:8} {key:16} {pct(values, 0.5):8.0f} {pct(values, 0.9):8.0f} {statistics.mean(values):8.0f}"
            )
        r1 = pct(samples["job"], 0.5) / pct(samples["bare"], 0.5)
        r3 = pct(samples["pool job"], 0.5) / pct(samples["bare"], 0.5)
        r2 = pct(samples["run_student job"], 0.5) / pct(samples["2 bare"], 0.5)
        print(f"{runtime:8} p50 ratio job/bare = {r1:.2f}; pool job/bare = {r3:.2f}; "
              f"run_student job / 2 bare = {r2:.2f}")  # fmt: skip
    print(f"burst of {args.burst} jobs at once, {args.slots} slots (big: pool_max={args.burst}):")
    print(f"{'env':16} {'answered':>8} {'success':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'left':>5} "
          f"{'ready before':>12}")  # fmt: skip
    for env, answered, ok, p50, p99, top, left, ready in bursts:
        print(f"{env:16} {answered:8} {ok:8} {p50:8.0f} {p99:8.0f} {top:8.0f} {left:5} {ready!s:>12}")
    print(f"idle {args.idle:g} s: no container waiting: dockerd+containerd {base_cpu:.2f} CPU s, this process "
          f"{base_rss:.0f} MB RSS")  # fmt: skip
    for label, count, cpu, rss, mem, pss, nprocs in idles:
        each = f"{pss / count:.1f}" if count else "-"
        print(f"idle {args.idle:g} s, {label}: {count} containers waiting: dockerd+containerd {cpu:.2f} CPU s, this "
              f"process {rss:.0f} MB RSS, their {nprocs} processes {mem:.0f} MB RSS, {pss:.0f} MB PSS "
              f"({each} MB PSS each)")  # fmt: skip
    for key, (hits, misses, dead, hit50, miss50) in stats.items():
        h = "-" if hit50 is None else f"{hit50 * 1000:.0f}"
        m = "-" if miss50 is None else f"{miss50 * 1000:.0f}"
        print(f"pool {key}: {hits} hits, {misses} misses, {dead} dead; job to container ready p50 {h} ms (hit), "
              f"{m} ms (miss)")  # fmt: skip
    print(f"containers left after shutdown (no pool, default pool, big pool: waiting/other each): {after}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--runtimes", default="runc,runsc")
    parser.add_argument("--image", default=os.environ.get("INGINIOUS_TX_TEST_IMAGE", "inginious-tx/busybox:test"))
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--log", action="store_true", help="the agents' and backend's log on stderr")
    if parser.parse_known_args()[0].log:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
