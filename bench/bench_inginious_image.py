"""A trivial job on an INGInious grading image: INGInious 0.9.2's backend and agent vs ours, with and
without grading containers made ahead, vs a bare ``docker run`` (issue 18).

    python bench/bench_inginious_image.py [--jobs 10] [--rounds 2] [--gap 0] [--runsc]
    python bench/bench_inginious_image.py --burst 64 --slots 8 [--runsc]
    python bench/bench_inginious_image.py --idle 20 --slots 8 [--runsc]

**One at a time** (the default).  Each side is a backend and a Docker agent,
as separate processes, with one slot:

- ``real``: ``inginious-backend`` + ``inginious-agent-docker`` of the full
  0.9.2 virtualenv (``ITX_INGINIOUS_09_FULL``); runc only (INGInious 0.9.2
  knows runc, crun, kata and nvidia, not runsc);
- ``ours``: ``twistd inginious-backend`` + ``twistd inginious-agent --kind
  docker`` of this tree, ``--option pool_max=0`` (every job makes its
  container);
- ``ours+pool``: the same with ``--option pool_max=1`` (grading containers
  made ahead, at most the slots).

The real 0.9.2 client (``tests/inginious_grading_driver.py --sequential``)
submits ``ingi/trivial`` of ``shared/inginious-0.9.2/tasks`` ``--jobs``
times, each when the previous one is answered (``--gap`` seconds later), and
times each job from ``new_job`` to its callback; the first job of each side
is a warm-up, not counted.  Sides alternate for ``--rounds`` rounds so that
all see the same machine load; then ``bare`` times ``docker run --rm
--network none [--runtime R] IMAGE true`` (the CLI, as a user would) as
many times.  Prints p50 and p90 per side and issue 18's two ratios:
``ours+pool`` p50 over ``real`` p50 (target at most 1/4.5) and over
``bare`` p50 (target at most 1/2).

**A burst** (``--burst N --slots S``): N trivial jobs submitted at once by
the real client to our agent with S slots, without and with the pool
(``pool_max`` = S), and with ``pool_max`` = N (an operator's pool as large
as the burst) after a first burst made the demand known and the pool
refilled: p50, p99 and max of submit-to-result, whether every job
was answered, and the containers of the agent left once it stopped.  The
issue's bound for the p99 is 3 × (N / S) × the single-job p50 (``--single``
gives that p50; else it is measured first, ``ours+pool``, 10 jobs).

**Idle** (``--idle SECONDS --slots S``): an agent with its pool filled by a
burst of S jobs and ``pool_half_life=3600`` (so that it stays full), then
left alone: the agent's RSS, the waiting containers' memory (the engine's
figure), and over SECONDS the CPU time of dockerd and containerd (the
host's: anything else using the engine counts too), of the waiting
containers' shims and inside the containers, against the same agent
without a pool.

Under ``--runsc`` the trivial task is a copy with 128 MB of memory (its 32
MB do not hold the image's program in a gVisor sandbox: every job would be
an overflow); ``bare`` is then ``docker run --runtime runsc``.

Needs the Docker engine, ``inginious-c-default:0.9.2-local`` and the full
virtualenv (``.ci/setup-inginious-image.sh``); ``--runsc`` needs the runsc
runtime (``.ci/setup-runsc.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
FULL = Path(os.environ.get("ITX_INGINIOUS_09_FULL", "/opt/itx-inginious-0.9.2-full"))
DRIVER = REPO / "tests" / "inginious_grading_driver.py"
IMAGE = os.environ.get("INGI_IMAGE", "inginious-c-default:0.9.2-local")
LABEL_OWNER = "org.inginious-tx.owner"
LABEL_POOL = "org.inginious-tx.pool"
TRIVIAL = {"unittest": ["0", "1"]}


def _shared() -> Path:
    if os.environ.get("ITX_SHARED"):
        return Path(os.environ["ITX_SHARED"])
    beside = REPO.parent / "shared"
    if beside.is_dir():
        return beside
    common = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return Path(common).parent.parent / "shared"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int) -> None:
    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)


def _plain_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@contextmanager
def _side(which: str, tasks: Path, work: Path, slots: int, pool_max: int, runtime: Optional[str],
          extra: Tuple[str, ...] = ()) -> Iterator[Tuple[int, List[subprocess.Popen]]]:  # fmt: skip
    """A backend and an agent (``real`` or ``ours``) running; yields the client port and the processes."""
    cport, aport = _port(), _port()
    env = _plain_env()
    if which == "real":
        argv = [
            [str(FULL / "bin" / "inginious-backend"), f"tcp://127.0.0.1:{aport}", f"tcp://127.0.0.1:{cport}"],
            [str(FULL / "bin" / "inginious-agent-docker"), f"tcp://127.0.0.1:{aport}", "--tasks", str(tasks),
             "--concurrency", str(slots), "--tmpdir", str(work / "real_tmp"), "--debug-host", "127.0.0.1"],
        ]  # fmt: skip
        penv = env
    else:
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
        environment = f"default={IMAGE}" + (f",runtime={runtime}" if runtime else "")
        argv = [
            twistd + ["inginious-backend", "--clients", f"zmq:tcp://127.0.0.1:{cport}",
                      "--agents", f"zmq:tcp://127.0.0.1:{aport}"],
            twistd + ["inginious-agent", "--backend", f"zmq:tcp://127.0.0.1:{aport}", "--kind", "docker",
                      "--tasks", str(tasks), "--slots", str(slots), "--environment", environment,
                      "--option", f"work_dir={work / 'jobs'}", "--option", f"pool_max={pool_max}", *extra],
        ]  # fmt: skip
        penv = dict(env, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins")]))
    procs: List[subprocess.Popen] = []
    try:
        for i, args in enumerate(argv):
            log = open(work / f"{which}-{i}.log", "w")
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=penv, cwd=str(work)))
            if i == 0:
                _wait_port(cport if which == "ours" else aport)
        yield cport, procs
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _drive(cport: int, tasks: Path, work: Path, count: int, sequential: bool, gap: float = 0.0) -> List[Dict]:
    """Submit ``count`` trivial jobs with the real client; their answers, in submission order."""
    cases = [{"ref": f"j{n}", "course": "ingi", "task": "trivial", "inputdata": TRIVIAL} for n in range(count)]
    path = work / "cases.json"
    path.write_text(json.dumps(cases))
    argv = [str(FULL / "bin" / "python"), str(DRIVER), "--backend", f"tcp://127.0.0.1:{cport}", "--tasks",
            str(tasks), "--cases", str(path), "--timeout", "900"] + (["--sequential", "--gap", str(gap)]
                                                                     if sequential else [])  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, env=_plain_env(), timeout=1200)
    done: Dict[str, Dict] = {}
    for line in out.stdout.splitlines():
        event = json.loads(line)
        if event.get("event") == "done":
            done[event["ref"]] = event
    bad = [e for e in done.values() if e["result"][0] != "success"]
    if bad or len(done) != count:
        raise SystemExit(f"{len(done)} answers of {count}, not all success: {bad[:2]}\n{out.stderr[-2000:]}")
    return [done[f"j{n}"] for n in range(count)]


def _pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _owner(pid: int) -> str:
    """The owner token of our agent's process (see inginious_tx.agent._leftovers)."""
    sys.path.insert(0, str(REPO))
    from inginious_tx.agent._leftovers import owner_token

    return owner_token(pid)


