"""Issue 10, item 4: a real backend process bounds the bytes a client makes it hold,
and gives them back when the client falls silent (a ZeroMQ client that never pings).

Measured from outside, on a real ``twistd inginious-backend`` with a raw
ZeroMQ client (bench/bench_memory.py), through ``/proc/PID/status``.  Before
issue 10 the same run held every job (30 × 4 MiB, about 120 MiB above the
start) and kept it after the client fell silent.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_memory.py"
MIB = 1 << 20

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")


def load() -> Any:
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("bench_memory", module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_queued_input_is_bounded_and_released_when_the_client_falls_silent() -> None:
    bench = load()
    size = 4 * MIB
    bound = 16 * MIB
    r = bench.run(
        30,
        size,
        ["--max-queued-bytes-per-client", str(bound), "--client-silence-timeout", "2", "--ping-interval", "0.5"],
        wait=60,
        settle=0.5,
    )
    # 3 jobs fit under 16 MiB (each is 4 MiB and a few bytes); the 27 others are answered at once.
    assert r["accepted"] == 3 and r["refused"] == 27, r
    assert r["reasons"] == ["backend full for this client"], r
    # What it holds once every job is answered or queued: the 3 accepted jobs, not the 30 offered
    # (holding everything would be about 120 MiB).  The peak also counts frames in flight in the
    # transport, which the bound does not cover; it is reported by bench/bench_memory.py.
    assert r["rss_held_mib"] - r["rss_before_mib"] < bound / MIB + 16, r
    # The client never pinged and fell silent: dropped with its waiting jobs, memory given back.
    assert r["rss_after_leave_mib"] < r["rss_before_mib"] + 24, r
