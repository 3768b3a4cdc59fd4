"""Random sequences of everything that can happen to a backend, checked
against invariants: every job is answered exactly once (unless its client
left), no slot is used twice or leaked, no job runs on two agents, the free
lists and the queue snapshot agree with the policy."""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Set, Tuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.task import Clock

from inginious_tx.backend.core import WAITING, Backend, BackendSettings
from inginious_tx.backend.policies import FairPolicy, PriorityPolicy
from inginious_tx.backend.testing import FakePeer, agent_hello, job_done, new_job
from inginious_tx.messages import (
    AgentJobStarted,
    BackendGetQueue,
    BackendJobDone,
    BackendJobStarted,
    BackendKillJob,
    BackendNewJob,
    BackendUpdateContainers,
    ClientGetQueue,
    ClientHello,
    ClientKillJob,
    Ping,
    Pong,
    Unknown,
)

ENVS = ["A", "B", "C"]
Key = Tuple[bytes, str]


class AgentModel:
    """What a fake agent believes it runs."""

    def __init__(self, peer: FakePeer, slots: int, envs: List[str], responsive: bool) -> None:
        self.peer = peer
        self.slots = slots
        self.envs = envs
        self.responsive = responsive
        self.running: List[Key] = []
        self.alive = True


class ClientModel:
    def __init__(self, peer: FakePeer) -> None:
        self.peer = peer
        self.outstanding: Set[str] = set()
        self.answered: Dict[str, int] = {}
        self.started: Set[str] = set()
        self.gone = False


