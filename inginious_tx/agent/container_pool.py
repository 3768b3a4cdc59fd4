"""Containers prepared ahead of demand: a job takes one that already runs and waits for it.

Starting a container costs a few hundred milliseconds alone, and seconds when
many start at once (the engine serialises much of the work).  A pool keeps,
per *key*, a few containers created and started before any job asks, each
waiting for its job; a job that finds one skips that cost.  The pool knows
nothing of how a container is made: an :class:`IContainerMaker` makes,
checks and removes them, and decides what a key holds (everything fixed when
a container is created: image, runtime, network, user...).

The rules:

- **one container, one job.**  :meth:`ContainerPool.take` hands a container
  out once and forgets it; the caller removes it after its job, as it would
  a container it made itself.  Taking one schedules a fresh one.
- **a miss costs nothing more.**  ``take`` returns None when no container of
  the key is ready (or the pool is off for it): the caller makes one as it
  would without a pool.
- **sized by demand.**  Each key's *level* is the largest number of takes
  seen within ``window`` seconds, decaying by half every ``half_life``
  seconds; its target is that level rounded to the nearest whole number,
  bounded by ``max_per_key`` (the operator's maximum, by default the
  agent's slots) and, for all keys together, ``max_total``.  A key nobody
  uses has no demand and no container; one used once keeps one for about
  ``half_life`` seconds; a burst of N jobs at once keeps up to N while it
  lasts.  Containers above the target are removed at the next ``tick``.
- **bounded creation.**  Containers are made through a FIFO queue, at most
  ``concurrency`` at a time, so that refilling after a burst does not add a
  burst of its own on the engine.  A key whose creation fails waits (1 s,
  doubling up to 60 s) before the next try.
- **checked at take.**  A container that died while it waited is discarded
  at take time (:meth:`IContainerMaker.alive`) and the next one is tried; the
  job itself never sees it.
- **bounded removal.**  Removals (containers the pool discards, and those
  the callers hand over after their job, :meth:`ContainerPool.remove_later`)
  run at most ``removals`` at a time, in the order asked; the others wait in the
  pool, not in the engine's queue nor in the threads jobs need.  (Measured
  under bursts of 64 jobs on 8 slots with a warm pool of 64: the same p99,
  3.4 s with 2 at a time and 3.3 s unbounded, means of 4 bursts; and
  removals held back while creations run made the p99 worse.  The bound
  is kept for what it guarantees: removals never hold more than 2 of the
  backend's threads.)
- :meth:`ContainerPool.close` stops refilling, waits for the creations under
  way and removes every container still waiting.

What a killed agent leaves in its pool (containers, their folders) carries
the agent's owner token like any other container of it (the maker's job),
so the next agent removes it (:mod:`._leftovers`).

**The makers.**  The Docker agent's helper mode (:mod:`.docker_pool`)
makes containers that wait on their standard input with a per-container
folder mounted.  Its INGInious mode (:mod:`.inginious_pool`) makes grading
containers of INGInious images, whose own program waits on stdin for a
``start`` message: ``make`` creates one with ``stdin_open`` and its own
empty job folder mounted, attaches to its standard input and output, starts
it and returns a :class:`PooledContainer` whose ``data`` holds the folder
and the attached socket; ``alive`` checks that the socket is still open and
silent; ``discard`` closes it and removes the container and its folder; the
job that takes one fills the folder and writes its ``start`` message on
that socket.  Each key holds what is fixed at creation (environment, image,
runtime, network), and the memory limit when the runtime cannot change it
later (``docker update``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Hashable, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

__all__ = [
    "IContainerMaker", "IContainerPool", "PooledContainer", "KeyStats", "ContainerPool", "NotReady", "Unpoolable",
    "ReadyHistogram", "READY_BUCKETS", "IPooledBackend",
]  # fmt: skip

#: Seconds a key waits after a failed creation, at first and at most.
_BACKOFF_MIN = 1.0
_BACKOFF_MAX = 60.0
#: How many job-to-ready times each key keeps for its percentiles.
_READY_SAMPLES = 256
#: Upper bounds (seconds) of the job-to-ready histogram's buckets (then +Inf).
READY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NotReady(Exception):
    """A maker cannot make a key's containers yet (it waits for something): the pool tries again
    later, without counting a failure or logging one."""


class Unpoolable(Exception):
    """A key's containers cannot be made ahead at all (``str()`` says why): the pool stops trying
    for that key, once logged; its jobs make their own."""


@dataclass
class PooledContainer:
    """A container made ahead for ``key``, waiting for its job."""

    key: Hashable
    container_id: str
    #: the maker's own: what the job needs to reach the container (its folder, a socket)
    data: Any = None
    #: when it was ready (the pool's clock)
    ready_at: float = 0.0


class IContainerMaker(Interface):
    """Makes, checks and removes the containers of a :class:`IContainerPool`."""

    def make(key: Hashable) -> Deferred:
        """Create and start a container for ``key``, waiting for its job; fires with a
        :class:`PooledContainer` (or fails: the pool backs off that key; :class:`NotReady`: it
        tries again in a second; :class:`Unpoolable`: never again for that key)."""

    def alive(container: PooledContainer) -> Deferred:
        """Fires with True if ``container`` still runs and waits (checked when it is taken)."""

    def discard(container: PooledContainer) -> Deferred:
        """Remove a container no job will use, and what goes with it; never fails."""


class IContainerPool(Interface):
    """Containers made ahead, per key; each handed to one job."""

    closed = Attribute("True once close() was called: nothing more is made.")

    def take(key: Hashable) -> Deferred:
        """A ready container of ``key`` (a :class:`PooledContainer`, the caller's from now on), or
        None: none is ready, the caller makes one.  Counts as demand for ``key`` either way."""

    def record_ready(key: Hashable, seconds: float, hit: bool) -> None:
        """The caller's job had its container ready ``seconds`` after it arrived (for the stats)."""

    def stats() -> Dict[Hashable, KeyStats]:
        """The figures of every key seen so far."""

    def flush(key: Hashable) -> Deferred:
        """Discard the ready containers of ``key`` (its image changed...); fires when they are gone."""

    def remove_later(remove: Callable[[], Deferred]) -> Deferred:
        """Run ``remove()`` (a removal the caller's job does not wait for: its used container) in the
        pool's removal queue; fires with its result.  Also after close(), which waits for them all."""

    def close() -> Deferred:
        """Make nothing more, wait for the creations under way, remove what waits."""


class IPooledBackend(Interface):
    """An agent backend with containers prepared ahead (its figures go to the agent's metrics)."""

    def container_pools() -> List[IContainerPool]:
        """Its pools (empty: none is on)."""


@dataclass
class ReadyHistogram:
    """Job-to-ready times since the start, counted per bucket of :data:`READY_BUCKETS` (for metrics)."""

    #: per bucket (not cumulative), the last one for what is above every bound
    counts: List[int] = field(default_factory=lambda: [0] * (len(READY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.total += seconds
        for i, bound in enumerate(READY_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class KeyStats:
    """What one key of the pool did: for logs, status and tests."""

    #: containers ready now, being made now, and wanted
    ready: int = 0
    creating: int = 0
    target: int = 0
    #: takes that got a container, and that did not
    hits: int = 0
    misses: int = 0
    #: containers found dead when taken, creations that failed
    dead: int = 0
    failures: int = 0
    #: job arrival to container ready, in seconds (the last ones), for hits and misses
    ready_seconds_hit: Deque[float] = field(default_factory=lambda: deque(maxlen=_READY_SAMPLES))
    ready_seconds_miss: Deque[float] = field(default_factory=lambda: deque(maxlen=_READY_SAMPLES))
    #: containers made ahead (ready, whatever became of them since)
    made: int = 0
    #: every job-to-ready time since the start, for hits and misses
    ready_hit: ReadyHistogram = field(default_factory=ReadyHistogram)
    ready_miss: ReadyHistogram = field(default_factory=ReadyHistogram)

    @staticmethod
    def percentile(values: Deque[float], q: float) -> Optional[float]:
        """The ``q`` quantile (0..1) of ``values``, None if there is none."""
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Demand:
    """One key's demand: the most takes seen within ``window`` seconds, halved every ``half_life``."""

    def __init__(self, window: float, half_life: float) -> None:
        self._window = window
        self._half_life = half_life
        self._recent: Deque[float] = deque()
        self._level = 0.0
        self._at = 0.0

    def level(self, now: float) -> float:
        if self._level and now > self._at:
            self._level *= 0.5 ** ((now - self._at) / self._half_life)
            if self._level < 1e-3:
                self._level = 0.0
        self._at = max(self._at, now)
        return self._level

    def took(self, now: float) -> None:
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self._window:
            self._recent.popleft()
        self._level = max(self.level(now), float(len(self._recent)))

    def target(self, now: float) -> int:
        return int(math.floor(self.level(now) + 0.5))


@dataclass
class _Key:
    demand: _Demand
    stats: KeyStats
    ready: List[PooledContainer] = field(default_factory=list)
    creating: int = 0
    queued: int = 0
    #: no creation for this key before this time (after failures), and the next wait
    not_before: float = 0.0
    backoff: float = _BACKOFF_MIN
    #: the maker said this key cannot be pooled (Unpoolable)
    disabled: bool = False


@implementer(IContainerPool)
class ContainerPool:
    """Per-key containers made ahead by ``maker`` (see the module docstring for the rules).

    ``max_per_key``: the most containers kept for one key (``max_for(key)``,
    when it says a number, overrides it; 0 turns the pool off for that key);
    ``max_total``: for all keys together.  ``clock``: the reactor's
    ``IReactorTime`` (tests pass a ``Clock``).  ``log_every``: a log line
    with the figures every that many takes (0: never).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        maker: IContainerMaker,
        *,
        max_per_key: int,
        max_total: int,
        max_for: Optional[Callable[[Hashable], Optional[int]]] = None,
        concurrency: int = 2,
        window: float = 2.0,
        half_life: float = 60.0,
        tick: float = 5.0,
        log_every: int = 100,
        removals: int = 2,
        role: str = "grading",
    ) -> None:
        #: what its containers are for (the agent's metrics label them with it): ``grading`` or ``student``
        self.role = role
        if concurrency < 1 or removals < 1 or window <= 0 or half_life <= 0 or tick <= 0:
            raise ValueError("the pool needs concurrency and removals >= 1 and positive window, half_life and tick")
        self._clock = clock
        self._maker = maker
        self._max_per_key = max(0, max_per_key)
        self._max_total = max(0, max_total)
        self._max_for = max_for
        self._concurrency = concurrency
        self._window = window
        self._half_life = half_life
        self._tick_every = tick
        self._log_every = log_every
        self._keys: Dict[Hashable, _Key] = {}
        self._queue: Deque[Hashable] = deque()
        self._creating = 0
        self._makes: List[Deferred] = []
        self._discards: List[Deferred] = []
        self._tick_call: Optional[IDelayedCall] = None
        self._wake_call: Optional[IDelayedCall] = None
        self._takes = 0
        self.closed = False
        self._removals = removals
        #: removals waiting for their turn, and how many run
        self._removal_queue: Deque[Tuple[Callable[[], Deferred], Deferred]] = deque()
        self._removing = 0

    @property
    def max_per_key(self) -> int:
        """The most containers kept for one key (unless ``max_for`` says otherwise for it)."""
        return self._max_per_key

    @property
    def max_total(self) -> int:
        """The most containers kept for all keys together."""
        return self._max_total

    @property
    def concurrency(self) -> int:
        """The most containers made at once."""
        return self._concurrency

    # -- sizing ---------------------------------------------------------------

    def _cap(self, key: Hashable) -> int:
        entry = self._keys.get(key)
        if entry is not None and entry.disabled:
            return 0
        own = self._max_for(key) if self._max_for is not None else None
        return min(self._max_per_key if own is None else max(0, own), self._max_total)

    def target(self, key: Hashable) -> int:
        """How many containers ``key`` should have ready or in the making now."""
        entry = self._keys.get(key)
        if entry is None or self.closed:
            return 0
        return min(entry.demand.target(self._clock.seconds()), self._cap(key))

    def _entry(self, key: Hashable) -> _Key:
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Key(_Demand(self._window, self._half_life), KeyStats())
        return entry

    def _total(self) -> int:
        return sum(len(e.ready) + e.creating for e in self._keys.values())

    def _refill(self) -> None:
        """Queue the creations every key lacks, then start what the concurrency allows."""
        if self.closed:
            return
        now = self._clock.seconds()
        for key, entry in self._keys.items():
            if entry.not_before > now:
                continue
            lacking = self.target(key) - len(entry.ready) - entry.creating - entry.queued
            for _ in range(max(0, lacking)):
                entry.queued += 1
                self._queue.append(key)
        self._pump()
        self._arm_tick()

    def _pump(self) -> None:
        while not self.closed and self._creating < self._concurrency and self._queue:
            key = self._queue.popleft()
            entry = self._keys[key]
            entry.queued -= 1
            # still wanted? (the target may have dropped, or the total be reached, since it was queued)
            if self.target(key) <= len(entry.ready) + entry.creating or self._total() >= self._max_total:
                continue
            if entry.not_before > self._clock.seconds():
                continue
            self._start_make(key, entry)

    def _start_make(self, key: Hashable, entry: _Key) -> None:
        entry.creating += 1
        self._creating += 1
        try:
            d = self._maker.make(key)
        except Exception as e:  # a maker that raises instead of failing its Deferred
            d = fail(e)
        self._makes.append(d)

        def made(container: PooledContainer) -> None:
            entry.creating -= 1
            self._creating -= 1
            entry.backoff = _BACKOFF_MIN
            entry.stats.made += 1
            container.ready_at = self._clock.seconds()
            if self.closed:
                self._discard(container)
            else:
                entry.ready.append(container)  # above the target (demand fell meanwhile): the next tick trims

        def failed(f: Any) -> None:
            entry.creating -= 1
            self._creating -= 1
            if f.check(NotReady):
                entry.not_before = self._clock.seconds() + _BACKOFF_MIN
                self._arm_wake(entry.not_before)
                return
            if f.check(Unpoolable):
                entry.disabled = True
                self.log.warn("container pool: no container made ahead for {key}: {why}", key=key,
                              why=f.getErrorMessage())  # fmt: skip
                return
            entry.stats.failures += 1
            entry.not_before = self._clock.seconds() + entry.backoff
            self.log.warn(
                "container pool: cannot prepare a container for {key}: {error} (next try in {wait:g} s)",
                key=key,
                error=f.getErrorMessage(),
                wait=entry.backoff,
            )
            entry.backoff = min(entry.backoff * 2, _BACKOFF_MAX)
            self._arm_wake(entry.not_before)

        def finally_(_: Any) -> None:
            self._makes.remove(d)
            self._refill()

        d.addCallbacks(made, failed).addErrback(
            lambda f: self.log.failure("container pool: bookkeeping failed", f)
        ).addBoth(finally_)

    def _discard(self, container: PooledContainer) -> Deferred:
        """Have the maker remove ``container`` (in the removal queue); close() waits for it."""
        d = self.remove_later(lambda: self._maker.discard(container))
        return d.addErrback(
            lambda f: self.log.warn(
                "container pool: cannot remove {cid}: {error}", cid=container.container_id, error=f.getErrorMessage()
            )
        )

    def remove_later(self, remove: Callable[[], Deferred]) -> Deferred:
        done: Deferred = Deferred()
        self._removal_queue.append((remove, done))
        self._discards.append(done)

        def gone(result: Any) -> Any:
            self._discards.remove(done)
            return result

        done.addBoth(gone)
        self._next_removals()
        return done

    def _next_removals(self) -> None:
        """Start the removals waiting, as many as ``removals`` allows."""
        while self._removing < self._removals and self._removal_queue:
            remove, done = self._removal_queue.popleft()
            self._removing += 1
            try:
                d = remove()
            except Exception as e:  # a removal that raises instead of failing its Deferred
                d = fail(e)

            def finished(result: Any, done: Deferred = done) -> None:
                self._removing -= 1
                if isinstance(result, Failure):
                    done.errback(result)
                else:
                    done.callback(result)
                self._next_removals()

            d.addBoth(finished)

    def _arm_tick(self) -> None:
        """While anything is pooled or wanted, check the targets every ``tick`` seconds."""
        if self.closed or (self._tick_call is not None and self._tick_call.active()):
            return
        if any(e.ready or e.creating or self.target(k) for k, e in self._keys.items()):
            self._tick_call = self._clock.callLater(self._tick_every, self._tick)

    def _arm_wake(self, when: float) -> None:
        """Try again once a key's back-off is over."""
        if self.closed or (self._wake_call is not None and self._wake_call.active()):
            return
        self._wake_call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._refill)

    def _tick(self) -> None:
        """Remove what is above the targets, then make what lacks."""
        self._tick_call = None
        for key, entry in self._keys.items():
            extra = len(entry.ready) + entry.creating - self.target(key)
            while extra > 0 and entry.ready:
                self._discard(entry.ready.pop(0))  # the oldest first
                extra -= 1
        self._refill()

    # -- IContainerPool ---------------------------------------------------------

    def take(self, key: Hashable) -> Deferred:
        return ensureDeferred(self._take(key))

    async def _take(self, key: Hashable) -> Optional[PooledContainer]:
        if self.closed or self._cap(key) <= 0:
            return None
        entry = self._entry(key)
        entry.demand.took(self._clock.seconds())
        self._takes += 1
        found: Optional[PooledContainer] = None
        while entry.ready and found is None:
            candidate = entry.ready.pop(0)
            self._refill()  # its replacement is made while we check it
            try:
                ok = await self._maker.alive(candidate)
            except Exception as e:
                self.log.warn("container pool: cannot check {cid}: {e}", cid=candidate.container_id, e=str(e))
                ok = False
            if ok:
                found = candidate
            else:
                entry.stats.dead += 1
                self.log.warn("container pool: {cid} died while it waited; discarded", cid=candidate.container_id)
                self._discard(candidate)
        if found is None:
            entry.stats.misses += 1
        else:
            entry.stats.hits += 1
        self._refill()
        if self._log_every and self._takes % self._log_every == 0:
            self._log_stats()
        return found

    def record_ready(self, key: Hashable, seconds: float, hit: bool) -> None:
        entry = self._entry(key)
        (entry.stats.ready_seconds_hit if hit else entry.stats.ready_seconds_miss).append(seconds)
        (entry.stats.ready_hit if hit else entry.stats.ready_miss).observe(seconds)

    def stats(self) -> Dict[Hashable, KeyStats]:
        for key, entry in self._keys.items():
            entry.stats.ready = len(entry.ready)
            entry.stats.creating = entry.creating
            entry.stats.target = self.target(key)
        return {key: entry.stats for key, entry in self._keys.items()}

    def _log_stats(self) -> None:
        for key, s in self.stats().items():
            p50_hit = KeyStats.percentile(s.ready_seconds_hit, 0.5)
            p50_miss = KeyStats.percentile(s.ready_seconds_miss, 0.5)
            self.log.info(
                "container pool {key}: {ready} ready, {creating} being made, target {target}; {hits} hits, "
                "{misses} misses, {dead} found dead, {failures} failed creations; job to container ready p50 "
                "{hit} s (hit), {miss} s (miss)",
                key=key, ready=s.ready, creating=s.creating, target=s.target, hits=s.hits, misses=s.misses,
                dead=s.dead, failures=s.failures,
                hit="-" if p50_hit is None else f"{p50_hit:.3f}", miss="-" if p50_miss is None else f"{p50_miss:.3f}",
            )  # fmt: skip

    def flush(self, key: Hashable) -> Deferred:
        entry = self._keys.get(key)
        if entry is None or not entry.ready:
            return succeed(None)
        gone, entry.ready = entry.ready, []
        d = DeferredList([self._discard(c) for c in gone])
        self._refill()
        return d.addCallback(lambda _: None)

    def close(self) -> Deferred:
        return ensureDeferred(self._close())

    async def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for call in (self._tick_call, self._wake_call):
            if call is not None and call.active():
                call.cancel()
        self._queue.clear()
        if self._makes:
            # each discards its container on arrival (closed)
            await DeferredList(list(self._makes), consumeErrors=True)
        gone = [c for e in self._keys.values() for c in e.ready]
        for entry in self._keys.values():
            entry.ready = []
        for c in gone:
            self._discard(c)
        while self._discards:  # those just started, and those still under way
            await DeferredList(list(self._discards))
