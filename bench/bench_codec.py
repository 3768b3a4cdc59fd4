"""Codec benchmark: decode+validate vs bare msgpack on the same bytes.

    python bench/bench_codec.py [--seconds 1.0]

Prints messages/s for ``MessageMeta.load`` and for ``msgpack.unpackb`` alone
(with the protocol's unpack options) on a ClientNewJob and an AgentJobDone,
and the ratio (time of load / time of bare msgpack; the goal is under 2).
"""

from __future__ import annotations

import argparse
import timeit
from functools import partial

import msgpack

from inginious_tx.messages import AgentJobDone, ClientNewJob, MessageMeta

SAMPLES = {
    "ClientNewJob": ClientNewJob(
        "6f1c", 0, "LINFO1101", "hello", {"q1": "print('hi')", "@lang": "fr"}, "default",
        False, 30, 90, 200, False, "webapp/user:alice", None,
    ).dump(),
    "AgentJobDone": AgentJobDone(
        (b"\x00k\x8bEg", "6f1c"), ("success", "Well done"), 87.5, {"q1": ("success", "ok")},
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
    print(f"{'message':14} {'bytes':>5} {'msgpack/s':>12} {'load/s':>12} {'load/msgpack time':>18}")
    for name, data in SAMPLES.items():
        r_bare = rate(lambda data=data: bare(data), a.seconds)
        r_load = rate(lambda data=data: MessageMeta.load(data), a.seconds)
        print(f"{name:14} {len(data):5d} {r_bare:12,.0f} {r_load:12,.0f} {r_bare / r_load:17.2f}x")


if __name__ == "__main__":
    main()
