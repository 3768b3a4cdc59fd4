"""Running totals for status pages and metrics (:class:`BackendStats`)."""

from __future__ import annotations

from bisect import bisect_left
from typing import Dict, Tuple

__all__ = ["BackendStats", "TIME_BUCKETS"]

#: Upper bounds, in seconds, of the buckets of the queue-wait and run-time
#: histograms of :class:`BackendStats` (a last bucket holds the rest).
TIME_BUCKETS: Tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: The result types counted by name; anything else an agent says is "other".
_RESULT_KINDS = frozenset(("success", "failed", "error", "crash", "timeout", "overflow", "killed"))


class BackendStats:
    """Running totals kept by the backend for status pages and metrics.

    Plain integers and bucket counts, so that keeping them costs the hot path
    a few additions per job and no lock; exporters (e.g.
    :mod:`inginious_tx.backend.metrics`) read them when asked.  ``submitted``
    counts every job a registered client sent; ``accepted`` those that were
    queued (the others were refused: queue full, duplicate id, shutting
    down); ``finished`` counts accepted jobs by how they ended: a result type,
    ``other`` (a result type we do not know), or ``dropped`` (its client left
    first, no answer was sent).
    """

    __slots__ = ("submitted", "accepted", "finished", "wait_buckets", "wait_sum", "run_buckets", "run_sum")

    def __init__(self) -> None:
        self.submitted = 0
        self.accepted = 0
        self.finished: Dict[str, int] = {}
        #: per bucket of TIME_BUCKETS (not cumulative), then the overflow bucket
        self.wait_buckets = [0] * (len(TIME_BUCKETS) + 1)
        self.wait_sum = 0.0
        self.run_buckets = [0] * (len(TIME_BUCKETS) + 1)
        self.run_sum = 0.0

    @property
    def refused(self) -> int:
        return self.submitted - self.accepted

    def waited(self, seconds: float) -> None:
        """A job left the queue for its first agent after ``seconds``."""
        self.wait_buckets[bisect_left(TIME_BUCKETS, seconds)] += 1
        self.wait_sum += seconds

    def ran(self, seconds: float) -> None:
        """A job stopped running (answered, killed or lost) after ``seconds``."""
        self.run_buckets[bisect_left(TIME_BUCKETS, seconds)] += 1
        self.run_sum += seconds

    def ended(self, kind: str) -> None:
        if kind not in _RESULT_KINDS and kind != "dropped":
            kind = "other"
        self.finished[kind] = self.finished.get(kind, 0) + 1
