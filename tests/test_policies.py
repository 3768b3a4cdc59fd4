"""Scheduling policies: their orders, their costs' bookkeeping, loading by name."""

from __future__ import annotations

import itertools
from typing import Any, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from inginious_tx.backend import policies
from inginious_tx.backend.policies import (
    FairPolicy,
    PriorityPolicy,
    ShortestFirstPolicy,
    available_policies,
    load_policy,
)
from inginious_tx.interfaces import ISchedulingPolicy, IWaitingJob
from inginious_tx.plugin import PluginError

ALL = [PriorityPolicy, FairPolicy, ShortestFirstPolicy]
_seq = itertools.count()


@implementer(IWaitingJob)
class J:
    """A minimal IWaitingJob."""

    def __init__(
        self,
        name: str,
        environment: str = "env",
        priority: int = 0,
        course_id: str = "c",
        time_limit: int = 30,
        submitted_at: float = 0.0,
        retries: int = 0,
    ) -> None:
        self.key = (b"client", name)
        self.name = name
        self.environment = environment
        self.course_id = course_id
        self.task_id = "t"
        self.priority = priority
        self.time_limit = time_limit
        self.submitted_at = submitted_at
        self.sequence = next(_seq)
        self.launcher = "test"
        self.retries = retries

    def __repr__(self) -> str:
        return self.name


def drain(policy: Any, environments: Any = ("env",)) -> List[str]:
    out = []
    while True:
        job = policy.pop_next(environments)
        if job is None:
            return out
        out.append(job.name)


@pytest.mark.parametrize("cls", ALL)
def test_policies_provide_the_interface(cls):
    verifyClass(ISchedulingPolicy, cls)
    verifyObject(ISchedulingPolicy, cls())
    verifyObject(IWaitingJob, J("x"))
    assert cls.name in available_policies()


@pytest.mark.parametrize("cls", ALL)
def test_empty_policy(cls):
    p = cls()
    assert len(p) == 0
    assert p.pop_next(["env"]) is None
    assert p.ordered() == []
    assert p.waiting("env") == 0


@pytest.mark.parametrize("cls", ALL)
def test_only_the_asked_environments_are_served(cls):
    p = cls()
    a, b = J("a", environment="A"), J("b", environment="B")
    p.add(a)
    p.add(b)
    assert p.waiting("A") == 1 and p.waiting("B") == 1 and len(p) == 2
    assert p.pop_next(["C"]) is None
    assert p.pop_next(["B"]) is b
    assert p.pop_next(["B"]) is None
    assert p.pop_next(["A", "B"]) is a
    assert len(p) == 0


@pytest.mark.parametrize("cls", ALL)
def test_adding_a_job_twice_is_refused(cls):
    p = cls()
    j = J("a")
    p.add(j)
    with pytest.raises(ValueError):
        p.add(j)
    assert len(p) == 1


@pytest.mark.parametrize("cls", ALL)
def test_remove_and_unknown_remove(cls):
    p = cls()
    jobs = [J(str(i)) for i in range(5)]
    for j in jobs:
        p.add(j)
    p.remove(jobs[0])
    p.remove(jobs[3])
    p.remove(jobs[3])  # twice: no effect
    p.remove(J("never-added"))  # unknown: no effect
    assert len(p) == 3
    assert drain(p) == ["1", "2", "4"]


@pytest.mark.parametrize("cls", ALL)
def test_lazy_deletion_stays_bounded(cls):
    """Removing most jobs rebuilds the heap instead of keeping dead entries."""
    p = cls()
    jobs = [J(str(i)) for i in range(1000)]
    for j in jobs:
        p.add(j)
    for j in jobs[:990]:
        p.remove(j)
    assert len(p) == 10
    assert len(p._heaps["env"]) <= 10 + policies._COMPACT_MIN + 1
    assert drain(p) == [str(i) for i in range(990, 1000)]
    assert p._heaps == {} and p._live == {} and p._dead == {}


