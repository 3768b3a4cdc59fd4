"""bench/bench_queue.py keeps working (small sizes: this checks the
benchmark, not the machine's speed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_queue.py"


def load() -> Any:
    spec = importlib.util.spec_from_file_location("bench_queue", BENCH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("bench_queue", module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_bench_run_keeps_the_queue_level_and_times_every_kind() -> None:
    bench = load()
    for policy in ("priority", "fair", "shortest-first"):
        result = bench.run(2000, 300, policy)
        assert result["waiting"] == 2000
        for kind in bench.KINDS:
            assert result[kind] > 0 and result[kind] == result[kind]  # measured, not NaN


def test_bench_main_prints_a_table(capsys: Any) -> None:
    bench = load()
    bench.main(["--sizes", "500,1000", "--ops", "200", "--max-ratio", "1000"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.split("|")[0].strip() == "500" for line in lines)
    assert any(line.split("|")[0].strip() == "1000" for line in lines)
    assert "flat within x1000.0 from 500 to 1000 waiting jobs: True" in out
