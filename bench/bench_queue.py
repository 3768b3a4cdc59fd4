"""Per-operation cost of the backend core as the queue grows (in process, fake clock).

Builds a backend with 10 environments and 1,000 agent slots (100 agents of
10 slots, each offering two environments), fills every slot, queues N
waiting jobs, then times a steady mix of operations that keeps N constant:

* submit      a new job that has to wait (ClientNewJob -> queued),
* finish      an agent's AgentJobDone (answer the client, free the slot,
              pop the next waiting job, send BackendNewJob),
* kill-wait   ClientKillJob of a waiting job,
* kill-run    ClientKillJob of a running job (BackendKillJob to its agent).

Messages are built exactly as on the wire path; peers only count them, so
what is measured is the core and the policy.  The cost must stay flat from
1,000 to 100,000 waiting jobs (O(log n) at worst); the queue snapshot
(ClientGetQueue, O(n) by nature) is shown for information.

usage: python bench/bench_queue.py [--sizes 1000,10000,100000] [--ops 5000] [--policy priority]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet.task import Clock  # noqa: E402
from zope.interface import implementer  # noqa: E402

from inginious_tx.backend.core import WAITING, Backend, BackendSettings  # noqa: E402
from inginious_tx.backend.policies import load_policy  # noqa: E402
from inginious_tx.backend.testing import agent_hello, job_done, new_job  # noqa: E402
from inginious_tx.interfaces import IPeer  # noqa: E402
from inginious_tx.messages import BackendNewJob, ClientGetQueue, ClientHello, ClientKillJob, v09  # noqa: E402

ENVIRONMENTS = [f"env{i}" for i in range(10)]
AGENTS = 100
SLOTS = 10
KINDS = ("submit", "finish", "kill-wait", "kill-run")
SNAPSHOTS = ("0.6 question", "0.9 question", "0.6 slice", "0.9 slice", "0.6 build", "0.9 build", "cold", "cold slice")


@implementer(IPeer)
class CountingPeer:
    """Keeps the job ids of BackendNewJob (for agents); counts the rest."""

    def __init__(self, address: bytes) -> None:
        self.address = address
        self.description = address.decode()
        self.count = 0
        self.jobs: Deque[Tuple[bytes, str]] = deque()

    def send(self, message: Any) -> None:
        self.count += 1
        if type(message) is BackendNewJob:
            self.jobs.append(message.job_id)

    def disconnect(self, reason: str = "") -> None:
        pass


def run(size: int, ops: int, policy_name: str, seed: int = 1) -> Dict[str, float]:
    """Microseconds per operation of each kind, with ``size`` jobs waiting."""
    rnd = random.Random(seed)
    clock = Clock()
    backend = Backend(
        clock,
        load_policy(policy_name),
        BackendSettings(max_waiting=None, max_queued_bytes=None, max_queued_bytes_per_client=None),
    )
    ch, ah = backend.client_handler, backend.agent_handler
    clients = [CountingPeer(b"client-%d" % i) for i in range(4)]
    for c in clients:
        ch.client_hello(c, ClientHello(c.description))
    agents = [CountingPeer(b"agent-%d" % i) for i in range(AGENTS)]
    for i, a in enumerate(agents):
        envs = [ENVIRONMENTS[i % 10], ENVIRONMENTS[(i + 3) % 10]]
        ah.agent_hello(a, agent_hello(a.description, SLOTS, envs))

    counter = 0

    # Messages are built before timing starts (a client builds them, not us).
    def make(n: int) -> List[Tuple[CountingPeer, Any]]:
        nonlocal counter
        out = []
        for _ in range(n):
            counter += 1
            out.append(
                (
                    rnd.choice(clients),
                    new_job(
                        f"j{counter}",
                        environment=rnd.choice(ENVIRONMENTS),
                        priority=rnd.randrange(4),
                        course_id=f"course{rnd.randrange(20)}",
                        time_limit=rnd.choice((10, 30, 60, 300)),
                    ),
                )
            )
        return out

    waiting_ids: List[Tuple[CountingPeer, str]] = []
    for peer, message in make(AGENTS * SLOTS + size):
        ch.client_new_job(peer, message)
        if backend.job((peer.address, message.job_id)).state == WAITING:
            waiting_ids.append((peer, message.job_id))
    assert backend.running_count == AGENTS * SLOTS, backend.running_count
    assert backend.waiting_count == size, backend.waiting_count

    fresh = make(3 * ops)
    next_fresh = 0
    times: Dict[str, List[float]] = {k: [] for k in KINDS}
    now = time.perf_counter
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(ops):
            # finish one running job: the freed slot takes a waiting job
            agent = agents[rnd.randrange(AGENTS)]
            while not agent.jobs:
                agent = agents[rnd.randrange(AGENTS)]
            done = job_done(agent.jobs.popleft())
            t = now()
            ah.agent_job_done(agent, done)
            times["finish"].append(now() - t)

            # kill one random job: waiting (removed) or running (killed on its agent)
            j = rnd.randrange(len(waiting_ids))
            waiting_ids[j], waiting_ids[-1] = waiting_ids[-1], waiting_ids[j]
            peer, job_id = waiting_ids.pop()
            key = (peer.address, job_id)
            job = backend.job(key)
            if job is not None:
                kind = "kill-wait" if job.state == WAITING else "kill-run"
                kill = ClientKillJob(job_id)
                t = now()
                ch.client_kill_job(peer, kill)
                times[kind].append(now() - t)
                if kind == "kill-run":
                    # the agent answers the kill (untimed); its slot takes the next job
                    owner = next(a for a in agents if key in a.jobs)
                    owner.jobs.remove(key)
                    ah.agent_job_done(owner, job_done(key, "killed", "killed", 0.0))

            # new submissions bring the number of waiting jobs back to ``size``
            while backend.waiting_count < size:
                peer, message = fresh[next_fresh]
                next_fresh += 1
                t = now()
                ch.client_new_job(peer, message)
                times["submit"].append(now() - t)
                waiting_ids.append((peer, message.job_id))
    finally:
        if gc_was:
            gc.enable()
    # The median resists the odd preemption by other processes; the mean is
    # kept too (it includes the amortised heap rebuilds).
    result: Dict[str, float] = {}
    for k, v in times.items():
        v.sort()
        result[k] = v[len(v) // 2] * 1e6 if v else float("nan")
        result[k + " mean"] = sum(v) / len(v) * 1e6 if v else float("nan")
    result.update(snapshots(backend, clock, clients, agents, fresh[next_fresh:], rnd))
    result["waiting"] = backend.waiting_count
    return result


class EncodingPeer(CountingPeer):
    """A client that encodes what it is sent, as a real transport would."""

    def send(self, message: Any) -> None:
        super().send(message)
        self.last = message.dump()


def snapshots(
    backend: Backend, clock: Clock, clients: List[CountingPeer], agents: List[CountingPeer], fresh: List[Any], rnd: Any
) -> Dict[str, float]:
    """Microseconds of reactor-thread CPU time spent on ClientGetQueue, encoding included.

    For each dialect: ``question``, what answering one costs (from the shared
    build); ``slice``, the longest piece of a rebuild the reactor runs
    between other work (more than 1,000 waiting jobs: the build is made in
    slices, after the queue changed, at most once a heartbeat); ``build``,
    a whole rebuild, all its slices added (the policy's ``ordered()``
    included), after 500 jobs finished and 500 arrived.  ``cold``: the
    first build (every job's row encoded for the first time), ``cold slice``
    its longest piece (or the question itself, if longer).
    """
    sink = backend.client_sink()
    c06 = EncodingPeer(b"client-06")
    c09 = EncodingPeer(b"client-09")
    sink.message_received(c06, ClientHello("c06"))
    sink.message_received(c09, v09.ClientHello("c09"))
    # CPU time of this thread: on a shared machine, other processes' load is
    # not the question's cost.
    now = time.thread_time
    out: Dict[str, float] = {}
    gc.collect()

    def timed(call: Any, *args: Any) -> float:
        # As for the operations above: the collector's pauses belong to
        # whoever allocated before, not to this question.
        gc.disable()
        try:
            t = now()
            call(*args)
            return (now() - t) * 1e6
        finally:
            gc.enable()

    def build() -> Tuple[float, float]:
        """Run the pending build's slices: (largest, total)."""
        largest = total = 0.0
        # One delayed call at a time, as a reactor runs them (Clock.advance
        # would also run the calls they schedule for the same instant).
        while clock.calls:
            call = clock.calls.pop(0)
            spent = timed(call.func, *call.args, **call.kw)
            largest, total = max(largest, spent), total + spent
        return largest, total

    def ask(peer: EncodingPeer, message: Any) -> Tuple[float, float]:
        """(total, largest slice) of a question and the build it waits for."""
        before = peer.count
        spent = timed(sink.message_received, peer, message)
        largest, total = build()
        assert peer.count == before + 1, "no answer"
        return spent + total, max(spent, largest)

    cold06, slice06 = ask(c06, ClientGetQueue())
    cold09, slice09 = ask(c09, v09.ClientGetQueue())
    out["cold"], out["cold slice"] = cold06 + cold09, max(slice06, slice09)
    # churn: some jobs finish (the freed slots take waiting ones), as many arrive
    ah = backend.agent_handler
    for peer, message in fresh[:500]:
        busy = [a for a in agents if a.jobs]
        agent = rnd.choice(busy)
        ah.agent_job_done(agent, job_done(agent.jobs.popleft()))
        backend.client_handler.client_new_job(peer, message)
    clock.advance(backend.settings.ping_interval)
    for name, peer, message in (("0.6", c06, ClientGetQueue()), ("0.9", c09, v09.ClientGetQueue())):
        out[f"{name} question"] = timed(sink.message_received, peer, message)
        out[f"{name} slice"], out[f"{name} build"] = build()
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="waiting-queue sizes, comma-separated")
    parser.add_argument("--ops", type=int, default=5000, help="operations of each kind timed per size")
    parser.add_argument("--policy", default="priority", help="scheduling policy name")
    parser.add_argument("--max-ratio", type=float, default=3.0, help="largest/smallest cost ratio still called flat")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"policy {args.policy}: {len(ENVIRONMENTS)} environments, {AGENTS * SLOTS} slots, {args.ops} ops per size")
    print("microseconds per operation: median (mean)")
    header = f"{'waiting':>9} | " + " | ".join(f"{k:>15}" for k in KINDS)
    print(header)
    print("-" * len(header))
    rows = []
    for size in sizes:
        r = run(size, args.ops, args.policy)
        rows.append(r)
        cells = " | ".join(f"{r[k]:6.2f} ({r[k + ' mean']:6.2f})" for k in KINDS)
        print(f"{size:>9} | {cells}", flush=True)
    print()
    print("one ClientGetQueue, ms of reactor-thread CPU time (encoding included):")
    header = f"{'waiting':>9} | " + " | ".join(f"{k:>13}" for k in SNAPSHOTS)
    print(header)
    print("-" * len(header))
    for size, r in zip(sizes, rows, strict=True):
        print(f"{size:>9} | " + " | ".join(f"{r[k] / 1000:13.1f}" for k in SNAPSHOTS), flush=True)
    flat = True
    for k in KINDS:
        costs = [r[k] for r in rows if r[k] == r[k]]
        if costs and max(costs) / min(costs) > args.max_ratio:
            flat = False
            print(f"NOT FLAT: {k} goes from {min(costs):.2f} to {max(costs):.2f} us")
    print(f"per-operation cost flat within x{args.max_ratio} from {sizes[0]} to {sizes[-1]} waiting jobs: {flat}")
    return 0 if flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
