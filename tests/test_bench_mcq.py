"""bench/bench_mcq.py keeps working (tiny sizes: this checks the benchmark, not the machine)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_mcq.py"


def load() -> Any:
    spec = importlib.util.spec_from_file_location("bench_mcq", BENCH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("bench_mcq", module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_grading_rate_is_measured() -> None:
    rate = load().grading_rate(300)
    assert rate > 0 and rate == rate


def test_bench_main_grades_through_the_backend(capsys: Any) -> None:
    import subprocess

    from subprocess_env import child_env

    out = subprocess.run(
        [sys.executable, str(BENCH), "--jobs", "40", "--window", "8", "--slots", "4", "--kinds", "mcq"],
        capture_output=True, text=True, env=child_env(), timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("|")[0].strip(): line for line in out.stdout.splitlines() if "|" in line}
    # half the jobs are right, half wrong: the mcq agent really graded them
    assert "{'failed': 20, 'success': 20}" in rows["mcq"]
    assert "mock" not in rows