def test_priority_policy_orders_by_priority_then_arrival():
    p = PriorityPolicy()
    for name, prio in [("a", 5), ("b", 1), ("c", 5), ("d", 0), ("e", 1)]:
        p.add(J(name, priority=prio))
    assert [j.name for j in p.ordered()] == ["d", "b", "e", "a", "c"]
    assert drain(p) == ["d", "b", "e", "a", "c"]


def test_priority_policy_across_environments():
    p = PriorityPolicy()
    p.add(J("a1", environment="A", priority=2))
    p.add(J("b1", environment="B", priority=1))
    p.add(J("a2", environment="A", priority=0))
    assert drain(p, ["A", "B"]) == ["a2", "b1", "a1"]


def test_fair_policy_a_burst_does_not_starve_another_course():
    p = FairPolicy()
    for i in range(500):
        p.add(J(f"big{i}", course_id="big"))
    p.add(J("small", course_id="small"))
    order = drain(p)
    assert order.index("small") <= 1
    assert len(order) == 501


def test_fair_policy_round_robin_between_courses():
    p = FairPolicy()
    for i in range(3):
        p.add(J(f"a{i}", course_id="A"))
    for i in range(3):
        p.add(J(f"b{i}", course_id="B"))
    for i in range(2):
        p.add(J(f"c{i}", course_id="C"))
    expected = ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2"]
    assert [j.name for j in p.ordered()] == expected
    assert drain(p) == expected


def test_fair_policy_priority_comes_first():
    p = FairPolicy()
    p.add(J("low-a", course_id="A", priority=5))
    p.add(J("hi-b1", course_id="B", priority=0))
    p.add(J("hi-b2", course_id="B", priority=0))
    assert drain(p) == ["hi-b1", "hi-b2", "low-a"]


def test_fair_policy_idle_course_earns_no_credit():
    """A course that arrives late joins the current round, not round one."""
    p = FairPolicy()
    for i in range(6):
        p.add(J(f"a{i}", course_id="A"))
    assert [p.pop_next(["env"]).name for _ in range(3)] == ["a0", "a1", "a2"]
    for i in range(3):
        p.add(J(f"b{i}", course_id="B"))
    # B starts in the current round and alternates with A from there.
    assert drain(p) == ["a3", "b0", "a4", "b1", "a5", "b2"]


def test_fair_policy_requeued_job_goes_to_the_current_round():
    p = FairPolicy()
    for i in range(4):
        p.add(J(f"a{i}", course_id="A"))
    first = p.pop_next(["env"])
    assert first.name == "a0"
    first.retries = 1
    p.add(first)
    assert drain(p) == ["a0", "a1", "a2", "a3"]


def test_fair_policy_forgets_empty_courses_and_levels():
    p = FairPolicy()
    jobs = [J(f"{c}{i}", course_id=c, priority=i % 3) for c in "ABC" for i in range(10)]
    for j in jobs:
        p.add(j)
    for j in jobs[::2]:
        p.remove(j)
    drain(p)
    assert p._courses == {} and p._level_size == {} and p._round == {}


def test_shortest_first_prefers_short_jobs():
    p = ShortestFirstPolicy()
    p.add(J("long", time_limit=300, submitted_at=0))
    p.add(J("short", time_limit=10, submitted_at=1))
    p.add(J("medium", time_limit=60, submitted_at=2))
    assert drain(p) == ["short", "medium", "long"]


def test_shortest_first_ages_long_jobs():
    """A long job is not overtaken forever: its virtual deadline is fixed."""
    p = ShortestFirstPolicy()
    p.add(J("long", time_limit=300, submitted_at=0))
    deadline = 0 + ShortestFirstPolicy.stretch * 300
    # Short jobs keep arriving; those that arrive after the long job's
    # deadline minus their own stretch run after it.
    late = deadline - ShortestFirstPolicy.stretch * 10 + 1
    p.add(J("early-short", time_limit=10, submitted_at=5))
    p.add(J("late-short", time_limit=10, submitted_at=late))
    assert drain(p) == ["early-short", "long", "late-short"]