class BackendMachine(RuleBasedStateMachine):
    policy_class: Any = PriorityPolicy

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.backend = Backend(
            self.clock,
            self.policy_class(),
            BackendSettings(max_retries=1, max_missed_pongs=2, max_waiting=12, max_waiting_per_client=8),
        )
        self.backend.start()
        self.ch = self.backend.client_handler
        self.ah = self.backend.agent_handler
        self.clients: List[ClientModel] = []
        self.agents: List[AgentModel] = []
        self.ids = itertools.count()
        self.addresses = itertools.count()

    # -- helpers ------------------------------------------------------------------

    def _collect(self) -> None:
        """Read what the backend sent and check each message against the model."""
        for c in self.clients:
            for m in c.peer.take():
                assert not c.gone, f"message {m!r} sent to a client that left"
                if isinstance(m, BackendJobDone):
                    assert m.job_id in c.outstanding, f"unexpected or second answer {m!r}"
                    c.outstanding.discard(m.job_id)
                    c.answered[m.job_id] = c.answered.get(m.job_id, 0) + 1
                elif isinstance(m, BackendJobStarted):
                    assert m.job_id in c.outstanding
                    c.started.add(m.job_id)
                else:
                    assert isinstance(m, (BackendUpdateContainers, BackendGetQueue, Pong, Unknown)), m
        for a in self.agents:
            for m in a.peer.take():
                if isinstance(m, BackendNewJob):
                    assert a.alive, "job sent to an agent that was removed"
                    assert m.job_id not in a.running
                    assert m.environment in a.envs
                    a.running.append(m.job_id)
                    assert len(a.running) <= a.slots, "more jobs than slots"
                elif isinstance(m, BackendKillJob):
                    assert m.job_id in a.running
                elif isinstance(m, Ping):
                    if a.responsive and a.alive:
                        self.ah.pong(a.peer, Pong())
                else:
                    raise AssertionError(f"unexpected message to an agent: {m!r}")

    def _live_clients(self) -> List[ClientModel]:
        return [c for c in self.clients if not c.gone]

    # -- rules ------------------------------------------------------------------------

    @initialize()
    def first_client(self) -> None:
        self.add_client()

    @rule()
    def add_client(self) -> None:
        peer = FakePeer(b"client-%d" % next(self.addresses))
        self.ch.client_hello(peer, ClientHello("c"))
        self.clients.append(ClientModel(peer))
        self._collect()

    @precondition(lambda self: any(not c.gone for c in self.clients))
    @rule(data=st.data(), env=st.sampled_from(ENVS), priority=st.integers(0, 3), duplicate=st.booleans())
    def submit(self, data, env: str, priority: int, duplicate: bool) -> None:
        c = data.draw(st.sampled_from(self._live_clients()))
        if duplicate and c.outstanding:
            job_id = data.draw(st.sampled_from(sorted(c.outstanding)))
            self.ch.client_new_job(c.peer, new_job(job_id, environment=env, priority=priority))
            [answer] = c.peer.take()
            assert answer.job_id == job_id and answer.result[0] == "crash" and "duplicate" in answer.result[1]
            return
        job_id = f"j{next(self.ids)}"
        c.outstanding.add(job_id)
        self.ch.client_new_job(c.peer, new_job(job_id, environment=env, priority=priority))
        sent = c.peer.sent
        if sent and isinstance(sent[-1], BackendJobDone) and sent[-1].job_id == job_id:
            assert "queue full" in sent[-1].result[1]
        self._collect()

    @precondition(lambda self: any(not c.gone for c in self.clients))
    @rule(data=st.data())
    def kill(self, data) -> None:
        c = data.draw(st.sampled_from(self._live_clients()))
        choices = sorted(c.outstanding) + ["never-submitted"]
        job_id = data.draw(st.sampled_from(choices))
        self.ch.client_kill_job(c.peer, ClientKillJob(job_id))
        self._collect()

    @precondition(lambda self: any(not c.gone for c in self.clients))
    @rule(data=st.data())
    def client_leaves(self, data) -> None:
        c = data.draw(st.sampled_from(self._live_clients()))
        self.ch.peer_disconnected(c.peer, "closed")
        c.gone = True
        self._collect()

    @rule(
        slots=st.integers(0, 3),
        envs=st.lists(st.sampled_from(ENVS), min_size=1, max_size=3, unique=True),
        responsive=st.booleans(),
    )
    def agent_joins(self, slots: int, envs: List[str], responsive: bool) -> None:
        peer = FakePeer(b"agent-%d" % next(self.addresses))
        self.agents.append(AgentModel(peer, slots, envs, responsive))
        self.ah.agent_hello(peer, agent_hello("a", slots, envs))
        self._collect()

    @precondition(lambda self: any(a.alive for a in self.agents))
    @rule(data=st.data())
    def agent_leaves(self, data) -> None:
        a = data.draw(st.sampled_from([a for a in self.agents if a.alive]))
        a.alive = False
        self.ah.peer_disconnected(a.peer, "closed")
        self._collect()

    @precondition(lambda self: any(a.alive for a in self.agents))
    @rule(data=st.data(), slots=st.integers(1, 3))
    def agent_says_hello_again(self, data, slots: int) -> None:
        a = data.draw(st.sampled_from([a for a in self.agents if a.alive]))
        # the agent forgets its jobs and starts afresh
        a.running = []
        a.slots = slots
        self.ah.agent_hello(a.peer, agent_hello("a", slots, a.envs))
        self._collect()

    @precondition(lambda self: any(a.running for a in self.agents))
    @rule(data=st.data(), result=st.sampled_from(["success", "failed", "killed"]), started=st.booleans())
    def agent_answers(self, data, result: str, started: bool) -> None:
        """A live or removed agent answers one of the jobs it believes it runs."""
        a = data.draw(st.sampled_from([a for a in self.agents if a.running]))
        key = data.draw(st.sampled_from(a.running))
        a.running.remove(key)
        if started:
            self.ah.agent_job_started(a.peer, AgentJobStarted(key))
        self.ah.agent_job_done(a.peer, job_done(key, result, "t", 1.0))
        self._collect()

    @rule()
    def heartbeat(self) -> None:
        self.clock.advance(self.backend.settings.ping_interval)
        self._collect()
        for a in self.agents:
            if a.alive and a.peer.disconnected is not None:
                a.alive = False  # the backend dropped it (missed pongs)

    @precondition(lambda self: any(not c.gone for c in self.clients))
    @rule(data=st.data())
    def snapshot(self, data) -> None:
        c = data.draw(st.sampled_from(self._live_clients()))
        self.ch.client_get_queue(c.peer, ClientGetQueue())
        [snap] = [m for m in c.peer.sent if isinstance(m, BackendGetQueue)]
        c.peer.sent.remove(snap)
        ordered = self.backend.policy.ordered()
        assert [w[0] for w in snap.jobs_waiting] == [j.key[1] for j in ordered]
        if self.policy_class is PriorityPolicy:
            assert [(j.priority, j.sequence) for j in ordered] == sorted((j.priority, j.sequence) for j in ordered)
        assert [w[1] for w in snap.jobs_waiting] == [j.client is not None and j.client.peer is c.peer for j in ordered]
        running_here = {(r[0], r[1]) for r in snap.jobs_running}
        assert len(snap.jobs_running) == self.backend.running_count
        assert {jid for jid, mine in running_here if mine} <= c.outstanding
        self._collect()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def slots_and_jobs_agree(self) -> None:
        backend = self.backend
        seen: Set[Key] = set()
        for state in backend.agents:
            model = next(a for a in self.agents if a.peer is state.peer)
            assert model.alive
            keys = set(state.running)
            assert keys == set(model.running), "backend and agent disagree on running jobs (slot leak)"
            assert len(keys) <= state.slots
            assert not (keys & seen), "a job on two agents"
            seen |= keys
            for env in state.environments:
                listed = state in backend.free_agents(env)
                assert listed == (len(state.running) < state.slots)
                if listed:
                    assert backend.policy.waiting(env) == 0, "a free slot next to a waiting job"
        assert backend.waiting_count == len(backend.policy)
        assert all(j.state == WAITING for j in backend.policy.ordered())

    @invariant()
    def every_outstanding_job_is_known(self) -> None:
        for c in self._live_clients():
            state = next(s for s in self.backend.clients if s.peer is c.peer)
            assert set(state.jobs) == c.outstanding
            assert state.waiting == sum(1 for j in state.jobs.values() if j.state == WAITING)
            assert all(n == 1 for n in c.answered.values())

    def teardown(self) -> None:
        self.backend.shutdown()
        self._collect()
        for c in self._live_clients():
            assert c.outstanding == set(), "a job was never answered"
            assert all(n == 1 for n in c.answered.values())


class FairBackendMachine(BackendMachine):
    """The same, with the policy that keeps the most state of its own."""

    policy_class = FairPolicy


_settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
BackendMachine.TestCase.settings = _settings
FairBackendMachine.TestCase.settings = _settings
TestBackendStateful = BackendMachine.TestCase
TestFairBackendStateful = FairBackendMachine.TestCase
