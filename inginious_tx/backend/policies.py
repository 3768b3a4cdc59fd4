"""Scheduling policies: which waiting job runs next.

A policy owns the order of waiting jobs and nothing else; the backend core
(:mod:`inginious_tx.backend.core`) owns the jobs, the agents and the slots.
The built-in policies are registered under the ``inginious_tx.policies``
entry point group exactly like third-party ones, and chosen by name.

All three keep one binary heap per environment, so that ``add`` and
``pop_next`` cost O(log n), and delete lazily: ``remove`` marks the heap entry
dead in O(1), dead entries are skipped when they reach the top, and a heap is
rebuilt once it holds more dead entries than live ones, which keeps both the
memory and the amortised cost bounded.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from itertools import compress, groupby, islice, repeat
from operator import add, itemgetter, mul
from typing import Any, Collection, Dict, Generator, Hashable, List, Optional, Tuple

from zope.interface import implementer
from zope.interface.verify import verifyObject

from ..interfaces import ISchedulingPolicy
from ..plugin import POLICIES, PluginError, available, load
from .load import SHRINK_FLOOR

__all__ = [
    "GROUP",
    "DEFAULT_POLICY",
    "PriorityPolicy",
    "FairPolicy",
    "ShortestFirstPolicy",
    "available_policies",
    "load_policy",
]

#: The entry point group scheduling policies are registered under.
GROUP = POLICIES
#: The policy used when none is named.
DEFAULT_POLICY = "priority"

# A heap entry is a list ``[*rank, job]``: the rank's items (ending with the
# job's unique sequence number, so two entries never tie and jobs themselves
# are never compared), then the job, set to None when the job is removed.
# Flat entries keep a heap comparison to one list compare of small ints.
_Entry = List[Any]

#: Rebuild a heap when it holds more dead entries than this and than live ones.
_COMPACT_MIN = 64

_first, _second, _third, _last = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(-1)
# FairPolicy's merge keys: priority, then rounds ahead, then arrival, in one int.
_P0, _R0 = 1 << 62, 1 << 62
_ROUND_SCALE = 1 << 64
_PRIORITY_SCALE = 1 << 192


def _sort_steps(done: Optional[List[Any]], rest: List[Any], chunk: int) -> Generator[None, None, List[Any]]:
    """``done`` (sorted, or None) and ``rest`` (in no order) as one sorted list, pausing (yield)
    about every ``chunk`` entries, so that no step sorts, compares or copies much more than that.

    ``rest`` is sorted in chunks, merged lazily; then each of its entries is
    put in its place in ``done`` by bisection, the runs of ``done`` between
    them copied at C speed.  Items must never compare equal.
    """
    if len(rest) <= chunk:
        rest.sort()
        yield
    else:
        runs = []
        for start in range(0, len(rest), chunk):
            part = rest[start : start + chunk]
            part.sort()
            runs.append(part)
            yield
        stream = heapq.merge(*runs)
        rest = []
        while True:
            before = len(rest)
            rest.extend(islice(stream, chunk))
            yield
            if len(rest) - before < chunk:
                break
    if not done:
        return rest
    out: List[Any] = []
    place = bisect_right
    copied = 0
    previous = 0
    for i, entry in enumerate(rest, 1):
        at = place(done, entry, previous)
        out.extend(done[previous:at])
        out.append(entry)
        copied += at - previous
        previous = at
        if i % chunk == 0 or copied > 16 * chunk:
            copied = 0
            yield
    for start in range(previous, len(done), 16 * chunk):
        out.extend(done[start : start + 16 * chunk])
        yield
    return out


class _HeapPolicy:
    """Per-environment heaps with lazy deletion; subclasses define the rank.

    Subclasses implement :meth:`_rank` (the heap key of a job being added) and
    may override :meth:`_compare` (how the tops of two environments' heaps
    compare when an agent offers both) and the ``_on_*`` hooks.
    """

    name = ""

    def __init__(self) -> None:
        self._heaps: Dict[str, List[_Entry]] = {}
        self._entries: Dict[Hashable, _Entry] = {}
        self._live: Dict[str, int] = {}
        self._dead: Dict[str, int] = {}
        # For ordered(): each environment's entries sorted as of the last call,
        # and those added since (None: not kept, until ordered() is called).
        # Runs are per environment only when environments compare their own
        # way (_compare); otherwise one run holds every entry.
        self._sorted: Optional[Dict[Any, List[_Entry]]] = None
        self._added: Optional[Dict[Any, List[_Entry]]] = None
        self._n_added = 0
        self._runs_by_env = type(self)._compare is not _HeapPolicy._compare
        #: the most jobs waiting since the tables were last rebuilt (see _shrink)
        self._peak = 0

    # -- to be defined by subclasses ------------------------------------------

    def _rank(self, job: Any) -> List[Any]:
        """The heap key of ``job``, ending with its sequence number."""
        raise NotImplementedError

    def _compare(self, environment: str, entry: _Entry) -> Any:
        """The key by which the tops of different environments compete."""
        return entry

    def _on_removed(self, job: Any, entry: _Entry) -> None:
        """``job`` stopped waiting without running."""

    def _on_popped(self, job: Any, entry: _Entry) -> None:
        """``job`` was picked to run."""

    # -- ISchedulingPolicy ----------------------------------------------------

    def add(self, job: Any) -> None:
        key = job.key
        if key in self._entries:
            raise ValueError(f"job {key!r} is already waiting")
        env = job.environment
        entry = self._rank(job)
        entry.append(job)
        self._entries[key] = entry
        if len(self._entries) > self._peak:
            self._peak = len(self._entries)
        added = self._added
        if added is not None:
            run = env if self._runs_by_env else None
            pending = added.get(run)
            if pending is None:
                added[run] = [entry]
            else:
                pending.append(entry)
            self._n_added += 1
            if self._n_added > 2 * len(self._entries) + 1024:
                # Nobody asks for the order any more: stop keeping it.
                self._sorted = self._added = None
        heap = self._heaps.get(env)
        if heap is None:
            self._heaps[env] = [entry]
            self._live[env] = 1
            self._dead[env] = 0
        else:
            heapq.heappush(heap, entry)
            self._live[env] += 1

    def remove(self, job: Any) -> None:
        entry = self._entries.get(job.key)
        if entry is None or entry[-1] is not job:
            return  # not waiting here: nothing to do
        del self._entries[job.key]
        entry[-1] = None
        env = job.environment
        live = self._live[env] - 1
        if live == 0:
            self._drop_environment(env)
        else:
            self._live[env] = live
            dead = self._dead[env] + 1
            self._dead[env] = dead
            if dead > _COMPACT_MIN and dead > live:
                heap = [e for e in self._heaps[env] if e[-1] is not None]
                heapq.heapify(heap)
                self._heaps[env] = heap
                self._dead[env] = 0
        self._on_removed(job, entry)
        if self._peak > SHRINK_FLOOR and len(self._entries) * 4 < self._peak:
            self._shrink()

    def pop_next(self, environments: Collection[str]) -> Optional[Any]:
        heaps = self._heaps
        best: Optional[_Entry] = None
        best_env = ""
        best_key: Any = None
        for env in environments:
            heap = heaps.get(env)
            if not heap:
                continue
            top = heap[0]
            if top[-1] is None:
                top = self._clean_top(env, heap)
            if best is None:
                best, best_env = top, env
                best_key = None  # computed only if there is a competitor
                continue
            if best_key is None:
                best_key = self._compare(best_env, best)
            key = self._compare(env, top)
            if key < best_key:
                best, best_env, best_key = top, env, key
        if best is None:
            return None
        heap = heaps[best_env]
        heapq.heappop(heap)
        job = best[-1]
        del self._entries[job.key]
        live = self._live[best_env] - 1
        if live == 0:
            self._drop_environment(best_env)
        else:
            self._live[best_env] = live
            if heap[0][-1] is None:
                self._clean_top(best_env, heap)
        self._on_popped(job, best)
        best[-1] = None  # gone from the heap: dead for ordered() too
        if self._peak > SHRINK_FLOOR and len(self._entries) * 4 < self._peak:
            self._shrink()
        return job

    def waiting(self, environment: str) -> int:
        return self._live.get(environment, 0)

    def ordered(self) -> List[Any]:
        """Every waiting job in run order.

        Each environment's entries are kept sorted from one call to the next
        (dead ones dropped, new ones merged in), so that a call costs about
        O(n) plus O(k log k) for the k jobs added since, not a full sort.
        """
        runs = self._sorted_runs()
        if not self._runs_by_env:
            # Entries compare as they are (their rank ends with a unique
            # sequence number): one run, kept sorted.
            return list(map(_last, runs[0])) if runs else []
        return self._merge(runs)

    def _sorted_runs(self) -> List[List[_Entry]]:
        """Each environment's live entries, sorted by rank."""
        previous, added = self._sorted, self._added
        runs: Dict[Any, List[_Entry]] = {}
        if self._runs_by_env:
            groups: Dict[Any, List[List[_Entry]]] = {env: [heap] for env, heap in self._heaps.items()}
        else:
            groups = {None: list(self._heaps.values())} if self._heaps else {}
        for key, heaps in groups.items():
            # compress() keeps the live entries (their job is truthy) at C speed.
            if previous is None or added is None:
                run = [entry for heap in heaps for entry in compress(heap, map(_last, heap))]
            else:
                old = previous.get(key, ())
                new = added.get(key, ())
                run = list(compress(old, map(_last, old)))
                run.extend(compress(new, map(_last, new)))
            run.sort()
            runs[key] = run
        self._sorted = runs
        self._added = {}
        self._n_added = 0
        return list(runs.values())

    def ordered_steps(self, chunk: int = 2_000) -> Generator[None, None, List[Any]]:
        """:meth:`ordered`, in steps of about ``chunk`` entries (each ``yield`` is a pause).

        For a caller that lets the reactor run between steps (queue
        snapshots): the policy may change meanwhile; the result is the order
        as it was when the steps began, less the jobs that had stopped waiting
        when their part was read.
        Not part of :class:`~inginious_tx.interfaces.ISchedulingPolicy`.
        """
        previous, added = self._sorted, self._added
        # Adds from now on are kept apart; a plain ordered() meanwhile sorts in full.
        self._sorted = None
        self._added = {}
        self._n_added = 0
        # key -> (a run already sorted, or None; entries in no order)
        sources: Dict[Any, Tuple[Optional[List[_Entry]], List[List[_Entry]]]] = {}
        if previous is None or added is None:
            for env, heap in self._heaps.items():
                sources.setdefault(env if self._runs_by_env else None, (None, []))[1].append(list(heap))
        else:
            for key in set(previous) | set(added):
                sources[key] = (previous.get(key), [added.get(key, [])])
        runs: Dict[Any, List[_Entry]] = {}
        for key, (done, lists) in sources.items():
            live: Optional[List[_Entry]] = None
            if done is not None:
                live = []
                for start in range(0, len(done), chunk):
                    part = done[start : start + chunk]
                    live.extend(compress(part, map(_last, part)))
                    yield
            rest: List[_Entry] = []
            for entries in lists:
                for start in range(0, len(entries), chunk):
                    part = entries[start : start + chunk]
                    rest.extend(compress(part, map(_last, part)))
                    yield
            runs[key] = yield from _sort_steps(live, rest, chunk)
        if self._sorted is None:  # no plain ordered() in between: keep the runs for next time
            self._sorted = runs
        if not self._runs_by_env:
            jobs: List[Any] = []
            run = runs.get(None, [])
            for start in range(0, len(run), chunk):
                jobs.extend(filter(None, map(_last, run[start : start + chunk])))
                yield
            return jobs
        live_runs: List[List[_Entry]] = []
        for run in runs.values():
            live = []
            for start in range(0, len(run), chunk):
                part = run[start : start + chunk]
                live.extend(compress(part, map(_last, part)))
                yield
            live_runs.append(live)
        return (yield from self._merge_steps(live_runs, chunk))

    def _merge(self, runs: List[List[_Entry]]) -> List[Any]:
        """Merge per-environment runs by :meth:`_compare` (in one go)."""
        steps = self._merge_steps(runs, 1 << 62)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                merged: List[Any] = done.value
                return merged

    def _merge_steps(self, runs: List[List[_Entry]], chunk: int) -> Generator[None, None, List[Any]]:
        """Merge per-environment runs by :meth:`_compare`, pausing (yield) about every ``chunk`` entries
        (subclasses may do it faster)."""
        keyed = [(self._compare(entry[-1].environment, entry), entry[-1]) for run in runs for entry in run]
        yield
        keyed.sort(key=_first)
        return [job for _, job in keyed]

    def __len__(self) -> int:
        return len(self._entries)

    # -- helpers ---------------------------------------------------------------

    def _clean_top(self, env: str, heap: List[_Entry]) -> _Entry:
        """Pop dead entries off the top; the environment has a live job."""
        pop = heapq.heappop
        n = 0
        while heap[0][-1] is None:
            pop(heap)
            n += 1
        self._dead[env] -= n
        return heap[0]

    def _shrink(self) -> None:
        """Rebuild the tables once they hold a quarter of their peak: a dict keeps
        its size when emptied, so a client that queued 100,000 jobs and left would
        keep their memory (amortised O(1) a job)."""
        self._entries = dict(self._entries)
        self._heaps = dict(self._heaps)
        self._live = dict(self._live)
        self._dead = dict(self._dead)
        self._on_shrink()
        self._peak = len(self._entries)

    def _on_shrink(self) -> None:
        """Rebuild a subclass's own tables (see :meth:`_shrink`)."""

    def _drop_environment(self, env: str) -> None:
        del self._heaps[env]
        del self._live[env]
        del self._dead[env]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self)} waiting>"


