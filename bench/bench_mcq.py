"""MCQ jobs per second through our backend: the mcq agent, and the mock agent for scale.

    python bench/bench_mcq.py [--jobs 5000] [--window 256] [--slots 64] [--repeat 1] [--kinds mcq,mock]

Starts ``twistd inginious-backend`` and one agent as processes, then submits
``--jobs`` MCQ jobs (three problems: single choice, multiple choice, match;
half of them right) from our client library in the 0.9 dialect, keeping
``--window`` in flight, and prints jobs per second for

- ``mcq``: ``twistd inginious-agent --kind mcq`` grading every job;
- ``mock``: ``twistd inginious-agent --kind mock`` answering the same jobs
  without grading (``--environment-type mcq -e mcq``): what the backend and
  the links cost alone.

With each run, the CPU seconds the backend, the agent and the client (this
process) used.
It also prints how many jobs per second :func:`inginious_tx.agent.mcq_rules.grade`
handles in-process.  When ``mcq`` is close to ``mock`` and grading is much
faster than both, and the agent uses less CPU than the backend, the
agent is bound by the backend, not by grading.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

PROBLEMS: Dict[str, Any] = {
    "q1": {"type": "multiple_choice", "choices": [{"text": "A"}, {"text": "B", "valid": True, "feedback": "yes"}]},
    "q2": {
        "type": "multiple_choice",
        "multiple": True,
        "choices": [{"text": "A", "valid": True}, {"text": "B", "valid": True}, {"text": "C", "feedback": "no"}],
    },
    "q3": {"type": "match", "answer": "42"},
}
RIGHT = {"q1": "1", "q2": ["0", "1"], "q3": " 42 ", "@lang": "fr", "@state": "", "@random": []}
WRONG = {"q1": "0", "q2": ["0", "2"], "q3": "41", "@lang": "en", "@state": "", "@random": []}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> Dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH", "")])
    return env


def _twistd(*args: str) -> subprocess.Popen:
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", *args]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grading_rate(n: int = 20000) -> float:
    """Jobs per second of the grading rules alone (no I/O)."""
    from inginious_tx.agent.mcq_i18n import agent_text
    from inginious_tx.agent.mcq_rules import grade

    fr, en = agent_text("fr"), agent_text("en")
    start = time.perf_counter()
    for i in range(n):
        inputdata = RIGHT if i % 2 else WRONG
        grade(PROBLEMS, inputdata, fr if i % 2 else en, lambda t: t)
    return n / (time.perf_counter() - start)


async def run_once(reactor: Any, kind: str, jobs: int, window: int, slots: int) -> Dict[str, Any]:
    """Start a backend and a ``kind`` agent, push ``jobs`` jobs; their rate and results."""
    from twisted.internet import defer

    from inginious_tx.client import Client

    cp, ap = free_port(), free_port()
    agent_args = ["--kind", kind, "--dialect", "0.9", "--slots", str(slots), "--name", f"bench-{kind}"]
    if kind == "mock":
        agent_args += ["--environment-type", "mcq", "-e", "mcq"]
    procs: List[subprocess.Popen] = [
        _twistd("inginious-backend", "--clients", f"zmq:tcp://127.0.0.1:{cp}", "--agents", f"zmq:tcp://127.0.0.1:{ap}"),
        _twistd("inginious-agent", "--backend", f"zmq:tcp://127.0.0.1:{ap}", *agent_args),
    ]
    client = Client(reactor, f"zmq:tcp://127.0.0.1:{cp}", "bench-mcq", dialect="0.9", environment_type="mcq")
    client.start()
    try:
        await client.wait_for_environment("mcq", timeout=60, environment_type="mcq")
        results: Dict[str, int] = {}
        sent = 0
        cpu0 = [cpu_seconds(p.pid) for p in procs] + [cpu_seconds(os.getpid())]
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal sent
            while sent < jobs:
                i = sent
                sent += 1
                inputdata = RIGHT if i % 2 else WRONG
                r = await client.new_job("bench", "mcq", dict(inputdata), "mcq", task_problems=PROBLEMS)
                results[r.result] = results.get(r.result, 0) + 1

        await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(window)])
        elapsed = time.perf_counter() - start
        pids = [p.pid for p in procs] + [os.getpid()]
        cpu = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
        return {
            "kind": kind, "jobs": jobs, "seconds": elapsed, "rate": jobs / elapsed, "results": results,
            "backend_cpu": cpu[0], "agent_cpu": cpu[1], "client_cpu": cpu[2],
        }  # fmt: skip
    finally:
        await client.stop()
        for p in procs:
            p.terminate()
            p.wait(10)


def main(argv: List[str] | None = None) -> None:
    from twisted.internet import defer, task

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--kinds", default="mcq,mock", help="agents to run, comma-separated (mcq, mock)")
    args = p.parse_args(argv)
    print(f"grading rules alone: {grading_rate():.0f} jobs/s (one process, no I/O)")
    print(
        f"{'agent':6} | {'jobs':>6} | {'seconds':>8} | {'jobs/s':>8} | {'backend CPU s':>13} | {'agent CPU s':>11} "
        f"| {'client CPU s':>12} | results",
        flush=True,
    )

    async def runs(reactor: Any) -> None:
        for _ in range(args.repeat):
            for kind in args.kinds.split(","):
                r = await run_once(reactor, kind, args.jobs, args.window, args.slots)
                print(
                    f"{kind:6} | {r['jobs']:>6} | {r['seconds']:>8.2f} | {r['rate']:>8.0f} | {r['backend_cpu']:>13.2f} "
                    f"| {r['agent_cpu']:>11.2f} | {r['client_cpu']:>12.2f} | {r['results']}",
                    flush=True,
                )

    task.react(lambda reactor: defer.ensureDeferred(runs(reactor)))


if __name__ == "__main__":
    main()
