"""An example third-party scheduling policy for inginious-tx: newest job first.

Useful where only the latest submission of a student matters (an exam that
grades the last attempt): at equal priority, the job that arrived last runs
first.  It uses only the public interface, :class:`ISchedulingPolicy`, and
keeps one heap per environment with lazy deletion, so ``add``, ``remove`` and
``pop_next`` cost O(log n).
"""

from __future__ import annotations

import heapq
from typing import Any, Collection, Dict, List, Optional

from zope.interface import implementer

from inginious_tx.interfaces import ISchedulingPolicy

__all__ = ["NewestFirstPolicy"]


@implementer(ISchedulingPolicy)
class NewestFirstPolicy:
    """Lower ``priority`` value first, then the newest job first."""

    name = "newest-first"

    def __init__(self) -> None:
        # environment -> heap of [priority, -sequence, job]; job None = removed
        self._heaps: Dict[str, List[list]] = {}
        self._entries: Dict[Any, list] = {}
        self._counts: Dict[str, int] = {}

    def add(self, job: Any) -> None:
        if job.key in self._entries:
            raise ValueError(f"job {job.key!r} is already waiting")
        entry = [job.priority, -job.sequence, job]
        self._entries[job.key] = entry
        heapq.heappush(self._heaps.setdefault(job.environment, []), entry)
        self._counts[job.environment] = self._counts.get(job.environment, 0) + 1

    def remove(self, job: Any) -> None:
        entry = self._entries.get(job.key)
        if entry is None or entry[2] is not job:
            return
        del self._entries[job.key]
        entry[2] = None
        self._forget_one(job.environment)

    def pop_next(self, environments: Collection[str]) -> Optional[Any]:
        best: Optional[list] = None
        best_env = ""
        for env in environments:
            heap = self._heaps.get(env)
            while heap and heap[0][2] is None:
                heapq.heappop(heap)
            if heap and (best is None or heap[0] < best):
                best, best_env = heap[0], env
        if best is None:
            return None
        heapq.heappop(self._heaps[best_env])
        job = best[2]
        del self._entries[job.key]
        self._forget_one(best_env)
        return job

    def _forget_one(self, env: str) -> None:
        count = self._counts[env] - 1
        if count:
            self._counts[env] = count
            heap = self._heaps[env]
            if len(heap) > 64 and len(heap) > 2 * count:
                # more removed entries than live ones: rebuild (amortised O(1))
                live = [e for e in heap if e[2] is not None]
                heapq.heapify(live)
                self._heaps[env] = live
        else:
            del self._counts[env]
            del self._heaps[env]

    def waiting(self, environment: str) -> int:
        return self._counts.get(environment, 0)

    def ordered(self) -> List[Any]:
        entries = sorted(e for heap in self._heaps.values() for e in heap if e[2] is not None)
        return [e[2] for e in entries]

    def __len__(self) -> int:
        return len(self._entries)
