"""The container pool's sizing and bookkeeping, with a fake maker and a Clock (no Docker, no real time)."""

from __future__ import annotations

from typing import Any, Dict, Hashable, List

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from inginious_tx.agent.container_pool import (
    ContainerPool,
    IContainerMaker,
    IContainerPool,
    NotReady,
    PooledContainer,
    Unpoolable,
)


@implementer(IContainerMaker)
class FakeMaker:
    """Makes containers when the test says so; records what it was asked."""

    def __init__(self) -> None:
        self.pending: List[Deferred] = []
        self.made = 0
        self.most_at_once = 0
        self.discarded: List[str] = []
        self.dead: set = set()

    def make(self, key: Hashable) -> Deferred:
        d: Deferred = Deferred()
        d.key = key  # type: ignore[attr-defined]
        self.pending.append(d)
        self.most_at_once = max(self.most_at_once, len(self.pending))
        return d

    def finish(self, n: int = 1, fail: bool = False) -> None:
        """Complete the ``n`` oldest creations."""
        for _ in range(n):
            d = self.pending.pop(0)
            if fail:
                d.errback(RuntimeError("engine says no"))
            else:
                self.made += 1
                d.callback(PooledContainer(d.key, f"c{self.made}"))  # type: ignore[attr-defined]

    def finish_all(self) -> None:
        while self.pending:
            self.finish()

    def alive(self, container: PooledContainer) -> Deferred:
        return succeed(container.container_id not in self.dead)

    def discard(self, container: PooledContainer) -> Deferred:
        self.discarded.append(container.container_id)
        return succeed(None)


def _pool(clock: Clock, maker: FakeMaker, **kw: Any) -> ContainerPool:
    args: Dict[str, Any] = dict(max_per_key=4, max_total=8, concurrency=2, window=2.0, half_life=60.0, tick=5.0)
    args.update(kw)
    return ContainerPool(clock, maker, **args)


def _take(pool: ContainerPool, key: Hashable) -> Any:
    results: List[Any] = []
    pool.take(key).addCallback(results.append)
    assert results, "take must not wait when the maker answers at once"
    return results[0]


def test_interfaces() -> None:
    clock, maker = Clock(), FakeMaker()
    assert verifyObject(IContainerMaker, maker)
    assert verifyObject(IContainerPool, _pool(clock, maker))


def test_nothing_made_without_demand_then_one_per_use() -> None:
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker)
    clock.advance(600)
    assert maker.pending == [] and clock.getDelayedCalls() == [], "an unused pool makes nothing and sets no timer"
    assert _take(pool, "py") is None  # a miss: the caller makes its own
    assert len(maker.pending) == 1, "one use: one container made ahead"
    maker.finish()
    assert pool.stats()["py"].ready == 1
    got = _take(pool, "py")
    assert got is not None and got.container_id == "c1" and got.key == "py"
    stats = pool.stats()["py"]
    assert (stats.hits, stats.misses) == (1, 1)
    assert len(maker.pending) == 2, "two takes within the window: two wanted"
    assert _take(pool, "other") is None and pool.stats()["other"].misses == 1


def test_burst_is_capped_and_made_two_at_a_time() -> None:
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker)
    for _ in range(10):
        assert _take(pool, "py") is None
    assert pool.target("py") == 4, "the per-key maximum bounds the target"
    for _ in range(10):
        if maker.pending:
            maker.finish()
    assert maker.most_at_once == 2, "creation concurrency"
    assert maker.made == 4 and pool.stats()["py"].ready == 4
    # all keys together stay under max_total
    for _ in range(10):
        _take(pool, "js")
    maker.finish_all()
    maker.finish_all()
    assert pool.stats()["js"].ready + pool.stats()["py"].ready <= 8


def test_demand_decays_and_idle_containers_go() -> None:
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker)
    for _ in range(4):
        _take(pool, "py")
    maker.finish_all()
    maker.finish_all()
    assert pool.stats()["py"].ready == 4
    clock.advance(60)  # one half-life: level 2
    assert pool.target("py") == 2 and pool.stats()["py"].ready == 2 and len(maker.discarded) == 2
    for _ in range(10):
        clock.advance(60)
    assert pool.stats()["py"].ready == 0 and pool.target("py") == 0
    assert clock.getDelayedCalls() == [], "nothing pooled, nothing wanted: no timer left"
    assert maker.made == 4, "nothing made while demand fell"


def test_dead_container_is_discarded_at_take() -> None:
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker)
    _take(pool, "py")
    _take(pool, "py")
    maker.finish_all()
    maker.dead.add("c1")
    got = _take(pool, "py")
    assert got is not None and got.container_id == "c2", "the dead one is skipped, the next one taken"
    assert maker.discarded == ["c1"] and pool.stats()["py"].dead == 1
    maker.finish_all()
    ready = [f"c{i}" for i in range(3, maker.made + 1)]
    assert ready and pool.stats()["py"].ready == len(ready)
    maker.dead.update(ready)
    maker.pending.clear()  # nothing more arrives: every ready one is dead
    assert _take(pool, "py") is None, "all dead: a miss, the job makes its own"
    assert maker.discarded == ["c1", *ready] and pool.stats()["py"].dead == 1 + len(ready)


