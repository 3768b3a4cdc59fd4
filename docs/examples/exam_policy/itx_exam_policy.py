"""A scheduling policy for exam days: the exam courses' jobs run first.

During an exam, students wait for their grade while the rest of the
university keeps submitting homework.  This policy lets the jobs of the
courses named in ``ITX_EXAM_COURSES`` (comma-separated) overtake every other
job; within each group, lower ``priority`` values first, then arrival order.

It keeps one binary heap per environment and deletes lazily, so ``add``,
``remove`` and ``pop_next`` cost O(log n) in the number of waiting jobs.
"""

from __future__ import annotations

import heapq
import os
from typing import Any, Collection, Dict, Hashable, Iterable, List, Optional

from zope.interface import implementer

from inginious_tx.interfaces import ISchedulingPolicy

__all__ = ["ExamFirstPolicy", "ENV_VAR"]

#: The environment variable naming the exam courses, read when the policy is built.
ENV_VAR = "ITX_EXAM_COURSES"

#: Rebuild a heap once it holds this many more dead entries than live ones.
_SLACK = 64


@implementer(ISchedulingPolicy)
class ExamFirstPolicy:
    """Exam courses first, then lower priority values, then arrival order."""

    name = "exam-first"

    def __init__(self, exam_courses: Optional[Iterable[str]] = None) -> None:
        # The backend builds a policy with no arguments: the courses then
        # come from the environment of the backend process.
        if exam_courses is None:
            exam_courses = os.environ.get(ENV_VAR, "").split(",")
        self.exam_courses = frozenset(c.strip() for c in exam_courses if c.strip())
        # environment -> heap of [group, priority, sequence, job]; a removed
        # job's entry stays in its heap with job set to None.
        self._heaps: Dict[str, List[List[Any]]] = {}
        # job key -> its heap entry, for the jobs still waiting
        self._entries: Dict[Hashable, List[Any]] = {}
        # environment -> number of waiting jobs (live entries)
        self._waiting: Dict[str, int] = {}

    def add(self, job: Any) -> None:
        if job.key in self._entries:
            raise ValueError(f"job {job.key!r} is already waiting")
        group = 0 if job.course_id in self.exam_courses else 1
        # The sequence number is unique, so two entries never compare their jobs.
        entry = [group, job.priority, job.sequence, job]
        self._entries[job.key] = entry
        heapq.heappush(self._heaps.setdefault(job.environment, []), entry)
        self._waiting[job.environment] = self._waiting.get(job.environment, 0) + 1

    def remove(self, job: Any) -> None:
        entry = self._entries.pop(job.key, None)
        if entry is None:
            return  # not waiting: nothing to do
        entry[-1] = None  # dead: skipped when it reaches the top of its heap
        self._forget_one(job.environment)

    def pop_next(self, environments: Collection[str]) -> Optional[Any]:
        best: Optional[List[Any]] = None
        best_env = ""
        for env in environments:
            heap = self._heaps.get(env)
            if heap is None:
                continue
            while heap[0][-1] is None:  # a heap that exists holds a live entry
                heapq.heappop(heap)
            if best is None or heap[0] < best:
                best, best_env = heap[0], env
        if best is None:
            return None
        heapq.heappop(self._heaps[best_env])
        job = best[-1]
        del self._entries[job.key]
        self._forget_one(best_env)
        return job

    def waiting(self, environment: str) -> int:
        return self._waiting.get(environment, 0)

    def ordered(self) -> List[Any]:
        live = sorted(e for heap in self._heaps.values() for e in heap if e[-1] is not None)
        return [entry[-1] for entry in live]

    def __len__(self) -> int:
        return len(self._entries)

    def _forget_one(self, env: str) -> None:
        """One job of ``env`` stopped waiting: drop or compact its heap."""
        left = self._waiting[env] - 1
        if left == 0:
            del self._waiting[env], self._heaps[env]
            return
        self._waiting[env] = left
        heap = self._heaps[env]
        if len(heap) > 2 * left + _SLACK:
            live = [e for e in heap if e[-1] is not None]
            heapq.heapify(live)
            self._heaps[env] = live
