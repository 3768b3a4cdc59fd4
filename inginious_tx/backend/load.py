"""Waiting and running job counts per course and per client, kept as jobs move."""

from __future__ import annotations

from typing import Dict, List, Tuple

__all__ = ["LoadCounts", "WAITING_COUNT", "RUNNING_COUNT"]

#: Index of each count in a ``(waiting, running)`` pair.
WAITING_COUNT, RUNNING_COUNT = 0, 1


class LoadCounts:
    """``key -> (waiting, running)``, updated by the backend at each transition.

    Reading costs O(keys), never O(jobs), so status pages and metrics can ask
    often at 100,000 waiting jobs.  A key whose counts fall to (0, 0) is
    forgotten, so the table holds only courses or clients with jobs.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: Dict[str, List[int]] = {}

    def add(self, key: str, index: int, delta: int) -> None:
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0, 0]
        counts[index] += delta
        if not counts[0] and not counts[1]:
            del self._counts[key]

    def snapshot(self) -> Dict[str, Tuple[int, int]]:
        return {key: (c[0], c[1]) for key, c in self._counts.items()}
