"""Codec benchmark: decode+validate vs bare msgpack on the same bytes.

    python bench/bench_codec.py [--seconds 1.0]

Prints messages/s for ``msgpack.unpackb`` alone (with the protocol's unpack
options), for ``load_any`` (what the transports call: either dialect) and for
the 0.6-only ``MessageMeta.load``, on a ClientNewJob and an AgentJobDone of
each dialect, and the ratio (time of load_any / time of bare msgpack; the goal
is under 2).
"""

from __future__ import annotations

import argparse
import timeit
from functools import partial

import msgpack

from inginious_tx.messages import AgentJobDone, ClientNewJob, MessageMeta, load_any, v09

SAMPLES = {
    "0.6 ClientNewJob": ClientNewJob(
        "6f1c", 0, "LINFO1101", "hello", {"q1": "print('hi')", "@lang": "fr"}, "default",
        False, 30, 90, 200, False, "webapp/user:alice", None,
    ).dump(),
    "0.6 AgentJobDone": AgentJobDone(
        (b"\x00k\x8bEg", "6f1c"), ("success", "Well done"), 87.5, {"q1": ("success", "ok")},
        {"t1": 1}, {"k": (1, 2)}, "state-x", None, "out", "err",
    ).dump(),
    "0.9 ClientNewJob": v09.ClientNewJob(
        "0f2b6c3e-5d1a-4c7e-9a43-1e1e5f0b7a11", 0, "LINFO1101", "hello", {"q1": {"type": "code"}},
        {"q1": "print('hi')", "@lang": "fr", "@state": ""}, "docker", "default",
        {"limits": {"time": 30, "hard_time": 90, "memory": 200}, "run_cmd": "", "network_grading": False},
        False, "webapp/user:alice",
    ).dump(),
    "0.9 AgentJobDone": v09.AgentJobDone(
        "0f2b6c3e-5d1a-4c7e-9a43-1e1e5f0b7a11", ("success", "Well done"), 87.5, {"q1": ("success", "ok")},
        {"t1": 1}, {"k": (1, 2)}, "state-x", None, "out", "err",
    ).dump(),
}  # fmt: skip


def rate(fn, seconds: float) -> float:
    """Calls per second: best of 5 runs sized to ``seconds`` / 5 each."""
    timer = timeit.Timer(fn)
    n, t = timer.autorange()
    number = max(1, int(n * (seconds / 5) / max(t, 1e-9)))
    best = min(timer.repeat(repeat=5, number=number))
    return number / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    a = p.parse_args()
    bare = partial(msgpack.unpackb, raw=False, use_list=False, strict_map_key=False)
    print(
        f"{'message':18} {'bytes':>5} {'msgpack/s':>12} {'load_any/s':>12} {'0.6 load/s':>12}"
        f" {'load_any/msgpack time':>22}"
    )
    for name, data in SAMPLES.items():
        r_bare = rate(lambda data=data: bare(data), a.seconds)
        r_any = rate(lambda data=data: load_any(data), a.seconds)
        r_06 = rate(lambda data=data: MessageMeta.load(data), a.seconds) if name.startswith("0.6") else float("nan")
        print(f"{name:18} {len(data):5d} {r_bare:12,.0f} {r_any:12,.0f} {r_06:12,.0f} {r_bare / r_any:21.2f}x")


if __name__ == "__main__":
    main()