def test_shortest_first_priority_comes_first_and_no_limit_is_long():
    p = ShortestFirstPolicy()
    p.add(J("no-limit", time_limit=0))
    p.add(J("short-low", time_limit=1, priority=3))
    p.add(J("limited", time_limit=100))
    assert drain(p) == ["limited", "no-limit", "short-low"]


# -- properties ----------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(["A", "B", "C"]),
            st.integers(0, 2),
            st.sampled_from(["x", "y", "z"]),
            st.integers(1, 100),
        ),
        st.tuples(st.just("remove"), st.integers(0, 1000)),
        st.tuples(st.just("pop"), st.sets(st.sampled_from(["A", "B", "C"]), min_size=1)),
    ),
    max_size=80,
)


# (hypothesis draws the policy class: pytest-twisted cannot run a
# parametrized @given test more than once.)
@settings(max_examples=150, deadline=None)
@given(cls=st.sampled_from(ALL), script=ops)
def test_policy_is_consistent_under_random_operations(cls, script):
    """Counts match a plain set; a pop returns a waiting job of an asked
    environment; ``ordered()`` per environment is the order pops would take."""
    p = cls()
    waiting: dict = {}
    clock = 0.0
    for op in script:
        clock += 1
        if op[0] == "add":
            _, env, prio, course, limit = op
            j = J(f"j{len(waiting)}-{clock}", environment=env, priority=prio, course_id=course, time_limit=limit)
            j.submitted_at = clock
            p.add(j)
            waiting[j.key] = j
        elif op[0] == "remove":
            if waiting:
                key = sorted(waiting, key=lambda k: waiting[k].sequence)[op[1] % len(waiting)]
                p.remove(waiting.pop(key))
        else:
            before = {k: j for k, j in waiting.items()}
            got = p.pop_next(op[1])
            candidates = [j for j in before.values() if j.environment in op[1]]
            if not candidates:
                assert got is None
            else:
                assert got is not None and got.key in waiting and got.environment in op[1]
                del waiting[got.key]
        assert len(p) == len(waiting)
        for env in "ABC":
            assert p.waiting(env) == sum(1 for j in waiting.values() if j.environment == env)
        assert sorted(j.key for j in p.ordered()) == sorted(waiting)
    # ordered() restricted to one environment is exactly the pop order there
    for env in "ABC":
        expected = [j for j in p.ordered() if j.environment == env]
        assert [p.pop_next([env]) for _ in expected] == expected
        assert p.pop_next([env]) is None


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000)), max_size=60))
@settings(max_examples=60, deadline=None)
def test_priority_policy_matches_a_sort(items):
    p = PriorityPolicy()
    jobs = [J(f"j{i}", priority=prio) for i, (prio, _) in enumerate(items)]
    for j in jobs:
        p.add(j)
    expected = sorted(jobs, key=lambda j: (j.priority, j.sequence))
    assert p.ordered() == expected
    assert [p.pop_next(["env"]) for _ in jobs] == expected


# -- loading ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,cls", [("priority", PriorityPolicy), ("fair", FairPolicy), ("shortest-first", ShortestFirstPolicy)]
)
def test_load_policy_by_name(name, cls):
    policy = load_policy(name)
    assert type(policy) is cls
    assert policy.name == name
    assert load_policy(name) is not policy  # a fresh instance each time


def test_load_unknown_policy_lists_the_available_ones():
    with pytest.raises(PluginError) as e:
        load_policy("no-such-policy")
    message = str(e.value)
    assert "no-such-policy" in message
    for name in ("priority", "fair", "shortest-first"):
        assert name in message


def test_available_policies_are_sorted_and_include_the_builtins():
    names = available_policies()
    assert names == sorted(names)
    assert {"priority", "fair", "shortest-first"} <= set(names)
    assert policies.DEFAULT_POLICY in names
