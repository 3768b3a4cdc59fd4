"""The backend core against PROTOCOL.md section 4, over the in-memory
transport (every message really goes through the wire encoding) with a
fake clock."""

from __future__ import annotations

from typing import Any, Iterable, List, Optional

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from inginious_tx.backend.core import Backend, BackendSettings, Job
from inginious_tx.backend.policies import FairPolicy, PriorityPolicy
from inginious_tx.backend.testing import FakePeer, agent_hello, job_done, new_job
from inginious_tx.interfaces import (
    IBackendAgentHandler,
    IBackendClientHandler,
    IBackendJob,
    IJobObserver,
    IMessageSink,
    IPeer,
    IWaitingJob,
)
from inginious_tx.messages import (
    AgentJobSSHDebug,
    AgentJobStarted,
    BackendGetQueue,
    BackendJobDone,
    BackendJobSSHDebug,
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
from inginious_tx.testing import MemoryTransport


@implementer(IMessageSink)
class Remote:
    """A fake client or agent on the in-memory transport."""

    def __init__(self, world: World, endpoint: str, name: str, auto_pong: bool = False) -> None:
        self.world = world
        self.name = name
        self.auto_pong = auto_pong
        self.messages: List[Any] = []
        self.closed: Optional[str] = None
        self.connection = world.mem.connect(None, endpoint, self)
        #: how the backend sees us (its IPeer for this connection)
        self.backend_peer = world.listeners[endpoint].peers[-1]
        self.address: bytes = self.backend_peer.address

    def peer_connected(self, peer: IPeer) -> None:
        pass

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        self.closed = reason

    def message_received(self, peer: IPeer, message: Any) -> None:
        self.messages.append(message)
        if self.auto_pong and isinstance(message, Ping):
            peer.send(Pong())

    def send(self, *messages: Any) -> None:
        for m in messages:
            self.connection.peer.send(m)
        self.world.pump()

    def close(self) -> None:
        self.connection.stop()
        self.world.pump()

    def of_type(self, cls: type) -> List[Any]:
        return [m for m in self.messages if type(m) is cls]

    def take(self) -> List[Any]:
        got, self.messages = self.messages, []
        return [m for m in got if not isinstance(m, Ping)]

    def results(self) -> dict:
        return {m.job_id: m.result for m in self.of_type(BackendJobDone)}


class World:
    """A backend listening on ``mem:clients`` and ``mem:agents``."""

    def __init__(self, policy: Any = None, **settings: Any) -> None:
        self.clock = Clock()
        self.mem = MemoryTransport()
        self.backend = Backend(
            self.clock, policy if policy is not None else PriorityPolicy(), BackendSettings(**settings)
        )
        self.listeners: dict = {}
        for endpoint, sink in (("mem:clients", self.backend.client_sink()), ("mem:agents", self.backend.agent_sink())):
            self.mem.listen(None, endpoint, sink).addCallback(
                lambda listener, ep=endpoint: self.listeners.update({ep: listener})
            )
        self.backend.start()

    def pump(self) -> None:
        self.mem.pump()

    def client(self, name: str = "client", hello: bool = True) -> Remote:
        c = Remote(self, "mem:clients", name)
        self.pump()
        if hello:
            c.send(ClientHello(name))
        return c

    def agent(
        self, name: str = "agent", slots: int = 1, envs: Iterable[str] = ("default",), pong: bool = True
    ) -> Remote:
        a = Remote(self, "mem:agents", name, auto_pong=pong)
        self.pump()
        a.send(agent_hello(name, slots, envs))
        return a

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.clock.advance(self.backend.settings.ping_interval)
            self.pump()
            self.pump()


@pytest.fixture
def world() -> World:
    return World()


def new_jobs(agent: Remote) -> List[Any]:
    return [m.job_id for m in agent.of_type(BackendNewJob)]


# -- interfaces ------------------------------------------------------------------------


def test_handlers_and_jobs_provide_their_interfaces(world):
    verifyObject(IBackendClientHandler, world.backend.client_handler)
    verifyObject(IBackendAgentHandler, world.backend.agent_handler)
    c = world.client()
    c.send(new_job("j"))
    job = world.backend.job((c.address, "j"))
    assert isinstance(job, Job)
    verifyObject(IWaitingJob, job)
    verifyObject(IPeer, FakePeer(b"x"))


def test_settings_are_checked():
    with pytest.raises(ValueError):
        BackendSettings(max_retries=-1)
    with pytest.raises(ValueError):
        BackendSettings(ping_interval=0)
    with pytest.raises(ValueError):
        BackendSettings(max_missed_pongs=0)
    with pytest.raises(ValueError):
        BackendSettings(max_waiting=-5)


# -- 4.1 / 4.2: hello first, environments ------------------------------------------


@pytest.mark.parametrize(
    "message", [new_job("j"), ClientKillJob("j"), ClientGetQueue(), Ping()], ids=lambda m: type(m).msgtype
)
def test_a_client_must_say_hello_first(world, message):
    agent = world.agent()
    c = world.client(hello=False)
    c.send(message)
    assert c.take() == [Unknown()]
    assert agent.of_type(BackendNewJob) == []
    assert world.backend.clients == []
    c.send(ClientHello("late"), message)
    got = c.take()
    assert got[0] == BackendUpdateContainers(("default",))
    assert Unknown() not in got


def test_hello_gets_the_live_environments(world):
    c1 = world.client("c1")
    assert c1.take() == [BackendUpdateContainers(())]
    world.agent("a1", envs=["py", "java"])
    assert c1.take() == [BackendUpdateContainers(("java", "py"))]
    c2 = world.client("c2")
    assert c2.take() == [BackendUpdateContainers(("java", "py"))]


def test_environment_set_changes_are_sent_to_every_client(world):
    c1, c2 = world.client("c1"), world.client("c2")
    a1 = world.agent("a1", envs=["py"])
    a2 = world.agent("a2", envs=["py", "c"])
    world.agent("a3", envs=["c"])  # no change: nothing sent
    for c in (c1, c2):
        assert c.of_type(BackendUpdateContainers)[1:] == [
            BackendUpdateContainers(("py",)),
            BackendUpdateContainers(("c", "py")),
        ]
        c.take()
    a2.close()  # "py" still offered by a1, "c" by a3
    assert c1.take() == [] and c2.take() == []
    a1.close()  # the last agent with "py" left
    assert c1.take() == [BackendUpdateContainers(("c",))]
    assert c2.take() == [BackendUpdateContainers(("c",))]
    assert world.backend.environments == ("c",)


def test_a_second_client_hello_is_harmless(world):
    c = world.client()
    c.send(new_job("j"))
    c.send(ClientHello("again"))
    assert c.take()[-1] == BackendUpdateContainers(())
    assert world.backend.job((c.address, "j")) is not None
    assert len(world.backend.clients) == 1


def test_an_agent_without_slots_offers_nothing(world):
    c = world.client()
    world.agent("lazy", slots=0, envs=["py"])
    assert c.of_type(BackendUpdateContainers) == [BackendUpdateContainers(())]
    assert len(world.backend.agents) == 1


# -- 4.3 / 4.4: new jobs, duplicates, dispatch ---------------------------------------------


def test_a_job_goes_to_an_agent_with_its_fields(world):
    agent = world.agent(envs=["py"])
    c = world.client()
    message = new_job("j1", environment="py", course_id="co", task_id="ta", time_limit=7, inputdata={"a": "b"})
    c.send(message)
    [sent] = agent.of_type(BackendNewJob)
    assert sent == BackendNewJob(
        (c.address, "j1"),
        "co",
        "ta",
        {"a": "b"},
        "py",
        message.enable_network,
        7,
        message.hard_time_limit,
        message.mem_limit,
        message.debug,
        message.run_cmd,
    )


def test_started_ssh_and_done_are_forwarded(world):
    agent = world.agent()
    c = world.client()
    c.take()
    c.send(new_job("j1", debug="ssh"))
    key = (c.address, "j1")
    agent.send(AgentJobStarted(key), AgentJobSSHDebug(key, "host", 2222, "pw"), job_done(key, "failed", "no", 12.5))
    assert c.take() == [
        BackendJobStarted("j1"),
        BackendJobSSHDebug("j1", "host", 2222, "pw"),
        BackendJobDone("j1", ("failed", "no"), 12.5, {}, {}, {}, "", None, "", ""),
    ]
    assert world.backend.job(key) is None
    assert world.backend.running_count == 0


def test_a_free_slot_takes_the_next_waiting_job(world):
    agent = world.agent(slots=2)
    c = world.client()
    for i in range(5):
        c.send(new_job(f"j{i}"))
    assert new_jobs(agent) == [(c.address, "j0"), (c.address, "j1")]
    assert world.backend.waiting_count == 3
    agent.send(job_done((c.address, "j1")))
    assert new_jobs(agent)[-1] == (c.address, "j2")
    agent.send(job_done((c.address, "j0")), job_done((c.address, "j2")), job_done((c.address, "j3")))
    agent.send(job_done((c.address, "j4")))
    assert set(c.results()) == {f"j{i}" for i in range(5)}
    assert world.backend.waiting_count == 0 and world.backend.running_count == 0
    assert world.backend.free_agents("default") != []


def test_jobs_are_spread_over_agents(world):
    a1, a2 = world.agent("a1", slots=2), world.agent("a2", slots=2)
    c = world.client()
    for i in range(4):
        c.send(new_job(f"j{i}"))
    assert len(a1.of_type(BackendNewJob)) == 2 and len(a2.of_type(BackendNewJob)) == 2
    c.send(new_job("j4"))
    assert world.backend.waiting_count == 1


def test_a_job_without_agent_waits_and_does_not_block_others(world):
    c = world.client()
    agent = world.agent(envs=["py"])
    c.send(new_job("nobody", environment="rust", priority=-10))
    c.send(new_job("ok", environment="py", priority=10))
    assert new_jobs(agent) == [(c.address, "ok")]
    agent.send(job_done((c.address, "ok")))
    assert c.results() == {"ok": ("success", "ok")}
    assert world.backend.waiting_count == 1
    rust = world.agent("rust", envs=["rust"])
    assert new_jobs(rust) == [(c.address, "nobody")]


def test_policy_order_decides_which_job_runs(world):
    c = world.client()
    for name, prio in [("low", 5), ("high", 0), ("mid", 2)]:
        c.send(new_job(name, priority=prio))
    agent = world.agent(slots=1)
    for _ in range(3):
        key = new_jobs(agent)[-1]
        agent.send(job_done(key))
    assert [k[1] for k in new_jobs(agent)] == ["high", "mid", "low"]


def test_duplicate_job_id_is_refused_and_the_first_is_untouched(world):
    agent = world.agent(slots=1)
    c = world.client()
    c.send(new_job("run"), new_job("wait"))
    c.take()
    c.send(new_job("run"), new_job("wait"))
    dup = c.take()
    assert [m.job_id for m in dup] == ["run", "wait"]
    assert all(m.result[0] == "crash" and "duplicate" in m.result[1] for m in dup)
    assert world.backend.waiting_count == 1 and world.backend.running_count == 1
    agent.send(job_done((c.address, "run")))
    agent.send(job_done((c.address, "wait")))
    assert [m.result for m in c.of_type(BackendJobDone)] == [("success", "ok")] * 2
    # once answered, the id may be used again
    c.send(new_job("run"))
    assert new_jobs(agent)[-1] == (c.address, "run")


def test_same_job_id_from_two_clients_is_two_jobs(world):
    agent = world.agent(slots=2)
    c1, c2 = world.client("c1"), world.client("c2")
    c1.send(new_job("j"))
    c2.send(new_job("j"))
    assert set(new_jobs(agent)) == {(c1.address, "j"), (c2.address, "j")}
    agent.send(job_done((c2.address, "j"), "failed", "x", 0.0))
    assert c2.results() == {"j": ("failed", "x")} and c1.results() == {}


def test_global_waiting_cap():
    world = World(max_waiting=2)
    agent = world.agent(slots=1)
    c = world.client()
    for i in range(4):
        c.send(new_job(f"j{i}"))
    # j0 runs at once (not waiting), j1 and j2 wait, j3 is over the cap
    assert c.results() == {"j3": ("crash", c.results()["j3"][1])}
    assert "queue full" in c.results()["j3"][1]
    assert world.backend.waiting_count == 2
    agent.send(job_done((c.address, "j0")))
    c.send(new_job("j4"))
    assert world.backend.waiting_count == 2
    assert "j4" not in c.results()


def test_refusals_are_logged_once_per_heartbeat(log_events):
    world = World(max_waiting=0)
    c = world.client()
    for i in range(50):
        c.send(new_job(f"j{i}"))
    assert len(c.results()) == 50
    assert not log_events.has("queue full")
    world.tick()
    assert [t for t in log_events.texts() if "queue full" in t] == [
        "queue full: refused 50 jobs in the last 1.0 s (0 waiting, 0 bytes held)"
    ]


def test_per_client_waiting_cap():
    world = World(max_waiting_per_client=1)
    c1, c2 = world.client("c1"), world.client("c2")
    c1.send(new_job("a"), new_job("b"))
    c2.send(new_job("a"))
    assert list(c1.results()) == ["b"] and "queue full" in c1.results()["b"][1]
    assert c2.results() == {}
    assert world.backend.waiting_count == 2


# -- 4.5: results from the wrong agent -----------------------------------------------------


def test_a_result_for_a_job_the_agent_does_not_run_is_dropped(world, log_events):
    a1, a2 = world.agent("a1"), world.agent("a2")
    c = world.client()
    c.send(new_job("j"))
    key = new_jobs(a1)[0] if new_jobs(a1) else new_jobs(a2)[0]
    other = a2 if new_jobs(a1) else a1
    other.send(AgentJobStarted(key), job_done(key, "success", "forged"), job_done((b"nobody", "x")))
    assert c.results() == {} and c.of_type(BackendJobStarted) == []
    assert world.backend.running_count == 1
    assert log_events.has("not running")


def test_messages_from_an_unregistered_agent_are_dropped(world, log_events):
    c = world.client()
    world.agent("real")
    c.send(new_job("j"))
    stranger = Remote(world, "mem:agents", "stranger")
    world.pump()
    stranger.send(job_done((c.address, "j")), Pong())
    assert c.results() == {}
    assert log_events.has("not a registered agent")


# -- 4.6: kills -------------------------------------------------------------------------------


def test_kill_a_waiting_job(world):
    c = world.client()
    c.send(new_job("j"))
    c.send(ClientKillJob("j"))
    assert c.results() == {"j": ("killed", c.results()["j"][1])}
    assert world.backend.waiting_count == 0
    agent = world.agent()
    assert agent.of_type(BackendNewJob) == []


def test_kill_a_running_job(world):
    agent = world.agent()
    c = world.client()
    c.send(new_job("j"))
    c.send(ClientKillJob("j"))
    assert agent.of_type(BackendKillJob) == [BackendKillJob((c.address, "j"))]
    assert c.results() == {}
    agent.send(job_done((c.address, "j"), "killed", "bye", 0.0))
    assert c.results() == {"j": ("killed", "bye")}


def test_kill_an_unknown_job_is_ignored(world, log_events):
    agent = world.agent()
    c = world.client()
    c.take()
    c.send(ClientKillJob("nope"))
    assert c.take() == []
    assert agent.of_type(BackendKillJob) == []
    assert log_events.has("unknown job")


def test_a_killed_job_whose_agent_is_lost_is_answered_killed_not_requeued(world):
    agent = world.agent()
    c = world.client()
    c.send(new_job("j"))
    c.send(ClientKillJob("j"))
    agent.close()
    assert c.results()["j"][0] == "killed"
    assert world.backend.waiting_count == 0


# -- 4.7: queue snapshots and ping ------------------------------------------------------------


def test_queue_snapshot(world):
    world.clock.advance(1000)
    agent = world.agent("worker", slots=1)
    me, other = world.client("me"), world.client("other")
    me.send(new_job("r", course_id="co", task_id="t1", launcher="L1", time_limit=40))
    other.send(new_job("w1", priority=3, course_id="co", task_id="t2", launcher="L2", time_limit=20))
    me.send(new_job("w2", priority=1, course_id="co2", task_id="t3", launcher="L3", time_limit=0))
    me.take()
    me.send(ClientGetQueue())
    [snapshot] = me.take()
    assert snapshot == BackendGetQueue(
        [("r", True, "worker", "co/t1", "L1", 1000, 1040)],
        [("w2", True, "co2/t3", "L3", 0), ("w1", False, "co/t2", "L2", 20)],
    )
    assert agent is not None


def test_queue_snapshot_no_time_limit_is_minus_one(world):
    world.agent()
    c = world.client()
    c.send(new_job("r", time_limit=0), ClientGetQueue())
    assert c.of_type(BackendGetQueue)[0].jobs_running[0][-1] == -1


def test_client_ping_gets_pong(world):
    c = world.client()
    c.take()
    c.send(Ping())
    assert c.take() == [Pong()]


# -- 4.8: agents, heartbeats, retries -------------------------------------------------------------


def test_agents_are_pinged_every_interval(world):
    agent = world.agent()
    assert agent.of_type(Ping) == []
    world.tick(3)
    assert len(agent.of_type(Ping)) == 3
    world.tick(10)
    assert len(world.backend.agents) == 1


def test_a_silent_agent_is_removed_and_its_jobs_requeued(world, log_events):
    mute = world.agent("mute", pong=False)
    c = world.client()
    c.send(new_job("j"))
    assert new_jobs(mute) == [(c.address, "j")]
    world.tick(3)
    assert len(world.backend.agents) == 1  # 3 pings outstanding, not yet judged
    world.tick(1)
    assert world.backend.agents == []
    assert mute.closed is not None  # the backend disconnected it
    assert world.backend.waiting_count == 1 and c.results() == {}
    spare = world.agent("spare")
    assert new_jobs(spare) == [(c.address, "j")]
    assert world.backend.job((c.address, "j")).retries == 1
    assert log_events.has("mute", "unanswered")


def test_max_missed_pongs_is_configurable():
    world = World(max_missed_pongs=1)
    world.agent(pong=False)
    world.tick(1)
    assert len(world.backend.agents) == 1
    world.tick(1)
    assert world.backend.agents == []


def test_a_pong_resets_the_missed_count(world):
    agent = world.agent(pong=False)
    for _ in range(5):
        world.tick(2)
        agent.send(Pong())
    assert len(world.backend.agents) == 1


def test_a_closed_agent_is_gone_at_once_and_its_job_requeued(world):
    a1 = world.agent("a1")
    c = world.client()
    c.send(new_job("j"))
    a2 = world.agent("a2")
    a1.close()
    assert new_jobs(a2) == [(c.address, "j")]
    a2.send(job_done((c.address, "j")))
    assert c.results() == {"j": ("success", "ok")}


def test_a_job_is_retried_at_most_max_retries_times(world):
    c = world.client()
    c.send(new_job("j"))
    world.agent("a1").close()
    assert world.backend.waiting_count == 1
    world.agent("a2").close()
    [done] = c.of_type(BackendJobDone)
    assert done.result[0] == "crash" and "agent lost" in done.result[1]
    assert world.backend.job((c.address, "j")) is None
    world.agent("a3")
    assert c.of_type(BackendJobDone) == [done]  # exactly one answer


def test_zero_retries():
    world = World(max_retries=0)
    c = world.client()
    c.send(new_job("j"))
    world.agent().close()
    assert c.results()["j"][0] == "crash"


def test_a_requeued_job_keeps_its_place(world):
    c = world.client()
    a1 = world.agent("a1")
    c.send(new_job("first"), new_job("second"), new_job("third"))
    a1.close()
    order = [j.key[1] for j in world.backend.policy.ordered()]
    assert order == ["first", "second", "third"]


def test_a_late_result_from_a_removed_agent_is_dropped(world):
    a1 = world.agent("a1", pong=False)
    c = world.client()
    c.send(new_job("j"))
    world.tick(4)
    assert world.backend.agents == []
    a2 = world.agent("a2")
    # a1's answer arrives after its removal (as it could over ZeroMQ)
    world.backend.agent_handler.agent_job_done(a1.backend_peer, job_done((c.address, "j"), "success", "late"))
    world.pump()
    assert c.results() == {}
    a2.send(job_done((c.address, "j"), "success", "fresh"))
    assert c.results() == {"j": ("success", "fresh")}


def test_a_second_agent_hello_replaces_the_first(world):
    agent = world.agent("v1", slots=1, envs=["py"])
    c = world.client()
    c.send(new_job("j", environment="py"))
    c.take()
    agent.send(agent_hello("v2", 2, ["py", "c"]))
    [a] = world.backend.agents
    assert a.name == "v2" and a.slots == 2
    # its running job was handled as if the agent had left: re-queued (here
    # straight back to the new registration), with one retry counted
    assert new_jobs(agent) == [(c.address, "j"), (c.address, "j")]
    assert world.backend.job((c.address, "j")).retries == 1
    assert c.take() == [BackendUpdateContainers(("c", "py"))]
    agent.send(job_done((c.address, "j")))
    assert c.results() == {"j": ("success", "ok")}
    assert agent.closed is None


def test_a_new_agent_takes_waiting_jobs_up_to_its_slots(world):
    c = world.client()
    for i in range(5):
        c.send(new_job(f"j{i}", environment="py" if i % 2 else "c"))
    agent = world.agent(slots=2, envs=["py"])
    assert [k[1] for k in new_jobs(agent)] == ["j1", "j3"]
    assert world.backend.waiting_count == 3


# -- clients that leave ------------------------------------------------------------------------


def test_a_client_that_disconnects(world):
    agent = world.agent(slots=1)
    gone, stays = world.client("gone"), world.client("stays")
    gone.send(new_job("run"), new_job("wait"))
    stays.send(new_job("next"))
    gone.close()
    assert world.backend.clients != [] and len(world.backend.clients) == 1
    assert agent.of_type(BackendKillJob) == [BackendKillJob((gone.address, "run"))]
    agent.send(job_done((gone.address, "run"), "killed", "k", 0.0))
    # the slot is free again; "wait" was dropped, so "next" runs
    assert new_jobs(agent)[-1] == (stays.address, "next")
    assert world.backend.waiting_count == 0


def test_a_pinging_zmq_style_client_that_falls_silent_is_dropped():
    world = World(client_silence_timeout=5)
    agent = world.agent()
    c = world.client()
    c.send(Ping(), new_job("run"), new_job("wait"))
    for _ in range(4):
        world.tick()
        c.send(Ping())
    assert len(world.backend.clients) == 1
    world.tick(5)
    assert world.backend.clients == []
    assert agent.of_type(BackendKillJob) == [BackendKillJob((c.address, "run"))]
    assert world.backend.waiting_count == 0


def test_a_client_with_jobs_that_never_pings_is_dropped_after_the_silence():
    """Issue 10: a ZeroMQ client that never pings, with jobs, does not hold them forever."""
    world = World(client_silence_timeout=5, client_idle_timeout=100)
    agent = world.agent()
    c = world.client()
    c.send(new_job("run"), new_job("wait"), new_job("big", environment="nowhere", inputdata={"b": b"x" * 1000}))
    assert world.backend.held_bytes > 1000
    world.tick(4)
    c.send(ClientGetQueue())  # any message counts as a sign of life
    world.tick(4)
    assert len(world.backend.clients) == 1
    world.tick(1)
    assert world.backend.clients == [] and c.closed is not None
    assert agent.of_type(BackendKillJob) == [BackendKillJob((c.address, "run"))]
    assert world.backend.waiting_count == 0
    agent.send(job_done((c.address, "run"), "killed"))
    assert world.backend.running_count == 0 and world.backend.held_bytes == 0
    assert c.of_type(BackendJobDone) == []  # nobody to answer


def test_an_idle_client_is_forgotten_and_must_say_hello_again():
    world = World(client_idle_timeout=10)
    c = world.client()
    world.tick(9)
    assert len(world.backend.clients) == 1
    world.tick(2)
    assert world.backend.clients == []
    assert c.closed is not None


# -- wrong side ------------------------------------------------------------------------------------


def test_agent_messages_on_the_client_endpoint(world, log_events):
    stranger = world.client(hello=False)
    stranger.send(agent_hello("x", 1, ["py"]))
    assert stranger.take() == [Unknown()]
    c = world.client()
    c.take()
    c.send(job_done((b"x", "y")))
    assert c.take() == []
    assert world.backend.agents == []
    assert log_events.has("protocol error")


def test_client_messages_on_the_agent_endpoint(world, log_events):
    agent = world.agent()
    agent.send(ClientHello("confused"), new_job("j"))
    assert agent.take() == []
    assert world.backend.clients == []
    assert log_events.has("protocol error")


# -- shutdown ---------------------------------------------------------------------------------------


def test_shutdown_answers_every_job(world):
    agent = world.agent(slots=1)
    c = world.client()
    c.send(new_job("run"), new_job("wait"))
    world.backend.shutdown()
    world.pump()
    results = c.results()
    assert results == {
        "run": ("crash", "backend shutting down"),
        "wait": ("crash", "backend shutting down"),
    }
    assert agent.of_type(BackendKillJob) == [BackendKillJob((c.address, "run"))]
    c.send(new_job("after"))
    assert c.results()["after"] == ("crash", "backend shutting down")
    world.backend.shutdown()  # idempotent
    world.tick(10)
    assert len(agent.of_type(Ping)) == 0  # heartbeats stopped
    agent.send(job_done((c.address, "run")))
    assert len(c.of_type(BackendJobDone)) == 3


# -- a broken policy ------------------------------------------------------------------------------


class BrokenPolicy(PriorityPolicy):
    """Misbehaves on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_add = self.fail_pop = self.fail_remove = False
        self.wrong: Any = None

    def add(self, job: Any) -> None:
        if self.fail_add:
            raise RuntimeError("add broke")
        super().add(job)

    def remove(self, job: Any) -> None:
        if self.fail_remove:
            raise RuntimeError("remove broke")
        super().remove(job)

    def pop_next(self, environments: Any) -> Any:
        if self.fail_pop:
            raise RuntimeError("pop broke")
        if self.wrong is not None:
            job, self.wrong = self.wrong, None
            super().remove(job)
            return job
        return super().pop_next(environments)


def test_a_broken_policy_costs_at_most_a_crash_answer(log_events):
    policy = BrokenPolicy()
    world = World(policy)
    c = world.client()
    policy.fail_add = True
    c.send(new_job("a"))
    assert c.results()["a"] == ("crash", "internal error in the scheduling policy")
    assert world.backend.job((c.address, "a")) is None
    policy.fail_add = False

    # pop_next raising: the agent is listed as free, the job keeps waiting
    c.send(new_job("b"))
    policy.fail_pop = True
    agent = world.agent(slots=1, envs=["default"])
    assert agent.of_type(BackendNewJob) == [] and world.backend.free_agents("default") != []
    policy.fail_pop = False

    # a job of an environment the agent does not offer: answered crash
    c.send(new_job("other", environment="elsewhere"))
    busy = world.agent("busy", slots=1, envs=["x"])
    c.send(new_job("x1", environment="x"), new_job("x2", environment="x"))
    policy.wrong = world.backend.job((c.address, "other"))
    busy.send(job_done((c.address, "x1")))
    assert c.results()["other"] == ("crash", "internal error in the scheduling policy")
    assert new_jobs(busy)[-1] == (c.address, "x2")

    # remove raising: the kill is still answered, and the job never runs
    policy.fail_remove = True
    c.send(ClientKillJob("b"))
    policy.fail_remove = False
    assert c.results()["b"][0] == "killed"
    busy.send(job_done((c.address, "x2")))
    assert world.backend.waiting_count == 0 and world.backend.running_count == 0
    assert log_events.has("add broke") or log_events.has("failed to queue")


# -- the fake peer ------------------------------------------------------------------------------------


def test_fake_peer_drives_the_backend_directly():
    clock = Clock()
    backend = Backend(clock, FairPolicy())
    client, agent = FakePeer(b"c"), FakePeer(b"a")
    backend.client_handler.client_hello(client, ClientHello("me"))
    backend.agent_handler.agent_hello(agent, agent_hello("a", 1, ["default"]))
    backend.client_handler.client_new_job(client, new_job("j"))
    assert agent.of_type(BackendNewJob)[0].job_id == (b"c", "j")
    backend.agent_handler.agent_job_done(agent, job_done((b"c", "j")))
    assert client.of_type(BackendJobDone)[0].result == ("success", "ok")
    agent.disconnect("x")
    agent.disconnect("y")
    assert agent.disconnected == "x"


# -- accepted peers, observers, load counts ------------------------------------------------------


def test_an_accepted_hello_is_told_to_the_peer_transport():
    backend = Backend(Clock(), PriorityPolicy())
    client, agent, stranger = FakePeer(b"c"), FakePeer(b"a"), FakePeer(b"s")
    backend.client_handler.client_new_job(stranger, new_job("j"))
    assert stranger.accepted_count == 0 and stranger.of_type(Unknown)
    backend.client_handler.client_hello(client, ClientHello("me"))
    backend.agent_handler.agent_hello(agent, agent_hello("a", 1, ["default"]))
    assert client.accepted_count >= 1 and agent.accepted_count == 1


def test_a_peer_without_accepted_still_works():
    """A third-party IPeer written before ``accepted`` existed is served as before."""

    @implementer(IPeer)
    class OldPeer:
        description = "old"

        def __init__(self, address: bytes) -> None:
            self.address = address
            self.sent: List[Any] = []

        def send(self, message: Any) -> None:
            self.sent.append(message)

        def disconnect(self, reason: str) -> None:
            pass

    backend = Backend(Clock(), PriorityPolicy())
    client = OldPeer(b"c")
    backend.client_handler.client_hello(client, ClientHello("me"))
    assert isinstance(client.sent[-1], BackendUpdateContainers)


@implementer(IJobObserver)
class Recorder:
    def __init__(self) -> None:
        self.events: List[tuple] = []

    def job_queued(self, job: Any) -> None:
        verifyObject(IBackendJob, job)
        self.events.append(("queued", job.job_id, job.client_name, job.environment_type))

    def job_refused(self, client_name: str, job_id: str, reason: str) -> None:
        self.events.append(("refused", job_id, client_name, reason.split(":")[0]))

    def job_started(self, job: Any, agent_name: str) -> None:
        self.events.append(("started", job.job_id, agent_name))

    def job_requeued(self, job: Any, agent_name: str, reason: str) -> None:
        self.events.append(("requeued", job.job_id, agent_name))

    def job_finished(self, job: Any, kind: str, agent_name: Optional[str]) -> None:
        self.events.append(("finished", job.job_id, kind, agent_name))


def test_observers_hear_every_transition(world):
    rec = Recorder()
    verifyObject(IJobObserver, rec)
    world.backend.add_observer(rec)
    world.backend.add_observer(rec)  # once only
    c = world.client("front")
    a = world.agent("a1", slots=1)
    c.send(new_job("run"), new_job("wait"), new_job("run"))
    assert rec.events == [
        ("queued", "run", "front", "docker"),
        ("started", "run", "a1"),
        ("queued", "wait", "front", "docker"),
        ("refused", "run", "front", "duplicate job id 'run'"),
    ]
    rec.events.clear()
    a.close()  # lost: "run" re-queued, then the new agent takes it
    b = world.agent("a2", slots=1)
    c.send(ClientKillJob("wait"))
    b.send(job_done((c.address, "run")))
    assert rec.events == [
        ("requeued", "run", "a1"),
        ("started", "run", "a2"),
        ("finished", "wait", "killed", None),
        ("finished", "run", "success", "a2"),
    ]
    rec.events.clear()
    c.send(new_job("left"), new_job("lost", environment="nowhere"))
    c.close()  # the waiting job is dropped at once; the running one when its agent answers the kill
    assert rec.events[-1] == ("finished", "lost", "dropped", None)
    b.send(job_done((c.address, "left"), "killed"))
    assert rec.events[-1] == ("finished", "left", "dropped", "a2")
    world.backend.remove_observer(rec)
    world.backend.remove_observer(rec)  # unknown: ignored
    c2 = world.client("other")
    c2.send(new_job("x"))
    assert all(e[1] != "x" for e in rec.events)


def test_a_raising_observer_is_logged_and_does_not_disturb(world, log_events):
    class Broken(Recorder):
        def job_queued(self, job: Any) -> None:
            raise RuntimeError("observer broke")

    rec = Recorder()
    world.backend.add_observer(Broken())
    world.backend.add_observer(rec)
    c = world.client()
    world.agent(slots=1)
    c.send(new_job("j"))
    assert new_jobs(world.agent("spare")) == [] and ("started", "j", "agent") in rec.events
    assert log_events.has("observer broke") or log_events.has("failed in job_queued")


def test_load_counts_follow_jobs(world):
    backend = world.backend
    c1, c2 = world.client("front1"), world.client("front2")
    a = world.agent(slots=1)
    c1.send(new_job("a", course_id="algo"), new_job("b", course_id="algo"), new_job("c", course_id="db"))
    c2.send(new_job("a", course_id="db"))
    assert backend.load_by_course() == {"algo": (1, 1), "db": (2, 0)}
    assert backend.load_by_client() == {"front1": (2, 1), "front2": (1, 0)}
    c1.send(ClientKillJob("c"))
    assert backend.load_by_course() == {"algo": (1, 1), "db": (1, 0)}
    a.close()  # the running job is re-queued: nothing runs
    assert backend.load_by_course() == {"algo": (2, 0), "db": (1, 0)}
    b = world.agent("b", slots=3)
    assert backend.load_by_course() == {"algo": (0, 2), "db": (0, 1)}
    for job_id in new_jobs(b):
        b.send(job_done(job_id))
    assert backend.load_by_course() == {} and backend.load_by_client() == {}
    c2.send(new_job("w", course_id="web", environment="nowhere"))
    c2.close()
    assert backend.load_by_client() == {}


def test_load_counts_at_scale_are_cheap():
    """Reading the counts costs O(courses), not O(jobs)."""
    import time

    backend = Backend(Clock(), PriorityPolicy(), BackendSettings(max_waiting=None))
    client = FakePeer(b"c", wire=False)
    backend.client_handler.client_hello(client, ClientHello("me"))
    for i in range(20_000):
        backend.client_handler.client_new_job(client, new_job(str(i), course_id=f"c{i % 10}", environment="none"))
    start = time.perf_counter()
    for _ in range(100):
        counts = backend.load_by_course()
    assert (time.perf_counter() - start) / 100 < 0.001
    assert counts == {f"c{i}": (2000, 0) for i in range(10)}
    assert backend.load_by_client() == {"me": (20_000, 0)}


# -- byte bounds (issue 10, item 4) --------------------------------------------------------------


def blob(n: int) -> dict:
    """An inputdata of exactly ``n`` bytes once encoded (n >= 100000)."""
    return {"f": b"x" * (n - 8)}  # fixmap 1 + fixstr 2 + bin32 header 5


def test_blob_sizes_are_exact():
    import msgpack

    assert len(msgpack.packb(blob(100_000), use_bin_type=True)) == 100_000


def test_held_bytes_are_bounded_per_client_and_in_total(log_events):
    world = World(max_queued_bytes=1_000_000, max_queued_bytes_per_client=600_000)
    a, b = world.client("a"), world.client("b")
    for i in range(7):
        a.send(new_job(f"a{i}", environment="nowhere", inputdata=blob(100_000)))
    refused = {k: v for k, v in a.results().items() if v[0] == "crash"}
    assert list(refused) == ["a6"]
    assert refused["a6"][1].startswith("backend full for this client: its jobs not answered yet hold 600000 bytes")
    assert world.backend.held_bytes == 600_000 and world.backend.waiting_count == 6
    for i in range(5):
        b.send(new_job(f"b{i}", environment="nowhere", inputdata=blob(100_000)))
    assert list(b.results()) == ["b4"] and b.results()["b4"][1].startswith(
        "backend full: jobs not answered yet hold 1000000 bytes"
    )
    # a small job still fits in neither; killing one of a's jobs makes room for a
    a.send(ClientKillJob("a0"), new_job("a7", environment="nowhere", inputdata=blob(100_000)))
    assert a.results()["a0"][0] == "killed" and "a7" not in a.results()
    assert world.backend.held_bytes == 1_000_000
    world.tick()
    assert log_events.has("queue full: refused 2 jobs")
    # running jobs count too, until their answer
    agent = world.agent(envs=["nowhere"], slots=1)
    assert world.backend.held_bytes == 1_000_000 and world.backend.running_count == 1
    agent.send(job_done(new_jobs(agent)[0]))
    assert world.backend.held_bytes == 900_000
    a.close()
    b.close()
    assert world.backend.held_bytes == 100_000  # the running job of a gone client, until its agent answers
    agent.send(job_done(new_jobs(agent)[-1], "killed"))
    assert world.backend.held_bytes == 0 and world.backend.running_count == 0


def test_byte_bounds_can_be_lifted():
    world = World(max_queued_bytes=None, max_queued_bytes_per_client=None)
    c = world.client()
    for i in range(20):
        c.send(new_job(str(i), environment="nowhere", inputdata=blob(100_000)))
    assert c.results() == {} and world.backend.held_bytes == 2_000_000
    defaults = BackendSettings()
    assert (defaults.max_queued_bytes, defaults.max_queued_bytes_per_client) == (512 << 20, 256 << 20)
    with pytest.raises(ValueError):
        BackendSettings(max_queued_bytes=-1)


def test_a_job_nested_5000_deep_is_answered_once():
    """Issue 10, item 7: a job whose inputdata is too deep to decode still gets its one answer."""
    import msgpack

    from inginious_tx.messages import MessageError, MessageMeta

    fields = dict(new_job("deep").__dict__, type="client_new_job")
    body = b""
    for key, value in fields.items():
        body += msgpack.packb(key)
        body += b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0" if key == "inputdata" else msgpack.packb(value)
    payload = bytes([0x80 | len(fields)]) + body
    with pytest.raises(MessageError) as info:
        MessageMeta.load(payload)
    world = World()
    c = world.client()
    sink = world.backend.client_sink()
    sink.message_rejected(c.backend_peer, info.value, payload)
    world.pump()
    assert list(c.results()) == ["deep"] and c.results()["deep"][0] == "crash"
    c.send(new_job("deep", environment="nowhere"))  # a valid job with that id: accepted, unanswered
    sink.message_rejected(c.backend_peer, info.value, payload)  # its id is taken now: no second answer
    world.pump()
    assert len(c.of_type(BackendJobDone)) == 1 and world.backend.waiting_count == 1


def test_packed_size_is_the_msgpack_length():
    import msgpack
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from inginious_tx.backend.sizes import packed_size

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=False)
        | st.text()
        | st.binary()
        | st.sampled_from(["x" * 31, "x" * 32, "x" * 255, "x" * 256, "é" * 40000, b"b" * 255, b"b" * 65536])
    )
    values = st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(), inner, max_size=20)
    )

    @settings(max_examples=120, deadline=None)
    @given(values)
    def check(value: Any) -> None:
        assert packed_size(value) == len(msgpack.packb(value, use_bin_type=True))

    check()
    assert packed_size(list(range(70_000))) == len(msgpack.packb(list(range(70_000))))


# -- policies' incremental ordered() ------------------------------------------------------------


class _RandomJob:
    """A waiting job for the policy tests, its environment, priority, course and limit drawn from ``rnd``."""

    def __init__(self, i: int, rnd: Any, random_retries: bool = False) -> None:
        self.key = ("c", str(i))
        self.environment = ("docker", f"e{rnd.randrange(3)}")
        self.priority = rnd.randrange(3)
        self.course_id = f"course{rnd.randrange(4)}"
        self.time_limit = rnd.choice((0, 10, 60))
        self.submitted_at = i * 0.5
        self.sequence = i
        self.retries = rnd.choice((0, 0, 0, 1)) if random_retries else 0


@pytest.mark.parametrize("name", ["priority", "fair", "shortest-first"])
def test_incremental_ordered_matches_a_full_sort(name):
    """ordered() keeps sorted runs between calls; it must equal the order a full sort gives."""
    import random

    from inginious_tx.backend.policies import load_policy

    def J(i: int, rnd: random.Random) -> _RandomJob:
        return _RandomJob(i, rnd, random_retries=True)

    rnd = random.Random(7)
    policy = load_policy(name)
    waiting: dict = {}
    for step in range(3000):
        op = rnd.random()
        if op < 0.5 or not waiting:
            job = J(step, rnd)
            policy.add(job)
            waiting[job.key] = job
        elif op < 0.7:
            job = waiting.pop(rnd.choice(list(waiting)))
            policy.remove(job)
        elif op < 0.9:
            envs = {("docker", f"e{i}") for i in range(3) if rnd.random() < 0.6}
            job = policy.pop_next(envs)
            if job is not None:
                del waiting[job.key]
        if step % 97 == 0:
            got = policy.ordered()
            # the reference: every live heap entry, sorted by the policy's own comparison
            entries = [e for heap in policy._heaps.values() for e in heap if e[-1] is not None]
            entries.sort(key=lambda e: policy._compare(e[-1].environment, e))
            assert [j.key for j in got] == [e[-1].key for e in entries]
            assert {j.key for j in got} == set(waiting)


@pytest.mark.parametrize("name", ["priority", "fair", "shortest-first"])
def test_ordered_in_steps_while_the_queue_changes(name):
    """ordered_steps() (queue snapshots built in slices): the order when it began, less jobs gone since;
    and the policy's own order stays right afterwards."""
    import random

    from inginious_tx.backend.policies import load_policy

    J = _RandomJob

    def reference(policy: Any) -> List[Any]:
        entries = [e for heap in policy._heaps.values() for e in heap if e[-1] is not None]
        entries.sort(key=lambda e: policy._compare(e[-1].environment, e))
        return [e[-1] for e in entries]

    rnd = random.Random(11)
    policy = load_policy(name)
    waiting: dict = {}
    counter = iter(range(10**6))

    def mutate() -> None:
        op = rnd.random()
        if op < 0.5 or not waiting:
            job = J(next(counter), rnd)
            policy.add(job)
            waiting[job.key] = job
        elif op < 0.75:
            policy.remove(waiting.pop(rnd.choice(list(waiting))))
        else:
            job = policy.pop_next({("docker", f"e{i}") for i in range(3)})
            if job is not None:
                del waiting[job.key]

    for _ in range(300):
        mutate()
    for round_ in range(6):
        if round_ == 3:
            policy.ordered()  # a plain call in between, too
        expected = reference(policy)
        steps = policy.ordered_steps(chunk=7)
        try:
            while True:
                next(steps)
                for _ in range(rnd.randrange(3)):
                    mutate()
                if round_ == 4 and rnd.random() < 0.1:
                    assert [j.key for j in policy.ordered()] == [j.key for j in reference(policy)]
        except StopIteration as done:
            got = done.value
        # the order when the steps began, without jobs that had already left when their part was read
        keys = [j.key for j in got]
        position = {j.key: i for i, j in enumerate(expected)}
        assert all(k in position for k in keys) and keys == sorted(keys, key=position.__getitem__)
        assert {j.key for j in expected if j.key in waiting} <= set(keys)
        assert [j.key for j in policy.ordered()] == [j.key for j in reference(policy)]