def _containers(*labels: str, running: bool = False) -> List[str]:
    argv = ["docker", "ps", "-q", "--no-trunc"] + ([] if running else ["-a"])
    for label in labels:
        argv += ["--filter", f"label={label}"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()


def _pool_figures(log: Path) -> List[int]:
    """(hits, misses) of the INGInious pool, from the line the agent logs when it stops."""
    found = [0, 0]
    for line in log.read_text(errors="replace").splitlines():
        match = re.search(r"container pool .*: (\d+) hits, (\d+) misses", line)
        if match:
            found = [found[0] + int(match.group(1)), found[1] + int(match.group(2))]
    return found


def _tasks_for(runtime: Optional[str], shared: Path, tmp: Path) -> Path:
    """The tasks folder: the shared one, or under gVisor a copy whose trivial task has 128 MB (its 32 MB
    do not hold the image's program in gVisor's sandbox: every job would be an overflow)."""
    if runtime is None:
        return shared
    tasks = tmp / f"tasks-{runtime}"
    if not tasks.exists():
        shutil.copytree(shared / "ingi" / "trivial", tasks / "ingi" / "trivial")
        yaml = tasks / "ingi" / "trivial" / "task.yaml"
        yaml.write_text(yaml.read_text().replace("memory: '32'", "memory: '128'"))
    return tasks


def single(args: argparse.Namespace, tasks: Path, tmp: Path, runtime: Optional[str]) -> Dict[str, List[float]]:
    """One job at a time: real, ours, ours+pool (alternating for each round), then bare docker run."""
    sides = [("ours", 0, "ours"), ("ours", 1, "ours+pool")]
    if runtime is None:
        sides.insert(0, ("real", 0, "real"))
    times: Dict[str, List[float]] = {name: [] for _, _, name in sides}
    hits = [0, 0]
    for r in range(args.rounds):
        for which, pool_max, name in sides:
            work = tmp / f"{name}-{runtime}-{r}"
            work.mkdir()
            with _side(which, tasks, work, 1, pool_max, runtime) as (cport, _):
                answers = _drive(cport, tasks, work, args.jobs + 1, sequential=True, gap=args.gap)
            times[name] += [a["seconds"] for a in answers[1:]]
            if pool_max:
                hits = [a + b for a, b in zip(hits, _pool_figures(work / "ours-1.log"), strict=True)]
    print(f"  (runtime {runtime or 'runc'}: ours+pool took {hits[0]} containers made ahead, made {hits[1]} itself)")
    bare = ["docker", "run", "--rm", "--network", "none", *(["--runtime", runtime] if runtime else []), IMAGE, "true"]
    subprocess.run(bare, capture_output=True)  # warm-up
    times["bare"] = []
    failed = 0
    for _ in range(args.jobs * args.rounds):
        started = time.monotonic()
        if subprocess.run(bare, capture_output=True).returncode == 0:
            times["bare"].append(time.monotonic() - started)
        else:
            failed += 1
        if args.gap > 0:
            time.sleep(args.gap)
    if failed:
        print(f"  ({failed} bare docker run failed, not counted)")
    return times


def _print_single(times: Dict[str, List[float]], runtime: Optional[str], real_p50: Optional[float]) -> float:
    label = runtime or "runc (default)"
    print(f"\n== one trivial job at a time, runtime {label} ==")
    for name, values in times.items():
        print(f"  {name:10s} p50 {statistics.median(values):.3f} s  p90 {_pct(values, 0.9):.3f} s  ({len(values)})")
    pool = statistics.median(times["ours+pool"])
    real = statistics.median(times["real"]) if "real" in times else real_p50
    bare = statistics.median(times["bare"])
    if real is not None:
        note = "" if "real" in times else " (the real agent under runc: 0.9.2 cannot use runsc)"
        print(f"  ours+pool / real p50: {pool / real:.3f}  (target <= {1 / 4.5:.3f}){note}")
    print(f"  ours+pool / bare p50: {pool / bare:.3f}  (target <= 0.500)")
    return pool


def burst(args: argparse.Namespace, tasks: Path, tmp: Path, runtime: Optional[str], single_p50: float) -> None:
    label = runtime or "runc (default)"
    bound = 3 * (args.burst / args.slots) * single_p50
    print(f"\n== burst: {args.burst} trivial jobs at once, {args.slots} slots, runtime {label} ==")
    print(f"  bound on the p99: 3 x ({args.burst} / {args.slots}) x {single_p50:.3f} s = {bound:.2f} s")
    sides = [(0, "ours", False), (args.slots, "ours+pool", False)]
    if args.burst > args.slots:
        sides.append((args.burst, "ours+pool=N", True))
    for pool_max, name, warm in sides:
        work = tmp / f"burst-{name}-{runtime}"
        work.mkdir()
        with _side("ours", tasks, work, args.slots, pool_max, runtime) as (cport, procs):
            owner = _owner(procs[1].pid)
            _drive(cport, tasks, work, 1, sequential=True)  # the agent is up and has seen the environment
            if warm:
                # a pool as large as the burst (an operator's choice): a first burst makes the demand
                # known, the pool refills, then the timed burst
                _drive(cport, tasks, work, args.burst, sequential=False)
                # until the pool stops growing (it holds what the demand asks, at most pool_max)
                deadline = time.monotonic() + 120
                ready: List[str] = []
                last, still = -1, 0
                while time.monotonic() < deadline and len(ready) < pool_max and still < 6:
                    time.sleep(0.5)
                    ready = _containers(f"{LABEL_OWNER}={owner}", LABEL_POOL, running=True)
                    last, still = len(ready), (still + 1 if len(ready) <= last else 0)
                print(f"  ({name}: {len(ready)} containers ready after a first burst)")
            time.sleep(1)
            started = time.monotonic()
            answers = _drive(cport, tasks, work, args.burst, sequential=False)
            wall = time.monotonic() - started
        left = _containers(f"{LABEL_OWNER}={owner}")
        seconds = [a["seconds"] for a in answers]
        p99 = _pct(seconds, 0.99)
        print(
            f"  {name:10s} p50 {statistics.median(seconds):.3f} s  p99 {p99:.3f} s  max {max(seconds):.3f} s  "
            f"answered {len(answers)}/{args.burst}  burst wall {wall:.1f} s  containers left {len(left)}  "
            f"p99 {'within' if p99 <= bound else 'ABOVE'} the bound"
        )


#: The engine's processes whose CPU time is measured (shared with anything else on the host).
_ENGINE = (("dockerd",), ("containerd",))
_SHIMS = ("containerd-shim", "containerd-shim-runc-v2", "containerd-shim-runsc-v1")


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_seconds(names: Tuple[str, ...], ids: Tuple[str, ...] = ()) -> float:
    """User + system CPU time of every live process named ``names`` (with ``ids``: only those whose
    command line holds one of them, e.g. the shims of given containers)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
            if ids:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name in names and (not ids or any(i in cmdline for i in ids)):
            fields = text[text.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _containers_cpu(cids: List[str]) -> float:
    """CPU seconds the containers used so far (the engine's statistics)."""
    import docker

    client = docker.from_env()
    try:
        return sum(
            client.api.stats(cid, stream=False, one_shot=True)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
            for cid in cids
        )
    finally:
        client.close()


def _container_memory(cids: List[str]) -> int:
    """The engine's memory figure (bytes) of each container, summed."""
    total = 0
    for cid in cids:
        out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{json .}}", cid],
                             capture_output=True, text=True)  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            used = json.loads(out.stdout)["MemUsage"].split("/")[0].strip()
            total += _bytes(used)
    return total


