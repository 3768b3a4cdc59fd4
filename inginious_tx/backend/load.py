"""Waiting and running job counts per course and per client, kept as jobs move."""

from __future__ import annotations

import heapq
from typing import Any, Dict, List, Tuple

__all__ = ["LoadCounts", "WAITING_COUNT", "RUNNING_COUNT", "SHRINK_FLOOR"]

#: Job tables (the backend's, a policy's) are rebuilt when they fall to a quarter
#: of their peak, to give memory back, but only past this many entries.
SHRINK_FLOOR = 1024

#: Index of each count in a ``(waiting, running)`` pair.
WAITING_COUNT, RUNNING_COUNT = 0, 1


class LoadCounts:
    """``key -> (waiting, running)``, updated by the backend at each transition.

    Reading costs O(keys), never O(jobs), so status pages and metrics can ask
    often at 100,000 waiting jobs.  A key whose counts fall to (0, 0) is
    forgotten, so the table holds only courses or clients with jobs.
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        #: key -> [waiting, running]; the backend updates it inline on its hot path
        self.counts: Dict[Any, List[int]] = {}

    def add(self, key: Any, index: int, delta: int) -> None:
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = [0, 0]
        counts[index] += delta
        if not counts[0] and not counts[1]:
            del self.counts[key]

    def snapshot(self) -> Dict[Any, Tuple[int, int]]:
        return {key: (c[0], c[1]) for key, c in self.counts.items()}

    def top(self, n: int) -> Dict[Any, Tuple[int, int]]:
        """The ``n`` keys with the most jobs (waiting + running), in no order: one pass, no copy."""
        if len(self.counts) <= n:
            return self.snapshot()
        best = heapq.nlargest(n, self.counts.items(), key=lambda item: item[1][0] + item[1][1])
        return {key: (c[0], c[1]) for key, c in best}

    def __len__(self) -> int:
        return len(self.counts)
