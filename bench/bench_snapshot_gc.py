"""Full garbage collections while queue snapshots are rebuilt, with the collector on.

bench_queue.py times slices with the collector off; this one leaves it on and
reports the pauses of Python's oldest-generation collections, which walk every
waiting job.  Each round: one 0.6 and one 0.9 ClientGetQueue (a full build, run
slice by slice), then 200 jobs finish and 200 arrive, then a heartbeat.

    python bench/bench_snapshot_gc.py [--policy fair] [--waiting 100000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_queue as bq  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from inginious_tx.messages import ClientGetQueue, v09  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="fair")
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)

    rnd = random.Random(1)
    clock = Clock()
    settings = bq.BackendSettings(max_waiting=None, max_queued_bytes=None, max_queued_bytes_per_client=None)
    backend = bq.Backend(clock, bq.load_policy(args.policy), settings)
    ch, ah = backend.client_handler, backend.agent_handler
    clients = [bq.CountingPeer(b"client-%d" % i) for i in range(4)]
    for c in clients:
        ch.client_hello(c, bq.ClientHello(c.description))
    agents = [bq.CountingPeer(b"agent-%d" % i) for i in range(bq.AGENTS)]
    for i, a in enumerate(agents):
        envs = [bq.ENVIRONMENTS[i % 10], bq.ENVIRONMENTS[(i + 3) % 10]]
        ah.agent_hello(a, bq.agent_hello(a.description, bq.SLOTS, envs))
    serial = 0

    def make(n: int) -> List[Any]:
        nonlocal serial
        out = []
        for _ in range(n):
            serial += 1
            job = bq.new_job(
                f"j{serial}",
                environment=rnd.choice(bq.ENVIRONMENTS),
                priority=rnd.randrange(4),
                course_id=f"course{rnd.randrange(20)}",
                time_limit=rnd.choice((10, 30, 60, 300)),
            )
            out.append((rnd.choice(clients), job))
        return out

    for peer, message in make(bq.AGENTS * bq.SLOTS + args.waiting):
        ch.client_new_job(peer, message)
    sink = backend.client_sink()
    c06, c09 = bq.EncodingPeer(b"c06"), bq.EncodingPeer(b"c09")
    sink.message_received(c06, bq.ClientHello("c06"))
    sink.message_received(c09, v09.ClientHello("c09"))
    fresh = make(200 * args.rounds)
    gc.collect()

    pauses: List[float] = []
    started = [0.0]

    def watch(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses.append((time.perf_counter() - started[0]) * 1e3)

    gc.callbacks.append(watch)
    try:
        for r in range(args.rounds):
            sink.message_received(c06, ClientGetQueue())
            sink.message_received(c09, v09.ClientGetQueue())
            while clock.calls:  # one delayed call at a time, as a reactor runs them
                call = clock.calls.pop(0)
                call.func(*call.args, **call.kw)
            for peer, message in fresh[r * 200 : (r + 1) * 200]:
                agent = rnd.choice([a for a in agents if a.jobs])
                ah.agent_job_done(agent, bq.job_done(agent.jobs.popleft()))
                ch.client_new_job(peer, message)
            clock.advance(backend.settings.ping_interval)
    finally:
        gc.callbacks.remove(watch)
    worst = max(pauses, default=0.0)
    print(
        f"policy {args.policy}, {backend.waiting_count} waiting, {args.rounds} rebuilds: "
        f"{len(pauses)} full collections, longest {worst:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
