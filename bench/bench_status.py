"""What the status pages cost on a big backend: 100,000 waiting jobs, 1,000 agents.

    python bench/bench_status.py [--waiting 100000] [--agents 1000] [--slots 4]
                                 [--history 3600] [--repeat 20] [--html page.html]

A :class:`Backend` on a fake clock is filled through its handlers (fake
peers, no sockets), with a job observer and sampler
(:class:`StatusRecorder`) attached from the start; then ``--history``
seconds are simulated, one sample a second, with jobs finishing, new ones
arriving and agents coming and going, so that the ring buffers are full.
Then, timed with real time on this process:

- one sample (what the recorder costs the backend every second);
- one event of ``/events`` (encoded once per sample for all streams);
- ``/`` (snapshot + history view + HTML with the charts), ``/status.json``,
  ``/history.json`` and ``/metrics``: the work of one request, without HTTP.

``--html FILE`` writes the page, to look at it (e.g. with a headless browser).

``--hostile N`` adds a hostile client that queues N jobs, each for an
environment and a course of its own that no agent offers (label values the
client chooses), times the pages with them, then measures (tracemalloc) the
memory they cost and what is kept once the client has left.  The figures
of issue 16::

    python bench/bench_status.py --waiting 0 --agents 100 --hostile 100000 --history 600
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.exposition import generate_latest  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from inginious_tx.backend.core import Backend, BackendSettings  # noqa: E402
from inginious_tx.backend.metrics import backend_registry  # noqa: E402
from inginious_tx.backend.policies import DEFAULT_POLICY, load_policy  # noqa: E402
from inginious_tx.backend.status import _event, render_html, status_snapshot  # noqa: E402
from inginious_tx.backend.testing import FakePeer, agent_hello, job_done, new_job  # noqa: E402
from inginious_tx.backend.timeseries import StatusRecorder  # noqa: E402
from inginious_tx.messages import ClientHello  # noqa: E402

ENVS = [f"env-{i}" for i in range(12)]
RESULTS = ["success"] * 8 + ["failed"] * 3 + ["error", "crash", "timeout"]


class Load:
    """A backend with clients, agents and a deep queue, driven by hand."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rng = random.Random(7)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        settings = BackendSettings(max_waiting=None, client_idle_timeout=1e9, client_silence_timeout=1e9)
        self.backend = Backend(self.clock, load_policy(args.policy), settings)
        self.recorder = StatusRecorder(self.backend, self.clock, args.history)
        self.recorder.start()
        self.clients = [FakePeer(f"c{i}".encode(), f"client-peer-{i}", wire=False) for i in range(args.clients)]
        for i, peer in enumerate(self.clients):
            self.backend.client_handler.client_hello(peer, ClientHello(f"frontend-{i}"))
        self.n = 0
        self.args = args
        # the queue first (no agent yet: everything waits), then the agents
        for _ in range(args.waiting):
            self.submit()
        self.agents: List[FakePeer] = []
        for i in range(args.agents):
            self.add_agent(i)

    def submit(self) -> None:
        self.n += 1
        peer = self.clients[self.n % len(self.clients)]
        env = ENVS[min(len(ENVS) - 1, int(self.rng.expovariate(0.5)))]
        job = new_job(f"j{self.n}", environment=env, course_id=f"course-{self.n % 200}", task_id=f"t{self.n % 37}")
        self.backend.client_handler.client_new_job(peer, job)

    def add_agent(self, i: int) -> None:
        peer = FakePeer(f"a{i}".encode(), f"agent-peer-{i}", wire=False)
        envs = {ENVS[i % len(ENVS)], ENVS[(i * 7) % len(ENVS)], ENVS[0]}
        self.backend.agent_handler.agent_hello(peer, agent_hello(f"agent-{i:04d}", self.args.slots, sorted(envs)))
        self.agents.append(peer)

    def hostile(self, n: int, prefix: str) -> FakePeer:
        """A client that queues ``n`` jobs, each with a made-up environment and course of its own."""
        peer = FakePeer(f"h-{prefix}".encode(), f"hostile-peer-{prefix}", wire=False)
        self.backend.client_handler.client_hello(peer, ClientHello(f"hostile-{prefix}"))
        for i in range(n):
            job = new_job(f"{prefix}{i}", environment=f"made-up-{prefix}{i}", course_id=f"course-{prefix}{i}")
            self.backend.client_handler.client_new_job(peer, job)
        return peer

    def second(self, finishing: int) -> None:
        """One simulated second: ``finishing`` jobs end (each replaced by a new one), then a sample."""
        for _ in range(finishing):
            peer = self.agents[self.rng.randrange(len(self.agents))]
            agent = self.backend._agents.get(peer)  # the bench may look inside
            if agent is None or not agent.running:
                continue
            key = next(iter(agent.running))
            self.backend.agent_handler.agent_job_done(peer, job_done(key, self.rng.choice(RESULTS)))
            self.submit()
        if self.rng.random() < 0.01:  # an agent flaps
            peer = self.agents[self.rng.randrange(len(self.agents))]
            self.backend.agent_handler.peer_disconnected(peer, "bench")
            i = int(peer.address[1:])
            self.agents.remove(peer)
            self.add_agent(i)
        for peer in self.agents:
            if peer.sent:
                peer.sent.clear()
        self.clock.advance(1)


