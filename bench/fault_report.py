"""Run the fault-injection scenarios with large numbers and print the figures.

The scenarios are those of ``tests/test_faults.py`` (defined in
``tests/faults_support.py``): a real ``twistd`` backend, mock agents and
client processes, broken on purpose.  For each one this prints how many jobs
were submitted, how many got a result, how many results were duplicates, how
many jobs were lost, and for the garbage run the backend's resident memory
before, after and at its peak (VmHWM).

    python bench/fault_report.py                 # 2,000 jobs per scenario
    python bench/fault_report.py --jobs 500 --only kill_storm garbage
    python bench/fault_report.py --docker        # also stop/start the Docker engine (disturbs other Docker users)

Exit status 1 if any scenario lost or duplicated a job.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import faults_support as fs  # noqa: E402

SCENARIOS = [
    "agent_killed_tcp",
    "agent_killed_zmq",
    "agent_frozen",
    "backend_restart",
    "client_vanishes",
    "kill_storm",
    "garbage",
    "zmq_never_reads",
]


def plan(jobs: int) -> Dict[str, Callable[[fs.Lab], fs.Figures]]:
    """Each scenario sized so that it submits about ``jobs`` jobs in all."""
    return {
        "agent_killed_tcp": lambda lab: fs.agent_killed(
            lab, jobs=jobs, transport="tcp", retries=1, short=0.0, slots=100
        ),
        "agent_killed_zmq": lambda lab: fs.agent_killed(
            lab, jobs=jobs, transport="zmq", retries=0, short=0.0, slots=100
        ),
        "agent_frozen": lambda lab: fs.agent_frozen(
            lab, jobs=jobs - jobs // 10, late_jobs=jobs // 10, short=0.0, slots=100
        ),
        # two phases of jobs/4 on each of two clients (pending at the kill, then after the restart), plus 4
        "backend_restart": lambda lab: fs.backend_restart(lab, jobs=max(4, jobs // 4)),
        "client_vanishes": lambda lab: fs.client_vanishes(lab, jobs=jobs // 2, slots=100, after=jobs // 10),
        "kill_storm": lambda lab: fs.kill_storm(lab, jobs=jobs, slots=100, after=200),
        # honest jobs: 3 phases x 2 clients; the deaf client submits `jobs` more
        "garbage": lambda lab: fs.garbage(lab, jobs=max(10, jobs // 6), never_read_jobs=jobs, repeat=5),
        # measurement only: ZeroMQ has no byte bound on what waits for a peer that never reads
        "zmq_never_reads": lambda lab: fs.zmq_never_reads(lab, jobs=jobs, result_kb=100),
        "docker": lambda lab: fs.docker_outage(
            lab, os.environ.get("INGINIOUS_TX_TEST_IMAGE", "inginious-tx/busybox:test"), jobs=max(2, jobs // 100)
        ),
    }


#: The notes worth printing for each scenario.
SHOWN = {
    "agent_killed_tcp": ["detection_seconds", "removal_reason"],
    "agent_killed_zmq": ["detection_seconds", "removal_reason"],
    "agent_frozen": ["detection_seconds", "late_results_dropped"],
    "backend_restart": ["crash_answers_within", "sigterm_exit_status"],
    "client_vanishes": ["departures", "queue_after"],
    "kill_storm": ["done_before_kill", "killed_texts", "queue_after", "storm_seconds", "after_results"],
    "garbage": [
        "rss_before_mb",
        "rss_after_mb",
        "peak_rss_mb",
        "rss_growth_mb",
        "peak_growth_mb",
        "forged_results_delivered",
        "strays_dropped",
        "never_reading_client_dropped",
        "internal_errors_logged",
        "backend_alive",
    ],
    "zmq_never_reads": ["deaf_jobs", "result_kb", "rss_before_mb", "rss_after_mb", "peak_growth_mb", "backend_alive"],
    "docker": ["during", "agent_alive_during", "agent_alive_after"],
}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per scenario (default 2000)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS + ["docker"], help="run only these scenarios")
    parser.add_argument("--docker", action="store_true", help="also run the Docker engine outage")
    args = parser.parse_args(argv)
    names = args.only or SCENARIOS + (["docker"] if args.docker else [])
    scenarios = plan(args.jobs)
    print(f"fault report: {args.jobs} jobs per scenario, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    bad = 0
    started = time.monotonic()
    for name in names:
        with fs.Lab() as lab:
            try:
                figures = scenarios[name](lab)
            except fs.Stuck as e:
                print(f"{name}: STUCK: {str(e).splitlines()[0]}")
                bad += 1
                continue
        print(figures.line())
        for key in SHOWN.get(name, []):
            value: Any = figures.notes.get(key)
            print(f"    {key}: {str(value)[:300]}")
        if not figures.exactly_once:
            bad += 1
    print(f"total {time.monotonic() - started:.1f} s; {'all exactly once' if not bad else f'{bad} scenarios FAILED'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