def _bytes(text: str) -> int:
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "kB": 1000, "MB": 10**6, "GB": 10**9}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * units[unit])
    return int(float(text))


def _idle_sample(waiting: List[str]) -> List[float]:
    """CPU seconds so far: dockerd, containerd, the waiting containers' shims, inside them."""
    engine = [_cpu_seconds(names) for names in _ENGINE]
    return engine + [_cpu_seconds(_SHIMS, tuple(waiting)) if waiting else 0.0, _containers_cpu(waiting)]


def idle(args: argparse.Namespace, tasks: Path, tmp: Path, runtime: Optional[str]) -> None:
    label = runtime or "runc (default)"
    print(f"\n== idle for {args.idle:g} s after a burst of {args.slots} jobs, {args.slots} slots, runtime {label} ==")
    for pool_max, name in ((0, "ours"), (args.slots, "ours+pool")):
        work = tmp / f"idle-{name}-{runtime}"
        work.mkdir()
        with _side("ours", tasks, work, args.slots, pool_max, runtime, ("--option", "pool_half_life=3600")) as (
            cport,
            procs,
        ):
            owner = _owner(procs[1].pid)
            _drive(cport, tasks, work, args.slots, sequential=False)
            deadline = time.monotonic() + 300
            waiting: List[str] = []
            while pool_max and time.monotonic() < deadline:
                waiting = _containers(f"{LABEL_OWNER}={owner}", LABEL_POOL, running=True)
                if len(waiting) >= pool_max:
                    break
                time.sleep(0.5)
            time.sleep(2)  # the last creations settle
            cpu_before = _idle_sample(waiting)
            time.sleep(args.idle)
            cpu_after = _idle_sample(waiting)
            rss = _rss_kb(procs[1].pid)
            memory = _container_memory(waiting)
        used = [100 * (a - b) / args.idle for a, b in zip(cpu_after, cpu_before, strict=True)]
        dockerd, containerd, shims, inside = used
        print(
            f"  {name:10s} waiting containers {len(waiting)}  agent RSS {rss / 1024:.1f} MiB  containers' memory "
            f"{memory / (1 << 20):.1f} MiB  CPU (% of one core): dockerd {dockerd:.2f}  containerd {containerd:.2f}  "
            f"their shims {shims:.2f}  inside them {inside:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10, help="timed jobs per side and round (one at a time)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between an answer and the next submission")
    parser.add_argument("--runsc", action="store_true", help="also under gVisor (runtime runsc)")
    parser.add_argument("--burst", type=int, default=0, help="jobs submitted at once (0: no burst)")
    parser.add_argument("--slots", type=int, default=8, help="our agent's slots for --burst and --idle")
    parser.add_argument("--single", type=float, default=0.0, help="the single-job p50 for --burst's bound")
    parser.add_argument("--idle", type=float, default=0.0, help="seconds of idle measure (0: none)")
    args = parser.parse_args()
    shared = _shared() / "inginious-0.9.2" / "tasks"
    runtimes: List[Optional[str]] = [None] + (["runsc"] if args.runsc else [])
    print(f"image {IMAGE}; {os.cpu_count()} CPUs; " + " ".join(sys.argv))
    with tempfile.TemporaryDirectory(prefix="bench-ingi-") as name:
        tmp = Path(name)
        real_p50: Optional[float] = None
        for runtime in runtimes:
            tasks = _tasks_for(runtime, shared, tmp)
            p50 = args.single
            if not args.burst and not args.idle:
                times = single(args, tasks, tmp, runtime)
                if "real" in times:
                    real_p50 = statistics.median(times["real"])
                p50 = _print_single(times, runtime, real_p50)
            if args.burst:
                if not p50:
                    saved = args.rounds
                    args.rounds = 1
                    times = single(args, tasks, tmp, runtime)
                    args.rounds = saved
                    p50 = statistics.median(times["ours+pool"])
                    print(f"\n(single-job p50 of ours+pool, runtime {runtime or 'runc'}: {p50:.3f} s)")
                burst(args, tasks, tmp, runtime, p50)
            if args.idle:
                idle(args, tasks, tmp, runtime)


if __name__ == "__main__":
    main()
