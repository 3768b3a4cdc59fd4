"""What run_student's containers made ahead save a grading job (``student_pool_max``), side by side.

    python bench/bench_run_student_pool.py [--jobs 20] [--image IMAGE] [--gap 1.0]

In one process, four Docker agent backends (runc, root) on one engine, each
running the same task, which calls ``run_student true`` once and times the
call itself (``/proc/uptime``, 10 ms steps):

- **plain**: no pool (``pool_max=0, student_pool_max=0``);
- **student pool**: ``pool_max=0, student_pool_max=1`` (run_student's containers made ahead);
- **grader pool**: ``pool_max=1, student_pool_max=0`` (the job's container made ahead);
- **both**: ``pool_max=1`` (the student pool follows it).

The jobs go one at a time, each agent in turn (so all see the same machine
load), one every ``--gap`` seconds at most, after the pooled agents have
their containers ready again (up to 10 s): a steady trickle of jobs, as in
the hours before a deadline.  Each job is timed from ``run()`` to its
result.  Prints, per agent, p50/p90 of the job and of its run_student call,
and how many calls took a sibling made ahead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import defer, task  # noqa: E402

from inginious_tx.agent.docker import DockerBackend  # noqa: E402
from inginious_tx.agent.result import AgentConfig  # noqa: E402
from inginious_tx.messages import BackendNewJob  # noqa: E402

TASK = """#!/bin/sh
a=$(cut -d' ' -f1 /proc/uptime)
run_student true || exit 1
b=$(cut -d' ' -f1 /proc/uptime)
feedback-msg -m "$a $b"
feedback-result success
"""

AGENTS = {
    # (the grader pool is on by default: "0" where it must be off)
    "plain": {"pool_max": "0", "student_pool_max": "0"},
    "student pool": {"pool_max": "0", "student_pool_max": "1"},
    "grader pool": {"pool_max": "1", "student_pool_max": "0"},
    "both": {"pool_max": "1"},
}


def _job(n: int) -> BackendNewJob:
    return BackendNewJob(
        (b"bench", f"job-{n}"), "bench", "student", {}, "default", False, 10, 60, 128, False, None,
    )  # fmt: skip


def _pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ready(backend: DockerBackend) -> bool:
    for pool in (backend.pool, backend.student_pool):
        if pool is not None and pool.stats() and not all(s.ready for s in pool.stats().values()):
            return False
    return True


async def main(reactor: Any, args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("run as root: the student pool binds folders (and the agent's job folders are tmpfs)")
    tasks = tempfile.mkdtemp(prefix="bench-rs-pool-")
    os.makedirs(os.path.join(tasks, "bench", "student"))
    with open(os.path.join(tasks, "bench", "student", "run"), "w") as f:
        f.write(TASK)
    os.chmod(os.path.join(tasks, "bench", "student", "run"), 0o755)
    backends = {
        name: DockerBackend(reactor, AgentConfig(tasks, [f"default={args.image}"], 2, {"poll_interval": 0.2, **opts}))
        for name, opts in AGENTS.items()
    }
    jobs: Dict[str, List[float]] = {name: [] for name in backends}
    calls: Dict[str, List[float]] = {name: [] for name in backends}
    try:
        for b in backends.values():
            await b.environments()
        n = 0
        for i in range(args.jobs + 1):  # the first round makes the demand: not counted
            for name, b in backends.items():
                deadline = time.monotonic() + 10
                while not _ready(b) and time.monotonic() < deadline:
                    await task.deferLater(reactor, 0.05, lambda: None)
                started = time.monotonic()
                result = await b.run(_job(n))
                took = time.monotonic() - started
                n += 1
                if result.result != "success":
                    sys.exit(f"{name}: job failed: {result}")
                if i:
                    before, after = (float(x) for x in result.text.split()[:2])
                    jobs[name].append(took)
                    calls[name].append(after - before)
                await task.deferLater(reactor, args.gap / len(backends), lambda: None)
    finally:
        for b in backends.values():
            await b.close()
    print(f"{args.jobs} jobs per agent, image {args.image}, runc, one at a time")
    print(f"{'agent':<14} {'job p50':>8} {'job p90':>8} {'call p50':>9} {'call p90':>9}  sibling hits")
    for name, b in backends.items():
        hits = "-"
        if b.student_pool is not None:
            s = list(b.student_pool.stats().values())
            hits = f"{sum(x.hits for x in s)}/{sum(x.hits + x.misses for x in s)}"
        print(
            f"{name:<14} {_pct(jobs[name], 0.5):8.3f} {_pct(jobs[name], 0.9):8.3f} "
            f"{_pct(calls[name], 0.5):9.2f} {_pct(calls[name], 0.9):9.2f}  {hits}"
        )
    base = statistics.median(jobs["plain"])
    for name in backends:
        print(f"job p50 {name} / plain = {statistics.median(jobs[name]) / base:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--image", default=os.environ.get("INGINIOUS_TX_TEST_IMAGE", "inginious-tx/busybox:test"))
    parser.add_argument("--gap", type=float, default=1.0)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
