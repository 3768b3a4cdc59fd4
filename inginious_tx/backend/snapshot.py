"""Queue snapshots that cost little at 100,000 waiting jobs: built once, shared by every client.

Every INGInious frontend process asks for the queue every 10 s, and status
pages and metrics read the same state.  Sorting 100,000 jobs and encoding
them for each question blocked the reactor for 160-200 ms.  Here the
waiting jobs are taken in the policy's order (``ordered()``) once per
change of the queue, at most once per ``max_age`` seconds when more than
``small`` jobs wait (fewer: at every change), and shared:

* each job's encoded row (per dialect) is made once in its life and kept on
  the job (``row06``/``row09``), saying "not yours";
* the encoded rows are joined once per snapshot and dialect;
* a question then costs one copy of those bytes, flipping the one byte
  that says "yours" for each of the asking client's waiting jobs, plus the
  running jobs (bounded by the agents' slots), encoded as asked.

So a big queue's waiting part may be up to ``max_age`` old (a job that
started since may still show as waiting).
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.interfaces import IReactorTime

from ..interfaces import ISchedulingPolicy

__all__ = ["QueueSnapshot"]


class QueueSnapshot:
    """The waiting jobs in run order, with their encoded rows per dialect."""

    def __init__(self, policy: ISchedulingPolicy, clock: IReactorTime, max_age: float, small: int = 1000) -> None:
        self._policy = policy
        self._clock = clock
        self.max_age = max_age
        self.small = small
        self._version = -1
        self._built_at = 0.0
        #: the waiting jobs, in the policy's order, as of the last build
        self.jobs: List[Any] = []
        #: dialect name -> (joined rows, offset of each row's "yours" byte)
        self._sections: Dict[str, Tuple[bytes, List[int]]] = {}
        #: job -> its place in ``jobs``, made when a client with waiting jobs asks
        self._index: Optional[Dict[Any, int]] = None
        #: how many times the order was taken from the policy (tests, benchmarks)
        self.builds = 0

    def refresh(self, version: int, waiting: int) -> None:
        """Take the order again if the queue changed (``version``) and it is due."""
        if version == self._version:
            return
        now = self._clock.seconds()
        if self._version >= 0 and waiting > self.small and now - self._built_at < self.max_age:
            return
        self.jobs = list(self._policy.ordered())
        self._index = None
        self._sections = {}
        self._version = version
        self._built_at = now
        self.builds += 1

    def section(self, dialect: Any) -> Tuple[bytes, List[int]]:
        """The joined waiting rows in ``dialect`` and where each says whose job it is."""
        section = self._sections.get(dialect.name)
        if section is None:
            rows, rels = dialect.waiting_rows(self.jobs)
            starts = accumulate(map(len, rows), initial=0)
            section = self._sections[dialect.name] = (b"".join(rows), list(map(int.__add__, starts, rels)))
        return section

    def own(self, jobs: Any, offsets: List[int]) -> List[int]:
        """The offsets of the rows of ``jobs`` (a client's) in the last build."""
        index = self._index
        if index is None:
            index = self._index = dict(zip(self.jobs, range(len(self.jobs))))
        get = index.get
        return [offsets[i] for i in map(get, jobs) if i is not None]

    def expire(self, version: int) -> None:
        """Drop a stale build (its jobs hold memory) once it is due anyway."""
        if self._version >= 0 and version != self._version and self._clock.seconds() - self._built_at >= self.max_age:
            self.jobs = []
            self._sections = {}
            self._index = None
            self._version = -1
