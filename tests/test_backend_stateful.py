"""Random sequences of everything that can happen to a backend, checked
against invariants: every job is answered exactly once (unless its client
left), no slot is used twice or leaked, no job runs on two agents, the free
lists and the queue snapshot agree with the policy.  Clients and agents
speak either dialect (0.6 or 0.9), so jobs cross dialects at random, and
every message a peer receives is in its own dialect."""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Set

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.task import Clock

from inginious_tx.backend.core import WAITING, Backend, BackendSettings
from inginious_tx.backend.policies import FairPolicy, PriorityPolicy
from inginious_tx.backend.testing import FakePeer, agent_hello, job_done, new_job
from inginious_tx.messages import v06, v09

ENVS = ["A", "B", "C"]
Key = Any
V = {"0.6": v06, "0.9": v09}
DIALECTS = st.sampled_from(["0.6", "0.9"])


def submit_message(dialect: str, job_id: str, env: str, priority: int) -> Any:
    if dialect == "0.6":
        return new_job(job_id, environment=env, priority=priority)
    params = {"limits": {"time": 30, "memory": 100}, "run_cmd": "", "network_grading": False}
    return v09.ClientNewJob(job_id, priority, "course", "task", {}, {"q": "1"}, "docker", env, params, False, "t")


def hello_message(dialect: str, slots: int, envs: List[str]) -> Any:
    if dialect == "0.6":
        return agent_hello("a", slots, envs)
    return v09.AgentHello(
        "a", slots, {"docker": {e: {"id": e, "created": 0, "ports": [], "runtime": "runc"} for e in envs}}
    )


def done_message(dialect: str, key: Key, result: str) -> Any:
    if dialect == "0.6":
        return job_done(key, result, "t", 1.0)
    return v09.AgentJobDone(key, (result, "t"), 1.0, {}, {}, {}, "", None, "", "")


class AgentModel:
    """What a fake agent believes it runs."""

    def __init__(self, peer: FakePeer, slots: int, envs: List[str], responsive: bool, dialect: str = "0.6") -> None:
        self.peer = peer
        self.dialect = dialect
        self.slots = slots
        self.envs = envs
        self.responsive = responsive
        self.running: List[Key] = []
        self.alive = True


