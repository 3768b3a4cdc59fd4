"""Bursts on one Docker backend, to compare pool settings (what chose the defaults).

    python bench/bench_pool_burst.py [--jobs 64] [--slots 8] CONFIG...

Each CONFIG is ``NAME:KEY=VALUE,...``: the backend's ``--option`` settings
(``pool_max=0``, ``pool_concurrency=3``, ``pool_max=64``...) and three of
this bench's own: ``bursts=N`` (default 1), ``removals=N`` (the pool's
removal queue, default 2; 1000: unbounded) and ``hold_removals=1``
(removals wait while a creation or start runs, at most 20 s: an experiment,
it must be the same for every CONFIG of one run).  For each CONFIG a
DockerBackend runs one warm-up job, then ``bursts`` times: waits for its
pool to settle (what it wants made; how long it took is ``refill``),
submits ``--jobs`` trivial jobs with ``--slots`` of them running at once
(as the agent would), and prints p50/p99/max of submit-to-result, the
hits so far, and the engine API calls per job by kind.  The backend is
driven in process (no backend service, no agent framework), so the times
are those of the Docker backend and the engine alone.  Needs the Docker
engine and the test image (``.ci/docker-setup.sh``).

Run: ``python bench/bench_pool_burst.py "c1:pool_max=64,pool_concurrency=1,bursts=2"
"c2:pool_max=64,bursts=2"`` (and so on; alternate the configurations over
several runs: the machine's load moves the figures by 20 % or more).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from docker_support import TEST_IMAGE, make_task, new_job  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.defer import DeferredSemaphore, gatherResults  # noqa: E402

from inginious_tx.agent import docker_pool  # noqa: E402
from inginious_tx.agent.container_pool import ContainerPool  # noqa: E402
from inginious_tx.agent.docker import DockerBackend  # noqa: E402
from inginious_tx.agent.result import AgentConfig  # noqa: E402

#: engine API calls by kind ("POST containers/start"...), counted at the HTTP layer
CALLS: Dict[str, int] = {}


def count_calls() -> None:
    import requests

    send = requests.Session.send

    def counted(self: Any, request: Any, **kwargs: Any) -> Any:
        parts = request.path_url.split("?")[0].split("/")
        kind = request.method + " " + (parts[2] if len(parts) > 2 else "") + ("/" + parts[-1] if len(parts) > 4 else "")
        CALLS[kind] = CALLS.get(kind, 0) + 1
        return send(self, request, **kwargs)

    requests.Session.send = counted  # type: ignore[method-assign]


def hold_removals() -> None:
    """The experiment: a removal waits while a creation or start runs (at most 20 s)."""
    busy = [0]
    changed = threading.Condition()

    def busy_while(f: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            with changed:
                busy[0] += 1
            try:
                return f(*args, **kwargs)
            finally:
                with changed:
                    busy[0] -= 1
                    changed.notify_all()

        return run

    DockerBackend._thd_create = busy_while(DockerBackend._thd_create)  # type: ignore[method-assign]
    DockerBackend._thd_start = busy_while(DockerBackend._thd_start)  # type: ignore[method-assign]
    docker_pool.DockerHelperMaker._thd_make = busy_while(docker_pool.DockerHelperMaker._thd_make)  # type: ignore
    remove = DockerBackend._thd_remove

    def held(self: Any, client: Any, cid: str) -> None:
        deadline = time.monotonic() + 20
        with changed:
            while busy[0] and time.monotonic() < deadline:
                changed.wait(0.5)
        remove(self, client, cid)

    DockerBackend._thd_remove = held  # type: ignore[method-assign]


def pct(values: List[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def settle(reactor: Any, backend: DockerBackend) -> int:
    """Wait until the pool has what it wants (at most 120 s); how many wait in it."""
    if backend.pool is None:
        return 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(s.ready >= s.target and not s.creating for s in backend.pool.stats().values()):
            break
        await task.deferLater(reactor, 0.2, lambda: None)
    return sum(s.ready for s in backend.pool.stats().values())


async def main(reactor: Any, args: argparse.Namespace) -> None:
    tasks = tempfile.mkdtemp(prefix="bench-pool-tasks-")
    make_task(tasks, "course", "ok", "feedback-result success\n")
    for config in args.configs:
        name, _, rest = config.partition(":")
        options = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
        bursts = int(options.pop("bursts", "1"))
        docker_pool.ContainerPool = functools.partial(  # type: ignore[misc]
            ContainerPool, removals=int(options.pop("removals", "2"))
        )
        options.pop("hold_removals", None)
        work = tempfile.mkdtemp(prefix="bench-pool-work-")
        options = {"work_dir": work, "poll_interval": "0.5", **options}
        backend = DockerBackend(reactor, AgentConfig(tasks, [f"default={args.image}"], args.slots, options))
        await backend.environments()
        assert (await backend.run(new_job(task="ok"))).result == "success"
        for i in range(bursts):
            start = time.monotonic()
            ready = await settle(reactor, backend)
            refill = time.monotonic() - start
            await task.deferLater(reactor, 1, lambda: None)
            CALLS.clear()
            slots = DeferredSemaphore(args.slots)
            t0 = time.perf_counter()

            async def one(backend: DockerBackend = backend, t0: float = t0) -> Any:
                result = await backend.run(new_job(task="ok"))
                return result.result, time.perf_counter() - t0

            done = await gatherResults([slots.run(lambda: defer.ensureDeferred(one())) for _ in range(args.jobs)])
            times = [t * 1000 for _, t in done]
            ok = sum(1 for r, _ in done if r == "success")
            hits = sum(s.hits for s in backend.pool.stats().values()) if backend.pool else 0
            calls = sum(CALLS.values()) / args.jobs
            print(f"{name:16} burst {i + 1}: refill {refill:5.1f} s, {ready:2} ready; {ok}/{args.jobs} success; "
                  f"p50 {pct(times, .5):6.0f} p99 {pct(times, .99):6.0f} max {max(times):6.0f} ms; {hits} hits so far; "
                  f"{calls:.1f} engine calls per job {dict(sorted(CALLS.items()))}", flush=True)  # fmt: skip
        await backend.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--image", default=os.environ.get("INGINIOUS_TX_TEST_IMAGE", TEST_IMAGE))
    parser.add_argument("configs", nargs="+")
    arguments = parser.parse_args()
    count_calls()
    if any("hold_removals=1" in c for c in arguments.configs):
        hold_removals()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