@implementer(ISchedulingPolicy)
class PriorityPolicy(_HeapPolicy):
    """Lower ``priority`` value first, then arrival order (INGInious 0.6's order).

    This is the default policy.
    """

    name = "priority"

    def _rank(self, job: Any) -> List[Any]:
        return [job.priority, job.sequence]


@implementer(ISchedulingPolicy)
class ShortestFirstPolicy(_HeapPolicy):
    """Short jobs first, with aging so that long jobs still run.

    Within a priority level (lower value first, as everywhere), each job gets
    a *virtual deadline* ``submitted_at + stretch * time_limit`` and the
    earliest deadline runs first.  A 10-second job submitted now overtakes a
    300-second job submitted a minute ago (deadlines now + 40 and -60 + 1200
    with ``stretch = 4``), but not one submitted more than ``stretch * (300 -
    10)`` seconds ago: every job's deadline is fixed when it arrives, and any
    job arriving after that deadline gets a later one, so no job waits
    forever.  ``stretch`` is a class attribute (subclass to change it); a job
    without a positive time limit counts as ``no_limit_seconds`` long.
    Re-queued jobs keep their first deadline.
    """

    name = "shortest-first"
    stretch = 4.0
    no_limit_seconds = 3600

    def _rank(self, job: Any) -> List[Any]:
        limit = job.time_limit if job.time_limit > 0 else self.no_limit_seconds
        return [job.priority, job.submitted_at + self.stretch * limit, job.sequence]