def test_failed_creation_backs_off() -> None:
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker)
    _take(pool, "py")
    maker.finish(fail=True)
    assert pool.stats()["py"].failures == 1 and maker.pending == [], "no retry at once"
    clock.advance(0.5)
    assert maker.pending == []
    clock.advance(0.6)
    assert len(maker.pending) == 1, "retried after the back-off"
    maker.finish(fail=True)
    clock.advance(1.5)
    assert maker.pending == [], "the back-off doubled"
    clock.advance(0.6)
    assert len(maker.pending) == 1
    maker.finish()
    assert pool.stats()["py"].ready == 1


def test_a_maker_not_ready_yet_is_asked_again_quietly(log_events: Any) -> None:
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker)
    ready = [False]
    make = maker.make

    def not_yet(key: Hashable) -> Deferred:
        if not ready[0]:
            raise NotReady("waiting for a probe")
        return make(key)

    maker.make = not_yet  # type: ignore[method-assign]
    _take(pool, "py")
    clock.advance(1.0)
    assert maker.pending == [] and pool.stats()["py"].failures == 0 and not log_events.has("cannot prepare")
    ready[0] = True
    clock.advance(1.0)
    assert len(maker.pending) == 1


def test_per_key_maximum_and_zero_turns_it_off() -> None:
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker, max_for=lambda key: {"off": 0, "one": 1}.get(key))
    for _ in range(5):
        assert _take(pool, "off") is None
        _take(pool, "one")
    assert "off" not in pool.stats() and len(maker.pending) == 1


def test_close_removes_what_waits_and_what_arrives() -> None:
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker)
    for _ in range(3):
        _take(pool, "py")
    maker.finish()
    closing = pool.close()
    assert not closing.called, "close waits for the creation under way"
    maker.finish_all()
    assert closing.called and sorted(maker.discarded) == ["c1", "c2", "c3"] and maker.made == 3
    assert _take(pool, "py") is None and maker.pending == [] and clock.getDelayedCalls() == []


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        _pool(Clock(), FakeMaker(), concurrency=0)


def test_flush_discards_what_waits_and_makes_anew() -> None:
    """An environment's image changed: its waiting containers go, new ones are made."""
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker)
    _take(pool, "py")
    maker.finish()
    assert pool.flush("py").called and maker.discarded == ["c1"]
    assert len(maker.pending) == 1, "a fresh one is made"
    assert pool.flush("unknown").called


def test_an_unpoolable_key_is_given_up_once(log_events: Any) -> None:
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker)
    _take(pool, "entry")
    maker.pending.pop(0).errback(Unpoolable("the image has an entrypoint"))
    clock.advance(120)
    assert _take(pool, "entry") is None and maker.pending == [] and pool.target("entry") == 0
    assert log_events.has("entrypoint") and pool.stats()["entry"].failures == 0


def test_removals_run_a_few_at_a_time_in_order_and_close_waits_for_them() -> None:
    """The removal queue: at most ``removals`` at once, first asked first run; a failure is the
    caller's and does not stop the queue; close() waits for every one, even those asked after it."""
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker, removals=2)
    started: List[int] = []
    pending: Dict[int, Deferred] = {}

    def removal(n: int) -> Any:
        def run() -> Deferred:
            started.append(n)
            pending[n] = Deferred()
            return pending[n]

        return run

    results: List[Any] = []
    for n in range(5):
        pool.remove_later(removal(n)).addBoth(results.append)
    assert started == [0, 1], "two at a time"
    pending[1].errback(RuntimeError("engine says no"))
    assert started == [0, 1, 2] and str(results[0].value) == "engine says no", "a failure goes to its caller"
    pending[0].callback("gone")
    assert started == [0, 1, 2, 3] and results[1] == "gone"
    closing = pool.close()
    late = pool.remove_later(removal(5))
    assert not closing.called and not late.called
    for n in (2, 3, 4, 5):
        pending[n].callback(None)
    assert started == [0, 1, 2, 3, 4, 5] and closing.called and late.called


def test_discards_go_through_the_removal_queue() -> None:
    """The pool's own removals (trimmed, dead, closed) wait their turn with the callers' ones."""
    clock, maker = Clock(), FakeMaker()
    pool = _pool(clock, maker, removals=1)
    blocker: Deferred = Deferred()
    pool.remove_later(lambda: blocker)
    _take(pool, "py")
    maker.finish()
    pool.flush("py")
    assert maker.discarded == [], "behind the removal under way"
    blocker.callback(None)
    assert maker.discarded == ["c1"]


def test_a_longer_window_keeps_a_burst_that_reaches_the_pool_over_seconds() -> None:
    """An agent takes a burst's jobs as its slots free: 20 takes over 10 s.  A 2 s window sees a
    few at a time; a 10 s one sees the whole burst (up to the maximum)."""
    for window, expected in ((2.0, 4), (10.0, 20)):
        clock, maker = Clock(), FakeMaker()
        pool = _pool(clock, maker, max_per_key=64, max_total=64, window=window)
        for _ in range(20):
            _take(pool, "py")
            clock.advance(0.5)
        assert pool.target("py") == expected, window
