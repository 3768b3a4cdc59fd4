"""What clients name is bounded where it is shown, and what they leave is given back (issue 16).

Unit tests on a :class:`Backend` and a :class:`StatusRecorder` on a ``Clock``
(the real processes are in ``test_hostile_endpoints.py``): made-up
environments fold into ``(other)``, a departed client's job tables are
rebuilt small, the policies keep their order across that rebuild, and the
descriptor share fits the open files limit.
"""

from __future__ import annotations

import sys
from typing import Any, List

import pytest
from twisted.internet.task import Clock

from inginious_tx.backend import policies
from inginious_tx.backend.core import Backend, BackendSettings
from inginious_tx.backend.policies import FairPolicy, PriorityPolicy, ShortestFirstPolicy
from inginious_tx.backend.status import LOAD_ROWS, status_snapshot
from inginious_tx.backend.testing import FakePeer, agent_hello, new_job
from inginious_tx.backend.timeseries import (
    MAX_UNOFFERED_SHOWN,
    OTHER,
    OTHER_ENVIRONMENT,
    StatusRecorder,
    fold_environments,
)
from inginious_tx.messages import ClientHello
from inginious_tx.transport.descriptors import RESERVED_MIN, raise_open_files_limit, share_descriptors


def _backend() -> Any:
    clock = Clock()
    settings = BackendSettings(max_waiting=None, client_idle_timeout=1e9, client_silence_timeout=1e9)
    backend = Backend(clock, FairPolicy(), settings)
    recorder = StatusRecorder(backend, clock, 60)
    recorder.start()
    agent = FakePeer(b"a", wire=False)
    backend.agent_handler.agent_hello(agent, agent_hello("agent", 1, ["default"]))
    return clock, backend, recorder, agent


def _hostile(backend: Any, n: int, name: str = "hostile") -> FakePeer:
    peer = FakePeer(name.encode(), wire=False)
    backend.client_handler.client_hello(peer, ClientHello(name))
    for i in range(n):
        backend.client_handler.client_new_job(peer, new_job(f"j{i}", environment=f"made-up-{i}", course_id=f"c{i}"))
    return peer


def test_made_up_environments_fold_into_other_and_are_forgotten_when_their_client_leaves() -> None:
    N = 5000
    clock, backend, recorder, _ = _backend()
    peer = _hostile(backend, N)
    shown = recorder.waiting_shown()
    assert len(shown) == 1 + MAX_UNOFFERED_SHOWN + 1  # offered, the first 64 others, (other)
    assert shown[("docker", "default")] == 0 and shown[("docker", "made-up-0")] == 1
    assert shown[OTHER_ENVIRONMENT] == N - MAX_UNOFFERED_SHOWN
    assert recorder.unshown_environments() == N - MAX_UNOFFERED_SHOWN
    sample = recorder.sample()
    assert len(sample["queue"]) == len(shown) and sample["queue"][OTHER] == N - MAX_UNOFFERED_SHOWN
    peak = sys.getsizeof(recorder._waiting_env)
    snap = status_snapshot(backend, clock.seconds(), recorder=recorder)
    assert len(snap["load"]["courses"]) == LOAD_ROWS + 1
    assert snap["load"]["courses"][OTHER] == [N - LOAD_ROWS, 0]
    assert snap["totals"]["courses_with_jobs"] == N

    backend.client_handler.peer_disconnected(peer, "gone")
    assert recorder.waiting_shown() == {("docker", "default"): 0}
    assert recorder.sample()["queue"] == {"default": 0}
    # the recorder's table was rebuilt small, not kept at its peak
    assert sys.getsizeof(recorder._waiting_env) * 4 < peak
    # named slots are free again for the next environments
    _hostile(backend, 3, "next")
    assert recorder.waiting_shown()[("docker", "made-up-2")] == 1