@implementer(ISchedulingPolicy)
class FairPolicy(_HeapPolicy):
    """Round-robin between courses at equal priority.

    Lower ``priority`` values still run first.  Within one environment and
    priority level, each course's waiting jobs are numbered in rounds: a
    course's next job gets round ``max(its last round, current round) + 1``,
    where the current round is that of the last job that started.  Jobs run
    by round, then by arrival, so a course that submits 500 jobs at once fills
    rounds 1..500 while another course's single job lands in the next round
    and runs after at most one job of each other course (start-time fair
    queuing; O(log n) per operation).  A course that has nothing waiting
    forgets its rounds, so being idle earns no credit.

    Environments have their own round counters; when an agent offers several,
    their candidates compete by priority, then by how many rounds they are
    ahead of their environment's current round, then by arrival.  A job that
    is re-queued after its agent was lost (``retries > 0``) goes back to the
    current round rather than behind its course's backlog.
    """

    name = "fair"

    def __init__(self) -> None:
        super().__init__()
        # (environment, priority) -> round of the last job that started
        self._round: Dict[Tuple[str, int], int] = {}
        # (environment, priority) -> number of waiting jobs at that level
        self._level_size: Dict[Tuple[str, int], int] = {}
        # (environment, priority, course) -> [last round given, waiting count]
        self._courses: Dict[Tuple[str, int, str], List[int]] = {}

    def _on_shrink(self) -> None:
        self._round = dict(self._round)
        self._level_size = dict(self._level_size)
        self._courses = dict(self._courses)

    def _rank(self, job: Any) -> List[Any]:
        level = (job.environment, job.priority)
        current = self._round.get(level, 0)
        self._level_size[level] = self._level_size.get(level, 0) + 1
        ckey = (job.environment, job.priority, job.course_id)
        course = self._courses.get(ckey)
        if getattr(job, "retries", 0):
            tag = current
        else:
            tag = max(course[0] if course is not None else current, current) + 1
        if course is None:
            self._courses[ckey] = [tag, 1]
        else:
            if tag > course[0]:
                course[0] = tag
            course[1] += 1
        return [job.priority, tag, job.sequence]

    def _compare(self, environment: str, entry: _Entry) -> Any:
        priority, tag, sequence, _ = entry
        return (priority, tag - self._round.get((environment, priority), 0), sequence)

    def _merge_steps(self, runs: List[List[_Entry]], chunk: int) -> Generator[None, None, List[Any]]:
        """Merge the environments' runs by (priority, rounds ahead, arrival) with integer keys.

        Within an environment and priority, the key's shift (the current
        round) is one constant, so each key is computed by C-level maps, and
        the merge is one sort of (int, job) pairs.  Pauses (yield) between
        groups of about ``chunk`` entries.
        """
        merged: List[List[Tuple[int, Any]]] = []
        done = 0
        for run in runs:
            # Entries may have died since the run was read (the reactor ran): skip them.
            run = list(compress(run, map(_last, run)))
            if not run:
                continue
            env = run[0][-1].environment
            pairs: List[Tuple[int, Any]] = []
            yield
            for priority, group in groupby(run, key=_first):
                members = list(group)
                base = (priority + _P0) * _PRIORITY_SCALE + (_R0 - self._round.get((env, priority), 0)) * _ROUND_SCALE
                for start in range(0, len(members), chunk):
                    part = members[start : start + chunk]
                    keys = map(
                        add,
                        map(mul, map(_second, part), repeat(_ROUND_SCALE)),
                        map(add, map(_third, part), repeat(base)),
                    )
                    pairs.extend(zip(keys, map(_last, part), strict=True))
                    done += len(part)
                    if done >= chunk:
                        done = 0
                        yield
            # In rank order already, hence in key order: a linear check by timsort.
            pairs.sort(key=_first)
            merged.append(pairs)
            yield
        jobs: List[Any] = []
        # The environments' runs merged lazily, ``chunk`` entries per step
        # (keys are unique: jobs are never compared).
        stream = heapq.merge(*merged, key=_first) if len(merged) > 1 else iter(merged[0] if merged else ())
        while True:
            taken = list(islice(stream, chunk))
            jobs.extend(filter(None, map(_second, taken)))
            yield
            if len(taken) < chunk:
                break
        # Freeing the pairs is work too: in steps as well.
        for pairs in merged:
            while pairs:
                del pairs[-chunk:]
                yield
        return jobs

    def _forget(self, job: Any) -> Tuple[str, int]:
        level = (job.environment, job.priority)
        ckey = (job.environment, job.priority, job.course_id)
        course = self._courses[ckey]
        course[1] -= 1
        if course[1] == 0:
            del self._courses[ckey]
        size = self._level_size[level] - 1
        if size == 0:
            del self._level_size[level]
            self._round.pop(level, None)
        else:
            self._level_size[level] = size
        return level

    def _on_removed(self, job: Any, entry: _Entry) -> None:
        self._forget(job)

    def _on_popped(self, job: Any, entry: _Entry) -> None:
        level = self._forget(job)
        tag = entry[1]
        if level in self._level_size and tag > self._round.get(level, 0):
            self._round[level] = tag


# ---------------------------------------------------------------------------
# Loading by name
# ---------------------------------------------------------------------------


def available_policies() -> List[str]:
    """The names of every installed scheduling policy, sorted."""
    return sorted(available(GROUP))


def load_policy(name: str) -> ISchedulingPolicy:
    """A new instance of the policy registered as ``name``.

    Raises :class:`~inginious_tx.plugin.PluginError` naming the available
    policies if there is none by that name, or if it is broken.
    """
    factory = load(GROUP, name)
    try:
        policy = factory()
        verifyObject(ISchedulingPolicy, policy)
    except Exception as e:
        raise PluginError(f"scheduling policy {name!r} could not be built: {e}") from e
    return policy
