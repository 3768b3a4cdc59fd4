"""The progress of several jobs on stderr, while they run."""

from __future__ import annotations

from typing import Dict, Optional, TextIO

from .output import Outcome, in_result_order

__all__ = ["Progress"]


class Progress:
    """Progress of several jobs on ``stream``: a bar redrawn in place on a
    terminal, one line per finished job otherwise (logs stay readable)."""

    WIDTH = 30

    def __init__(self, stream: TextIO, total: int, tty: Optional[bool] = None) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty() if tty is None else tty
        self.done = 0
        self.counts: Dict[str, int] = {}

    def start(self) -> None:
        if self.tty:
            self._draw()

    def job_done(self, outcome: Outcome) -> None:
        self.done += 1
        r = outcome.result
        self.counts[r.result] = self.counts.get(r.result, 0) + 1
        if self.tty:
            self._draw()
        else:
            self.stream.write(
                f"[{self.done}/{self.total}] {r.job_id}: {r.result} (grade {r.grade:g}) in {outcome.latency:.3f} s\n"
            )
            self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        counts = "  ".join(f"{k} {self.counts[k]}" for k in in_result_order(self.counts))
        self.stream.write(f"\r[{bar}] {self.done}/{self.total}  {counts}\x1b[K")
        self.stream.flush()