def test_without_a_recorder_the_largest_environments_are_named() -> None:
    counts = {("docker", f"e{i}"): i for i in range(100)}
    folded = fold_environments(counts, [("docker", "offered")], named=3)
    assert folded == {
        ("docker", "offered"): 0,
        ("docker", "e99"): 99,
        ("docker", "e98"): 98,
        ("docker", "e97"): 97,
        OTHER_ENVIRONMENT: sum(range(97)),
    }


def test_a_departed_clients_job_tables_are_rebuilt_and_the_backend_goes_on() -> None:
    clock, backend, recorder, agent = _backend()
    peer = _hostile(backend, 5000)
    big = sys.getsizeof(backend._jobs) + sys.getsizeof(backend._policy._entries)
    backend.client_handler.peer_disconnected(peer, "gone")
    small = sys.getsizeof(backend._jobs) + sys.getsizeof(backend._policy._entries)
    assert small * 8 < big, (small, big)  # what stays is bounded by SHRINK_FLOOR entries
    assert backend.load_by_course() == {} and backend.waiting_count == 0
    # and it still serves: a job for the offered environment goes to the agent
    honest = FakePeer(b"honest", wire=False)
    backend.client_handler.client_hello(honest, ClientHello("honest"))
    backend.client_handler.client_new_job(honest, new_job("h1"))
    assert backend.running_count == 1 and any(type(m).__name__ == "BackendNewJob" for m in agent.sent)


class _J:
    def __init__(self, i: int) -> None:
        self.key = (b"c", f"j{i}")
        self.name = f"j{i}"
        self.environment = f"env{i % 7}"
        self.course_id = f"course{i % 13}"
        self.task_id = "t"
        self.priority = i % 3
        self.time_limit = 10 + i % 50
        self.submitted_at = float(i)
        self.sequence = i
        self.launcher = "test"
        self.retries = 0


def _scenario(cls: Any) -> List[str]:
    """Add 4000 jobs, remove 3000 (every 4th kept): the order foreseen, then the order popped."""
    p = cls()
    jobs = [_J(i) for i in range(4000)]
    for j in jobs:
        p.add(j)
    for j in jobs:
        if j.sequence % 4:
            p.remove(j)
    order = [j.name for j in p.ordered()]
    popped = []
    envs = [f"env{i}" for i in range(7)]
    while (job := p.pop_next(envs)) is not None:
        popped.append(job.name)
    return order + ["--"] + popped


@pytest.mark.parametrize("cls", [PriorityPolicy, FairPolicy, ShortestFirstPolicy])
def test_policies_keep_their_order_when_their_tables_are_rebuilt(cls: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(policies, "SHRINK_FLOOR", 10**9)
    never = _scenario(cls)
    monkeypatch.undo()
    rebuilt = _scenario(cls)
    assert rebuilt == never and len(rebuilt) == 2001
    p = cls()
    jobs = [_J(i) for i in range(4000)]
    for j in jobs:
        p.add(j)
    assert p._peak == 4000
    for j in jobs[:3500]:
        p.remove(j)
    assert p._peak <= 1000 and len(p) == 500  # rebuilt at a quarter of the peak


def test_connection_caps_are_kept_when_they_fit_and_shared_out_when_not() -> None:
    fits = share_descriptors(1 << 20, endpoints=2, per_endpoint=1000, status=64)
    assert (fits.per_endpoint, fits.status, fits.lowered) == (1000, 64, False)
    tight = share_descriptors(1024, endpoints=2, per_endpoint=1000, status=64)
    assert tight.lowered and tight.reserved == RESERVED_MIN
    assert 2 * tight.per_endpoint + tight.status + tight.reserved <= 1024
    assert tight.status == 64 and tight.per_endpoint == (1024 - RESERVED_MIN - 64) // 2
    tiny = share_descriptors(100, endpoints=3, per_endpoint=1000, status=64)
    assert tiny.per_endpoint >= 1 and 3 * tiny.per_endpoint + tiny.status <= 100 - tiny.reserved
    raised = raise_open_files_limit()
    if raised is not None:  # POSIX: never lowered
        assert raised[1] >= raised[0]
