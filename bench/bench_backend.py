"""End-to-end backend benchmark: starts ``twistd inginious-backend`` and loads it.

    python bench/bench_backend.py [--transports zmq,tcp] [--repeat 1] [--shared-loadgen PATH]
                                  [--dialects 0.6,0.9] [--inginious PYTHON]

For each transport and each configuration below it starts a fresh backend
process, runs ``bench/loadgen_tx.py`` (fake agents + clients, written here,
0.6 dialect) against it, and prints a table.  With ``--shared-loadgen`` it
also runs that independent ZeroMQ load generator with the same
configurations, once per dialect of ``--dialects`` (its ``--dialect``
option).  With ``--inginious PYTHON`` (the Python of a virtualenv holding
``inginious==0.9.2``, as ``.ci/setup-inginious.sh`` makes) the shared load
generator also runs, in the 0.9 dialect, against the real INGInious 0.9.2
backend, for comparison.

The configurations are those the INGInious 0.6 figures were measured with:
a windowed run, a deep-queue run and a serial latency run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CONFIGS = [
    ("window 64", ["--agents", "4", "--slots", "8", "--clients", "2", "--window", "64", "--jobs", "5000"]),
    ("window 10000", ["--agents", "4", "--slots", "8", "--clients", "2", "--window", "10000", "--jobs", "20000"]),
    ("serial", ["--agents", "1", "--slots", "1", "--clients", "1", "--window", "1", "--jobs", "3000"]),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoints(transport: str) -> tuple[str, str, str, str]:
    """(backend clients, backend agents, loadgen clients, loadgen agents) endpoints."""
    cp, ap = free_port(), free_port()
    if transport == "zmq":
        return (f"zmq:tcp://127.0.0.1:{cp}", f"zmq:tcp://127.0.0.1:{ap}",
                f"zmq:tcp://127.0.0.1:{cp}", f"zmq:tcp://127.0.0.1:{ap}")  # fmt: skip
    return (f"tcp:{cp}:interface=127.0.0.1", f"tcp:{ap}:interface=127.0.0.1",
            f"tcp:127.0.0.1:{cp}", f"tcp:127.0.0.1:{ap}")  # fmt: skip


def wait_port(endpoint: str, timeout: float = 15) -> None:
    port = int(endpoint.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # a benchmark driver, not reactor code
    raise RuntimeError(f"backend did not listen on {endpoint}")


def start_inginious(python: str, clients: str, agents: str) -> subprocess.Popen:
    """The real INGInious backend (tests/inginious_driver.py), on raw ZeroMQ addresses."""
    driver = ROOT / "tests" / "inginious_driver.py"
    cmd = [python, str(driver), "backend", "--clients", clients[4:], "--agents", agents[4:]]
    return subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (Linux), 0.0 if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


#: The source tree whose backend is measured (--root).
TREE = ROOT


def start_backend(clients: str, agents: str, policy: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TREE), str(TREE / "plugins"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
           "-n", "--pidfile=", "--logfile=/dev/null", "inginious-backend",
           "--clients", clients, "--agents", agents, "--policy", policy]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=TREE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_one(
    loadgen: list[str], transport: str, args: list[str], policy: str, inginious: str | None = None
) -> dict:
    b_clients, b_agents, l_clients, l_agents = endpoints(transport)
    if inginious:
        proc = start_inginious(inginious, b_clients, b_agents)
    else:
        proc = start_backend(b_clients, b_agents, policy)
    try:
        if transport == "zmq":
            time.sleep(1.0)  # ZeroMQ connects lazily: give the backend time to bind
        else:
            wait_port(l_clients)
            wait_port(l_agents)
        cpu = cpu_seconds(proc.pid)
        out = subprocess.run([*loadgen, *endpoint_args(loadgen, l_agents, l_clients), *args],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        cpu = cpu_seconds(proc.pid) - cpu
        line = (out.stdout.strip().splitlines() or ["{}"])[-1]
        try:
            result: dict = json.loads(line)
        except json.JSONDecodeError:
            return {"error": (out.stdout + out.stderr)[-300:]}
        # The backend's own CPU per job: unlike jobs/s, it does not depend on
        # what else the machine runs.
        result["cpu_us_per_job"] = cpu / max(1, result.get("jobs_done", 0)) * 1e6
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def endpoint_args(loadgen: list[str], agents: str, clients: str) -> list[str]:
    if loadgen[-1].endswith("loadgen_tx.py"):
        return ["--agents-endpoint", agents, "--clients-endpoint", clients]
    return [agents[4:], clients[4:]]  # the shared loadgen takes raw ZeroMQ addresses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transports", default="zmq,tcp")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--policy", default="priority")
    p.add_argument("--shared-loadgen", help="path of an independent ZeroMQ load generator to run as well")
    p.add_argument("--only", help="run only the configuration with this name")
    p.add_argument("--dialects", default="0.6,0.9", help="dialects the shared load generator speaks, in turn")
    p.add_argument("--inginious", help="Python of a virtualenv with inginious==0.9.2: also measure its backend")
    p.add_argument("--no-loadgen-tx", action="store_true", help="skip this repository's load generator")
    p.add_argument("--root", type=Path, default=ROOT, help="source tree of the inginious-tx backend to measure")
    a = p.parse_args()
    global TREE
    TREE = a.root.resolve()
    # (backend, dialect, load generator, transport, command)
    runs: list[tuple[str, str, str, str, list[str]]] = []
    if not a.no_loadgen_tx:
        runs += [("inginious-tx", "0.6", "loadgen_tx", t, [sys.executable, str(HERE / "loadgen_tx.py")])
                 for t in a.transports.split(",")]  # fmt: skip
    if a.shared_loadgen:
        for dialect in a.dialects.split(","):
            cmd = [sys.executable, a.shared_loadgen, "--dialect", dialect]
            runs.append(("inginious-tx", dialect, "shared loadgen", "zmq", cmd))
        if a.inginious:
            cmd = [sys.executable, a.shared_loadgen, "--dialect", "0.9"]
            runs.append(("INGInious 0.9.2", "0.9", "shared loadgen", "zmq", cmd))
    print(f"{'backend':15} {'dialect':7} {'load generator':15} {'transport':9} {'config':13} {'jobs/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'done':>6} {'lost':>5} {'dup':>4} {'CPU us/job':>10}")  # fmt: skip
    failed = False
    for backend, dialect, gen, transport, loadgen in runs:
        real = a.inginious if backend != "inginious-tx" else None
        for name, args in CONFIGS:
            if a.only and a.only != name:
                continue
            for _ in range(a.repeat):
                r = run_one(loadgen, transport, args, a.policy, real)
                row = f"{backend:15} {dialect:7} {gen:15} {transport:9} {name:13}"
                if "error" in r:
                    failed = True
                    print(f"{row} error: {r['error']}")
                    continue
                lost = r.get("lost", r.get("jobs_asked", 0) - r.get("jobs_done", 0))
                failed |= lost != 0
                print(f"{row} {r['jobs_per_s']:9,.0f} {r['p50_ms']:8.3f} "
                      f"{r['p99_ms']:8.3f} {r['jobs_done']:6d} {lost:5d} {r.get('duplicates', 0):4d} "
                      f"{r['cpu_us_per_job']:10.1f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
