"""Queue snapshots that cost little at 100,000 waiting jobs: built once, in slices, shared by every client.

Every INGInious frontend process asks for the queue every 10 s, and status
pages and metrics read the same state.  Sorting 100,000 jobs and encoding
them for each question blocked the reactor for 160-200 ms.  Here:

* each job's encoded row (per dialect) is made once in its life and kept on
  the job (``row06``/``row09``), saying "not yours";
* a *build* takes the waiting jobs in the policy's order (one call of
  ``ordered()``, which the built-in policies keep cheap), then joins their
  rows for every dialect that clients speak, and indexes the jobs;
* a question is answered from the last build: one copy of its bytes,
  flipping the byte that says "yours" for each of the asking client's
  waiting jobs, plus the running jobs (bounded by the agents' slots).

With up to ``small`` jobs waiting, a build is cheap and made at once, at
every change, so snapshots are exact.  With more, a build is made at most
once per ``max_age`` seconds, and in slices of ``slice_jobs`` jobs between
which the reactor runs (so no question, and no slice, holds it long); a
question meanwhile gets the previous build (the first ever waits for one).
So a big queue's waiting part may be up to ``max_age`` old, plus the build.
"""

from __future__ import annotations

import gc
from itertools import accumulate
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..interfaces import ISchedulingPolicy

__all__ = ["QueueSnapshot"]

#: What a question is answered with: the build's jobs, the dialect's joined
#: rows, the offset of each row's "yours" byte, and job -> place.
Answer = Callable[[List[Any], bytes, List[int], Dict[Any, int]], None]


class QueueSnapshot:
    """The waiting jobs in run order, with their encoded rows per dialect."""

    log = Logger()

    def __init__(
        self,
        policy: ISchedulingPolicy,
        clock: IReactorTime,
        max_age: float,
        small: int = 1000,
        slice_jobs: int = 2_000,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self.max_age = max_age
        self.small = small
        self.slice_jobs = slice_jobs
        # the last complete build
        self._version = -1
        self._built_at = 0.0
        self.jobs: List[Any] = []
        self._sections: Dict[str, Tuple[bytes, List[int]]] = {}
        self._index: Dict[Any, int] = {}
        #: every dialect a client asked in (their sections are built)
        self._dialects: Dict[str, Any] = {}
        self._building: Optional[Iterator[None]] = None
        self._waiting: List[Tuple[Any, Answer]] = []
        #: how many builds were completed (tests, benchmarks)
        self.builds = 0

    def ask(self, dialect: Any, version: int, waiting: int, answer: Answer) -> None:
        """Call ``answer`` with a build that is recent enough, now or once it is made."""
        self._dialects.setdefault(dialect.name, dialect)
        if waiting <= self.small and not self._building:
            if version != self._version or dialect.name not in self._sections:
                for _ in self._build(version, sliced=False):
                    pass
            self._answer(dialect, answer)
            return
        have = self._version >= 0 and dialect.name in self._sections
        due = version != self._version and self._clock.seconds() - self._built_at >= self.max_age
        if have:
            self._answer(dialect, answer)
        else:
            self._waiting.append((dialect, answer))
        if (due or not have) and self._building is None:
            self._building = self._build(version, sliced=True)
            self._clock.callLater(0, self._step)

    def _answer(self, dialect: Any, answer: Answer) -> None:
        section, offsets = self._sections[dialect.name]
        answer(self.jobs, section, offsets, self._index)

    def _step(self) -> None:
        """One slice of the build in progress; the next one after the reactor ran."""
        building = self._building
        if building is None:
            return
        try:
            next(building)
        except StopIteration:
            self._building = None
            waiting, self._waiting = self._waiting, []
            for dialect, answer in waiting:
                if dialect.name in self._sections:
                    self._answer(dialect, answer)
                else:  # a dialect first asked during the build: it waits for one more
                    self._waiting.append((dialect, answer))
            if self._waiting:
                self._building = self._build(self._version, sliced=True)
                self._clock.callLater(0, self._step)
            return
        except Exception:
            self._building = None
            self.log.failure("building a queue snapshot failed")
            return
        self._clock.callLater(0, self._step)

    def _build(self, version: int, sliced: bool) -> Iterator[None]:
        """:meth:`_build_steps`, with the cyclic garbage collector paused while a sliced build is under way.

        A build's temporaries (the order, a policy's sort keys) live across
        many slices, so the collector would promote them to its oldest
        generation, and soon run a full collection that walks every waiting
        job: 200-500 ms of stalled reactor at 100,000 waiting jobs (measured
        with the fair policy).  They hold no cycles: reference counting frees
        them when the build ends, and the collector runs again from there.
        """
        paused = sliced and gc.isenabled()
        if paused:
            gc.disable()
        try:
            yield from self._build_steps(version, sliced)
        finally:
            if paused:
                gc.enable()

    def _build_steps(self, version: int, sliced: bool) -> Iterator[None]:
        """Take the order, then each dialect's rows, ``slice_jobs`` at a time (yield: a pause)."""
        started = self._clock.seconds()
        steps = getattr(self._policy, "ordered_steps", None)
        if sliced and steps is not None:
            # The built-in policies give their order in steps too.
            jobs = list((yield from steps(self.slice_jobs)))
        else:
            jobs = list(self._policy.ordered())
        step = self.slice_jobs if sliced else max(1, len(jobs))
        if sliced:
            yield
        sections: Dict[str, Tuple[bytes, List[int]]] = {}
        for name, dialect in list(self._dialects.items()):
            parts: List[bytes] = []
            offsets: List[int] = []
            base = 0
            for start in range(0, len(jobs), step):
                rows, rels = dialect.waiting_rows(jobs[start : start + step])
                starts = list(accumulate(map(len, rows), initial=base))
                offsets += map(int.__add__, starts, rels)
                base = starts[-1]
                parts.append(b"".join(rows))
                if sliced:
                    yield
            sections[name] = (b"".join(parts), offsets)
        index: Dict[Any, int] = {}
        for start in range(0, len(jobs), step):
            index.update(zip(jobs[start : start + step], range(start, start + step), strict=False))
            if sliced:
                yield
        self.jobs, self._sections, self._index = jobs, sections, index
        self._version = version
        self._built_at = started
        self.builds += 1

    @staticmethod
    def own(jobs: Any, offsets: List[int], index: Dict[Any, int]) -> List[int]:
        """The offsets of the rows of ``jobs`` (a client's) in a build."""
        get = index.get
        return [offsets[i] for i in map(get, jobs) if i is not None]

    def expire(self, version: int) -> None:
        """Drop a stale build (its jobs hold memory) once it is due anyway."""
        if (
            self._building is None
            and not self._waiting
            and self._version >= 0
            and version != self._version
            and self._clock.seconds() - self._built_at >= self.max_age
        ):
            self.jobs = []
            self._sections = {}
            self._index = {}
            self._version = -1
