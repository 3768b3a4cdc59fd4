"""End-to-end backend benchmark: starts ``twistd inginious-backend`` and loads it.

    python bench/bench_backend.py [--transports zmq,tcp] [--repeat 1] [--shared-loadgen PATH]

For each transport and each configuration below it starts a fresh backend
process, runs ``bench/loadgen_tx.py`` (fake agents + clients, written here)
against it, and prints a table.  With ``--shared-loadgen`` it also runs that
independent ZeroMQ load generator with the same configurations.

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


def start_backend(clients: str, agents: str, policy: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
           "-n", "--pidfile=", "--logfile=/dev/null", "inginious-backend",
           "--clients", clients, "--agents", agents, "--policy", policy]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_one(loadgen: list[str], transport: str, args: list[str], policy: str) -> dict:
    b_clients, b_agents, l_clients, l_agents = endpoints(transport)
    proc = start_backend(b_clients, b_agents, policy)
    try:
        if transport == "zmq":
            time.sleep(1.0)  # ZeroMQ connects lazily: give the backend time to bind
        else:
            wait_port(l_clients)
            wait_port(l_agents)
        out = subprocess.run([*loadgen, *endpoint_args(loadgen, l_agents, l_clients), *args],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        line = (out.stdout.strip().splitlines() or ["{}"])[-1]
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return {"error": (out.stdout + out.stderr)[-300:]}
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
    a = p.parse_args()
    runs = [("loadgen_tx", t, [sys.executable, str(HERE / "loadgen_tx.py")]) for t in a.transports.split(",")]
    if a.shared_loadgen:
        runs.append(("shared loadgen", "zmq", [sys.executable, a.shared_loadgen]))
    print(f"{'load generator':15} {'transport':9} {'config':13} {'jobs/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'done':>6} {'lost':>5} {'dup':>4}")  # fmt: skip
    failed = False
    for gen, transport, loadgen in runs:
        for name, args in CONFIGS:
            if a.only and a.only != name:
                continue
            for _ in range(a.repeat):
                r = run_one(loadgen, transport, args, a.policy)
                if "error" in r:
                    failed = True
                    print(f"{gen:15} {transport:9} {name:13} error: {r['error']}")
                    continue
                lost = r.get("lost", r.get("jobs_asked", 0) - r.get("jobs_done", 0))
                failed |= lost != 0
                print(f"{gen:15} {transport:9} {name:13} {r['jobs_per_s']:9,.0f} {r['p50_ms']:8.3f} "
                      f"{r['p99_ms']:8.3f} {r['jobs_done']:6d} {lost:5d} {r.get('duplicates', 0):4d}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