class ClientModel:
    def __init__(self, peer: FakePeer, dialect: str = "0.6") -> None:
        self.peer = peer
        self.dialect = dialect
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
        self.cs = self.backend.client_sink()
        self.asink = self.backend.agent_sink()
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
                assert type(m).dialect == c.dialect, f"{m!r} sent to a {c.dialect} client"
                if isinstance(m, (v06.BackendJobDone, v09.BackendJobDone)):
                    assert m.job_id in c.outstanding, f"unexpected or second answer {m!r}"
                    c.outstanding.discard(m.job_id)
                    c.answered[m.job_id] = c.answered.get(m.job_id, 0) + 1
                elif isinstance(m, (v06.BackendJobStarted, v09.BackendJobStarted)):
                    assert m.job_id in c.outstanding
                    c.started.add(m.job_id)
                else:
                    assert type(m).__name__ in (
                        "BackendUpdateContainers", "BackendUpdateEnvironments", "BackendGetQueue", "Pong", "Unknown"
                    ), m  # fmt: skip
        for a in self.agents:
            for m in a.peer.take():
                assert type(m).dialect == a.dialect, f"{m!r} sent to a {a.dialect} agent"
                if isinstance(m, (v06.BackendNewJob, v09.BackendNewJob)):
                    assert a.alive, "job sent to an agent that was removed"
                    assert m.job_id not in a.running
                    assert m.environment in a.envs
                    assert isinstance(m.job_id, tuple if a.dialect == "0.6" else str)
                    a.running.append(m.job_id)
                    assert len(a.running) <= a.slots, "more jobs than slots"
                elif isinstance(m, (v06.BackendKillJob, v09.BackendKillJob)):
                    assert m.job_id in a.running
                elif isinstance(m, (v06.Ping, v09.Ping)):
                    if a.responsive and a.alive:
                        self.asink.message_received(a.peer, V[a.dialect].Pong())
                else:
                    raise AssertionError(f"unexpected message to an agent: {m!r}")

    def _live_clients(self) -> List[ClientModel]:
        return [c for c in self.clients if not c.gone]

    # -- rules ------------------------------------------------------------------------

    @initialize()
    def first_client(self) -> None:
        self.add_client("0.6")

    @rule(dialect=DIALECTS)
    def add_client(self, dialect: str = "0.6") -> None:
        peer = FakePeer(b"client-%d" % next(self.addresses))
        self.cs.message_received(peer, V[dialect].ClientHello("c"))
        self.clients.append(ClientModel(peer, dialect))
        self._collect()

    @precondition(lambda self: any(not c.gone for c in self.clients))
    @rule(data=st.data(), env=st.sampled_from(ENVS), priority=st.integers(0, 3), duplicate=st.booleans())
    def submit(self, data, env: str, priority: int, duplicate: bool) -> None:
        c = data.draw(st.sampled_from(self._live_clients()))
        if duplicate and c.outstanding:
            job_id = data.draw(st.sampled_from(sorted(c.outstanding)))
            self.cs.message_received(c.peer, submit_message(c.dialect, job_id, env, priority))
            [answer] = c.peer.take()
            assert answer.job_id == job_id and answer.result[0] == "crash" and "duplicate" in answer.result[1]
            return
        job_id = f"j{next(self.ids)}"
        c.outstanding.add(job_id)
        self.cs.message_received(c.peer, submit_message(c.dialect, job_id, env, priority))
        sent = c.peer.sent
        if sent and type(sent[-1]).__name__ == "BackendJobDone" and sent[-1].job_id == job_id:
            assert "queue full" in sent[-1].result[1]
        self._collect()

    @precondition(lambda self: any(not c.gone for c in self.clients))
    @rule(data=st.data())
    def kill(self, data) -> None:
        c = data.draw(st.sampled_from(self._live_clients()))
        choices = sorted(c.outstanding) + ["never-submitted"]
        if c.dialect == "0.9":  # any 0.9 client may kill any 0.9 job
            choices += sorted(j for o in self._live_clients() if o.dialect == "0.9" for j in o.outstanding)
        job_id = data.draw(st.sampled_from(choices))
        self.cs.message_received(c.peer, V[c.dialect].ClientKillJob(job_id))
        self._collect()

    @precondition(lambda self: any(not c.gone for c in self.clients))
    @rule(data=st.data())
    def client_leaves(self, data) -> None:
        c = data.draw(st.sampled_from(self._live_clients()))
        self.cs.peer_disconnected(c.peer, "closed")
        c.gone = True
        self._collect()

    @rule(
        slots=st.integers(0, 3),
        envs=st.lists(st.sampled_from(ENVS), min_size=1, max_size=3, unique=True),
        responsive=st.booleans(),
        dialect=DIALECTS,
    )
    def agent_joins(self, slots: int, envs: List[str], responsive: bool, dialect: str) -> None:
        peer = FakePeer(b"agent-%d" % next(self.addresses))
        self.agents.append(AgentModel(peer, slots, envs, responsive, dialect))
        self.asink.message_received(peer, hello_message(dialect, slots, envs))
        self._collect()

    @precondition(lambda self: any(a.alive for a in self.agents))
    @rule(data=st.data())
    def agent_leaves(self, data) -> None:
        a = data.draw(st.sampled_from([a for a in self.agents if a.alive]))
        a.alive = False
        self.asink.peer_disconnected(a.peer, "closed")
        self._collect()

    @precondition(lambda self: any(a.alive for a in self.agents))
    @rule(data=st.data(), slots=st.integers(1, 3))
    def agent_says_hello_again(self, data, slots: int) -> None:
        a = data.draw(st.sampled_from([a for a in self.agents if a.alive]))
        # the agent forgets its jobs and starts afresh
        a.running = []
        a.slots = slots
        self.asink.message_received(a.peer, hello_message(a.dialect, slots, a.envs))
        self._collect()

    @precondition(lambda self: any(a.running for a in self.agents))
    @rule(data=st.data(), result=st.sampled_from(["success", "failed", "killed"]), started=st.booleans())
    def agent_answers(self, data, result: str, started: bool) -> None:
        """A live or removed agent answers one of the jobs it believes it runs."""
        a = data.draw(st.sampled_from([a for a in self.agents if a.running]))
        key = data.draw(st.sampled_from(a.running))
        a.running.remove(key)
        if started:
            self.asink.message_received(a.peer, V[a.dialect].AgentJobStarted(key))
        self.asink.message_received(a.peer, done_message(a.dialect, key, result))
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
        self.cs.message_received(c.peer, V[c.dialect].ClientGetQueue())
        [snap] = [m for m in c.peer.sent if type(m).__name__ == "BackendGetQueue"]
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
                assert env[0] == "docker" and env[1] in model.envs
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
