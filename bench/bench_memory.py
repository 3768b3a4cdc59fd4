"""What a client's queued input costs the backend's memory, with a real twistd backend.

    python bench/bench_memory.py [--jobs 200] [--mib 15] [--root TREE] [-- BACKEND OPTIONS...]

Starts ``twistd inginious-backend`` from the source tree ``--root`` (default:
this one) with ZeroMQ endpoints and no agent, then plays one raw ZeroMQ
client (pyzmq + msgpack, INGInious 0.6 wire) that says hello, sends
``--jobs`` jobs of ``--mib`` MiB of inputdata each for an environment no
agent offers, and then falls silent without ever pinging.  Prints one JSON
line: the backend's resident memory (``VmRSS``) before, its peak
(``VmHWM``: frames in flight included), how many jobs were refused at once
(``crash``) and accepted, its ``VmRSS`` once every job was answered or
accepted (what it holds), and once the backend dropped the silent client
(or after ``--wait`` seconds if it never does).

The client's silence is ``--client-silence-timeout`` (passed to the backend;
main before issue 10 never dropped a client that never pinged).
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
from typing import Any, Dict, List, Optional

import msgpack
import zmq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def status(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in bytes."""
    out: Dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def start_backend(root: Path, clients: str, agents: str, options: List[str]) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "plugins"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
           "-n", "--pidfile=", "--logfile=/dev/null", "inginious-backend",
           "--clients", clients, "--agents", agents, *options]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def job(job_id: str, size: int) -> bytes:
    return msgpack.packb(
        {"job_id": job_id, "priority": 0, "course_id": "c", "task_id": "t", "inputdata": {"blob": b"\0" * size},
         "environment": "nowhere", "enable_network": False, "time_limit": 30, "hard_time_limit": None,
         "mem_limit": 100, "debug": False, "launcher": "bench", "run_cmd": None, "type": "client_new_job"},
        use_bin_type=True,
    )  # fmt: skip


def run(
    jobs: int, size: int, options: List[str], root: Path = ROOT, wait: float = 60.0, settle: float = 1.0
) -> Dict[str, Any]:
    """Play the scenario; see the module docstring."""
    cport, aport = free_port(), free_port()
    proc = start_backend(root, f"zmq:tcp://127.0.0.1:{cport}", f"zmq:tcp://127.0.0.1:{aport}", options)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    try:
        sock.connect(f"tcp://127.0.0.1:{cport}")
        deadline = time.monotonic() + 30
        while True:  # ZeroMQ connects lazily and drops nothing: hello until the backend answers
            sock.send(msgpack.packb({"type": "client_hello", "name": "bench"}))
            if sock.poll(500):
                sock.recv()
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the backend did not answer hello")
        while sock.poll(200):
            sock.recv()
        time.sleep(settle)  # a benchmark driver: let the backend finish starting
        before = status(proc.pid)["VmRSS"]
        for i in range(jobs):
            sock.send(job(f"j{i}", size))
        answers: Dict[str, Any] = {}
        deadline = time.monotonic() + wait
        accepted: Optional[int] = None
        while time.monotonic() < deadline:
            if sock.poll(1000):
                m = msgpack.unpackb(sock.recv(), raw=False)
                if m.get("type") == "backend_job_done":
                    answers[m["job_id"]] = tuple(m["result"])
            else:
                accepted = jobs - len(answers)
                break
        peak = status(proc.pid)["VmHWM"]
        held = status(proc.pid)["VmRSS"]  # every job answered or accepted: what the backend keeps
        # Now the client is silent; wait for the backend to drop it (its log is off: watch the memory).
        low = status(proc.pid)["VmRSS"]
        while time.monotonic() < deadline:
            time.sleep(0.5)
            low = min(low, status(proc.pid)["VmRSS"])
            if low < before + (peak - before) / 4:
                break
        reasons = sorted({text.split(":")[0] for kind, text in answers.values()})
        return {
            "jobs": jobs,
            "job_bytes": size,
            "refused": sum(1 for kind, _ in answers.values() if kind == "crash"),
            "accepted": accepted,
            "reasons": reasons,
            "rss_before_mib": round(before / 2**20, 1),
            "peak_mib": round(peak / 2**20, 1),
            "rss_held_mib": round(held / 2**20, 1),
            "rss_after_leave_mib": round(low / 2**20, 1),
        }
    finally:
        sock.close()
        ctx.term()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--mib", type=float, default=15)
    p.add_argument("--root", type=Path, default=ROOT, help="source tree of the backend to measure")
    p.add_argument("--wait", type=float, default=90)
    p.add_argument("options", nargs="*", help="backend options (after --)")
    a = p.parse_args()
    print(json.dumps(run(a.jobs, int(a.mib * 2**20), a.options, a.root, a.wait)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
