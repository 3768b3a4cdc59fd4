"""A trivial job on an INGInious grading image: INGInious 0.9.2's backend and docker agent vs ours.

    python bench/bench_inginious_image.py [--jobs 10] [--rounds 2] [--task trivial --input '{...}']

Each side is a backend and a docker agent with one slot, as separate
processes: ``inginious-backend`` + ``inginious-agent-docker`` of the full
0.9.2 virtualenv (``ITX_INGINIOUS_09_FULL``), then ``twistd inginious-backend``
+ ``twistd inginious-agent --kind docker`` of this tree (the image found by
its labels).  The real 0.9.2 client (``tests/inginious_grading_driver.py
--sequential``) submits the task ``ingi/trivial`` of
``shared/inginious-0.9.2/tasks`` ``--jobs`` times, one after the other, and
each job is timed from ``new_job`` to its callback; the first job of each
side is a warm-up, not counted.  Sides alternate for ``--rounds`` rounds so
that both see the same machine load.  Prints p50 and p90 per side.

Needs the Docker engine, ``inginious-c-default:0.9.2-local`` and the full
virtualenv (``.ci/setup-inginious-image.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
FULL = Path(os.environ.get("ITX_INGINIOUS_09_FULL", "/opt/itx-inginious-0.9.2-full"))
DRIVER = REPO / "tests" / "inginious_grading_driver.py"


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


def _side(which: str, tasks: Path, jobs: int, work: Path, task: str, inputdata: Dict) -> List[float]:
    cport, aport = _port(), _port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if which == "real":
        argv = [
            [str(FULL / "bin" / "inginious-backend"), f"tcp://127.0.0.1:{aport}", f"tcp://127.0.0.1:{cport}"],
            [str(FULL / "bin" / "inginious-agent-docker"), f"tcp://127.0.0.1:{aport}", "--tasks", str(tasks),
             "--concurrency", "1", "--tmpdir", str(work / "real_tmp"), "--debug-host", "127.0.0.1"],
        ]  # fmt: skip
        penv = env
    else:
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
        argv = [
            twistd + ["inginious-backend", "--clients", f"zmq:tcp://127.0.0.1:{cport}",
                      "--agents", f"zmq:tcp://127.0.0.1:{aport}"],
            twistd + ["inginious-agent", "--backend", f"zmq:tcp://127.0.0.1:{aport}", "--kind", "docker",
                      "--tasks", str(tasks), "--slots", "1"],
        ]  # fmt: skip
        penv = dict(env, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins")]))
    procs = []
    try:
        for i, args in enumerate(argv):
            log = open(work / f"{which}-{i}.log", "w")
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=penv, cwd=str(work)))
            if i == 0:
                _wait_port(cport if which == "ours" else aport)
        cases = [{"ref": f"j{n}", "course": "ingi", "task": task, "inputdata": inputdata} for n in range(jobs + 1)]
        path = work / "cases.json"
        path.write_text(json.dumps(cases))
        out = subprocess.run(
            [str(FULL / "bin" / "python"), str(DRIVER), "--backend", f"tcp://127.0.0.1:{cport}",
             "--tasks", str(tasks), "--cases", str(path), "--sequential"],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        done: Dict[str, Dict] = {}
        for line in out.stdout.splitlines():
            event = json.loads(line)
            if event.get("event") == "done":
                done[event["ref"]] = event
        bad = [e for e in done.values() if e["result"][0] != "success"]
        if bad or len(done) != jobs + 1:
            raise SystemExit(f"{which}: {len(done)} answers, not all success: {bad[:2]}\n{out.stderr[-2000:]}")
        return [done[f"j{n}"]["seconds"] for n in range(1, jobs + 1)]
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--task", default="trivial", help="a task of shared/inginious-0.9.2/tasks/ingi")
    parser.add_argument("--input", default='{"unittest": ["0", "1"]}', help="its input, as JSON")
    args = parser.parse_args()
    tasks = _shared() / "inginious-0.9.2" / "tasks"
    times: Dict[str, List[float]] = {"real": [], "ours": []}
    with tempfile.TemporaryDirectory(prefix="bench-ingi-") as tmp:
        for r in range(args.rounds):
            for which in ("real", "ours"):
                work = Path(tmp) / f"{which}-{r}"
                work.mkdir()
                times[which] += _side(which, tasks, args.jobs, work, args.task, json.loads(args.input))
    for which, values in times.items():
        values.sort()
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        print(
            f"{which:5s} {args.task} job: p50 {statistics.median(values):.3f} s  p90 {p90:.3f} s  ({len(values)} jobs)"
        )


if __name__ == "__main__":
    main()
