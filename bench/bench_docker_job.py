"""What the Docker agent costs on top of Docker itself, side by side in one run.

    python bench/bench_docker_job.py [--jobs 20] [--runtimes runc,runsc] [--image IMAGE]

In one process: a backend (``BackendService`` on TCP), a Docker agent with
one environment per runtime (``NAME=IMAGE,runtime=RUNTIME``) and a client.
For each runtime, alternately (so that both see the same machine load):

- **job**: a trivial task (``feedback-result success``) submitted by the
  client, timed from ``ClientNewJob`` to ``BackendJobDone``;
- **bare**: ``docker run --rm --network none [--runtime R] IMAGE /bin/sh -c true``;
- **run_student job**: a task that calls ``run_student true`` once;
- **2 bare**: two such ``docker run`` one after the other.

Prints p50/p90 per row and the p50 ratios job/bare and run_student job/2 bare.
Needs the Docker engine, the test image (``.ci/docker-setup.sh``) and, for
runsc, ``.ci/setup-runsc.sh``.
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
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from inginious_tx import transport  # noqa: E402
from inginious_tx.agent.core import Agent  # noqa: E402
from inginious_tx.agent.docker import DockerBackend  # noqa: E402
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
        d: defer.Deferred = defer.Deferred()
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
    envs = [f"{r}={args.image},runtime={r}" for r in runtimes]
    backend = DockerBackend(reactor, AgentConfig(tasks, envs, 2, {"work_dir": work, "poll_interval": 0.5}))
    agent = Agent(reactor, backend, "bench-docker", 2, agents.connect_endpoint)
    agent.startService()
    client = _Client()
    conn = transport.connect(reactor, clients.connect_endpoint, client)
    await wait_for(reactor, lambda: client.peer is not None, 10)
    client.peer.send(ClientHello("bench"))
    await wait_for(reactor, lambda: set(runtimes) <= set(client.envs), 30)
    rows = []
    n = 0
    try:
        for runtime in runtimes:
            samples: Dict[str, List[float]] = {"job": [], "bare": [], "run_student job": [], "2 bare": []}
            for i in range(args.jobs + 1):  # the first round warms up (runtime probe, page cache)
                n += 1
                start = time.perf_counter()
                done = await client.run(f"t{n}", "trivial", runtime)
                job = time.perf_counter() - start
                assert done.result[0] == "success", done.result
                bare = await deferToThread(bare_run, args.image, runtime, 1)
                n += 1
                start = time.perf_counter()
                done = await client.run(f"s{n}", "student", runtime)
                rs_job = time.perf_counter() - start
                assert done.result[0] == "success", done.result
                bare2 = await deferToThread(bare_run, args.image, runtime, 2)
                if i:
                    for key, value in (("job", job), ("bare", bare), ("run_student job", rs_job), ("2 bare", bare2)):
                        samples[key].append(value * 1000)
            rows.append((runtime, samples))
    finally:
        await conn.stop()
        await agent.stopService()
        await service.stopService()
        shutil.rmtree(tasks, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.jobs} samples per row, image {args.image}, {os.cpu_count()} CPUs")
    print(f"{'runtime':8} {'what':16} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8}")
    for runtime, samples in rows:
        for key, values in samples.items():
            print(
                f"{runtime:8} {key:16} {pct(values, 0.5):8.0f} {pct(values, 0.9):8.0f} {statistics.mean(values):8.0f}"
            )
        r1 = pct(samples["job"], 0.5) / pct(samples["bare"], 0.5)
        r2 = pct(samples["run_student job"], 0.5) / pct(samples["2 bare"], 0.5)
        print(f"{runtime:8} p50 ratio job/bare = {r1:.2f}; run_student job / 2 bare = {r2:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--runtimes", default="runc,runsc")
    parser.add_argument("--image", default=os.environ.get("INGINIOUS_TX_TEST_IMAGE", "inginious-tx/busybox:test"))
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