def timed(fn: Callable[[], Any], repeat: int) -> Dict[str, float]:
    """Best and median wall time of ``fn`` in ms, and its result's size."""
    times = []
    result = None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    size = len(result) if isinstance(result, (bytes, str)) else 0
    return {"best_ms": round(times[0], 3), "median_ms": round(times[len(times) // 2], 3), "bytes": size}


def measure_hostile(load: Load, registry: Any, n: int) -> Dict[str, Any]:
    """Memory (traced) a hostile client's ``n`` made-up labels cost while it waits
    (the pages asked once each) and after it left (a few samples later)."""
    backend, recorder, clock = load.backend, load.recorder, load.clock
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    peer = load.hostile(n, "m")
    recorder.sample()
    sizes = {
        "metrics_bytes": len(generate_latest(registry)),
        "status_json_bytes": len(json.dumps(status_snapshot(backend, clock.seconds(), recorder=recorder), indent=1)),
        "page_bytes": len(render_html(status_snapshot(backend, clock.seconds(), recorder=recorder), None)),
        "event_bytes": len(_event(recorder.latest)),  # type: ignore[arg-type]
    }
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    backend.client_handler.peer_disconnected(peer, "bench")
    for _ in range(3):
        recorder.sample()
        clock.advance(1)
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - base
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {
        "jobs": n,
        **sizes,
        "held_mb (jobs included)": round(held / 1e6, 1),
        "peak_mb": round(peak / 1e6, 1),
        "kept_after_leaving_mb": round(kept / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--history", type=int, default=3600, help="seconds simulated (and kept)")
    parser.add_argument("--rate", type=int, default=40, help="jobs finished per simulated second")
    parser.add_argument("--policy", default=DEFAULT_POLICY)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--html", help="write the status page to this file")
    parser.add_argument(
        "--hostile", type=int, default=0, help="jobs of a client that makes up an environment and a course for each"
    )
    args = parser.parse_args()

    tracemalloc.start()
    t = time.perf_counter()
    load = Load(args)
    before_history = tracemalloc.get_traced_memory()[0]
    fill_s = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(args.history):
        # a daily rhythm in miniature: the finishing rate swings
        load.second(int(args.rate * (1 + 0.6 * ((s // 300) % 3 - 1))))
    history_s = time.perf_counter() - t
    history_bytes = (
        sum(
            len(s.values) * s.values.itemsize
            for group in (load.recorder.history.queue, load.recorder.history.finished, load.recorder.history.busy)
            for s in group.series.values()
        )
        + 2 * len(load.recorder.history.wait_hist) * 8
    )
    tracemalloc.stop()
    backend, recorder, clock = load.backend, load.recorder, load.clock
    assert backend.waiting_count >= args.waiting - args.agents * args.slots, backend.waiting_count
    # the observer's counts agree with a walk over every job
    assert recorder.waiting_per_environment() == backend.waiting_per_environment()
    registry = backend_registry(backend, recorder)
    hostile: Dict[str, Any] = {}
    if args.hostile:
        hostile = measure_hostile(load, registry, args.hostile)
        load.hostile(args.hostile, "t")  # again, untraced, for the timings below
        recorder.sample()

    def page() -> bytes:
        snap = status_snapshot(backend, clock.seconds(), recorder=recorder)
        return render_html(snap, recorder.history.view(3600)).encode()

    if args.html:  # before the timings: they take samples without moving the clock
        Path(args.html).write_bytes(page())
        print(f"page written to {args.html}")
    results = {
        "setup": {
            "waiting": backend.waiting_count,
            "running": backend.running_count,
            "agents": len(backend.agents),
            "slots": sum(a.slots for a in backend.agents),
            "finished": sum(backend.stats.finished.values()),
            "samples": recorder.history.ticks,
            "fill_s": round(fill_s, 1),
            "simulate_s": round(history_s, 1),
            "history_mb": round(history_bytes / 1e6, 1),
            "backend_mb (traced, jobs included)": round(before_history / 1e6, 1),
        },
        "sample (every second)": timed(recorder.sample, args.repeat),
        "event encoding (every second, once)": timed(lambda: _event(recorder.latest), args.repeat),  # type: ignore[arg-type]
        "GET / (page, 1 h of charts)": timed(page, args.repeat),
        "GET /status.json": timed(
            lambda: json.dumps(
                status_snapshot(backend, clock.seconds(), recorder=recorder), indent=1
            ).encode(),
            args.repeat,
        ),
        "GET /history.json": timed(lambda: json.dumps(recorder.history.view(3600)).encode(), args.repeat),
        "GET /metrics": timed(lambda: generate_latest(registry), args.repeat),
        "old: backend.waiting_per_environment() (O(jobs))": timed(
            lambda: json.dumps(backend.waiting_per_environment()), args.repeat
        ),
    }
    width = max(len(k) for k in results)
    print(f"setup: {json.dumps(results['setup'])}")
    if hostile:
        print(f"hostile: {json.dumps(hostile)}")
    print(f"{'':{width}}  {'best ms':>9} {'median ms':>10} {'bytes':>9}")
    for name, r in results.items():
        if name == "setup":
            continue
        print(f"{name:{width}}  {r['best_ms']:9.2f} {r['median_ms']:10.2f} {r['bytes']:9d}")


if __name__ == "__main__":
    main()
