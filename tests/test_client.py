"""The client library against a scripted fake backend, with a Clock and MemoryTransport.

No real time passes and no socket is opened: the fake backend is a handler
behind a ``MemoryTransport`` listener, and every delivery happens on ``pump()``.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

import inginious_tx.client as client_api
from inginious_tx.agent.result import JobResult as AgentResult
from inginious_tx.client import (
    BackendUnavailable,
    Client,
    ClientJobResult,
    EnvironmentUnavailable,
    QueueSnapshot,
    RunningJob,
    WaitingJob,
)
from inginious_tx.dispatch import Dispatcher
from inginious_tx.interfaces import IAgentHandler, IBackendClientHandler, IClientHandler, IPeer
from inginious_tx.messages import (
    AgentHello,
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
    ClientNewJob,
    MessageError,
    Ping,
    Pong,
    Unknown,
)
from inginious_tx.testing import MemoryTransport

ENDPOINT = "mem:backend"


@implementer(IBackendClientHandler)
class FakeBackend:
    """A scriptable backend: records what clients send, answers what tests allow."""

    def __init__(self, environments: Tuple[str, ...] = ("default",)) -> None:
        self.environments = environments
        self.received: List[Tuple[IPeer, Any]] = []
        self.registered: set = set()
        self.peers: List[IPeer] = []
        self.answer_hello = True
        self.answer_pings = True

    def of_type(self, cls: type) -> List[Any]:
        return [m for _, m in self.received if isinstance(m, cls)]

    def last_peer(self) -> IPeer:
        return self.received[-1][0]

    def forget(self) -> None:
        """As a restarted backend would."""
        self.registered.clear()

    def peer_connected(self, peer: IPeer) -> None:
        self.peers.append(peer)

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        self.registered.discard(peer.address)

    def _known(self, peer: IPeer) -> bool:
        if peer.address not in self.registered:
            peer.send(Unknown())
            return False
        return True

    def client_hello(self, peer: IPeer, message: ClientHello) -> None:
        self.received.append((peer, message))
        if self.answer_hello:
            self.registered.add(peer.address)
            peer.send(BackendUpdateContainers(self.environments))

    def client_new_job(self, peer: IPeer, message: ClientNewJob) -> None:
        self.received.append((peer, message))
        self._known(peer)

    def client_kill_job(self, peer: IPeer, message: ClientKillJob) -> None:
        self.received.append((peer, message))
        self._known(peer)

    def client_get_queue(self, peer: IPeer, message: ClientGetQueue) -> None:
        self.received.append((peer, message))
        self._known(peer)

    def ping(self, peer: IPeer, message: Ping) -> None:
        self.received.append((peer, message))
        if self.answer_pings and self._known(peer):
            peer.send(Pong())


def done(job_id: str, rtype: str = "success", text: str = "well done", grade: float = 100.0) -> BackendJobDone:
    return BackendJobDone(
        job_id, (rtype, text), grade, {"q1": ("success", "ok")}, {"t": 1}, {"c": "x"}, "st", b"tgz", "out", "err"
    )


class Harness:
    """A client and a fake backend on one clock and one in-memory transport."""

    def __init__(self, endpoint: str = ENDPOINT, **options: Any) -> None:
        self.clock = Clock()
        self.mem = MemoryTransport()
        self.backend = FakeBackend()
        self.mem.listen(self.clock, ENDPOINT, Dispatcher(self.backend, IBackendClientHandler))
        options.setdefault("ping_interval", 1.0)
        options.setdefault("ping_misses", 3)
        options.setdefault("connect_timeout", 5.0)
        self.client = Client(self.clock, endpoint, "tester", transport=self.mem, **options)

    def start(self) -> Client:
        self.client.start()
        self.mem.pump()
        return self.client

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """Let time pass in small steps, delivering messages between them."""
        left = seconds
        while left > 1e-9:
            dt = min(step, left)
            self.clock.advance(dt)
            self.mem.pump()
            left -= dt

    def job(self, **kw: Any) -> Tuple[Any, List[Any]]:
        """Submit a job; returns its Deferred and the list its results land in."""
        results: List[Any] = []
        d = self.client.new_job("course", "task", {"q1": "42"}, **kw)
        d.addBoth(results.append)
        self.mem.pump()
        return d, results


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_client_provides_its_role_and_public_names_are_pinned(h: Harness) -> None:
    assert verifyObject(IClientHandler, h.client)
    assert set(client_api.__all__) == {
        "Client",
        "connect_client",
        "BackendUnavailable",
        "EnvironmentUnavailable",
        "ClientJobResult",
        "QueueSnapshot",
        "RunningJob",
        "WaitingJob",
        "UNAVAILABLE",
    }


def test_hello_first_then_environments_known(h: Harness) -> None:
    ready: List[Any] = []
    h.client.wait_until_ready().addCallback(ready.append)
    h.start()
    assert [type(m) for _, m in h.backend.received] == [ClientHello]
    assert h.backend.of_type(ClientHello)[0].name == "tester"
    assert h.client.connected
    assert h.client.environments == ("default",)
    assert ready == [("default",)]


def test_job_result_fires_exactly_once_with_every_field(h: Harness) -> None:
    h.start()
    d, results = h.job(job_id="j1", time_limit=7, mem_limit=64, priority=3, launcher="test")
    sent = h.backend.of_type(ClientNewJob)
    assert len(sent) == 1
    assert (sent[0].job_id, sent[0].time_limit, sent[0].mem_limit, sent[0].priority, sent[0].launcher) == (
        "j1",
        7,
        64,
        3,
        "test",
    )
    assert results == []
    peer = h.backend.last_peer()
    peer.send(done("j1"))
    peer.send(done("j1", "failed", "again?", 0.0))
    h.mem.pump()
    assert results == [
        ClientJobResult(
            job_id="j1",
            result="success",
            text="well done",
            grade=100.0,
            problems={"q1": ("success", "ok")},
            tests={"t": 1},
            custom={"c": "x"},
            state="st",
            archive=b"tgz",
            stdout="out",
            stderr="err",
        )
    ]
    assert results[0].succeeded and not results[0].local
    assert h.client.pending == ()


def test_job_waits_for_the_backend_to_answer_hello_before_it_is_sent(h: Harness) -> None:
    h.backend.answer_hello = False
    h.start()
    d, results = h.job(job_id="held")
    assert h.backend.of_type(ClientNewJob) == []
    assert not h.client.connected
    # The backend now answers (e.g. it finished starting up).
    h.backend.last_peer().send(BackendUpdateContainers(("default",)))
    h.backend.registered.add(h.backend.last_peer().address)
    h.mem.pump()
    assert [m.job_id for m in h.backend.of_type(ClientNewJob)] == ["held"]
    # The connect timer was cancelled: time passing does not crash it.
    h.advance(10)
    assert results == []


def test_on_started_and_ssh_debug_callbacks(h: Harness) -> None:
    h.start()
    started: List[str] = []
    ssh: List[Tuple[Any, ...]] = []
    d, results = h.job(job_id="s1", debug="ssh", on_started=started.append, on_ssh_debug=lambda *a: ssh.append(a))
    peer = h.backend.last_peer()
    peer.send(BackendJobStarted("s1"))
    peer.send(BackendJobStarted("nobody"))
    peer.send(BackendJobSSHDebug("s1", "10.0.0.1", 2222, "pw"))
    h.mem.pump()
    assert started == ["s1"]
    assert ssh == [("s1", "10.0.0.1", 2222, "pw")]
    assert results == []


def test_a_raising_callback_does_not_lose_the_result(h: Harness) -> None:
    h.start()

    def boom(job_id: str) -> None:
        raise RuntimeError("application bug")

    d, results = h.job(job_id="b1", on_started=boom)
    peer = h.backend.last_peer()
    peer.send(BackendJobStarted("b1"))
    peer.send(done("b1"))
    h.mem.pump()
    assert [r.result for r in results] == ["success"]


def test_stream_loss_crashes_sent_jobs_and_hello_again_on_new_connection(h: Harness) -> None:
    h.start()
    d, results = h.job(job_id="lost")
    first = h.backend.last_peer()
    first.disconnect("backend went down")
    h.mem.pump(limit=2)  # both ends hear of the loss, nothing more yet
    assert len(results) == 1
    r = results[0]
    assert (r.result, r.local, r.backend_unavailable) == ("crash", True, True)
    assert r.text.startswith("backend unavailable")
    assert not h.client.connected and h.client.environments == ()
    # The transport links again by itself, as the real ones do: the client says hello on the new link.
    h.mem.pump()
    hellos = [(p.address, m) for p, m in h.backend.received if isinstance(m, ClientHello)]
    assert len(hellos) == 2 and hellos[0][0] != hellos[1][0]
    assert h.client.connected
    # A late result for the crashed job, on the new link, is ignored.
    h.backend.last_peer().send(done("lost"))
    h.mem.pump()
    assert len(results) == 1 and results[0].result == "crash"


def test_result_on_a_stale_link_is_ignored(h: Harness) -> None:
    h.start()
    old = h.backend.last_peer()
    h.client._connection.reconnect()
    h.mem.pump()
    d, results = h.job(job_id="x")
    old.send(done("x"))  # dropped by the transport or ignored by the client
    h.mem.pump()
    assert results == []
    h.backend.last_peer().send(done("x", "failed", "no", 0.0))
    h.mem.pump()
    assert [r.result for r in results] == ["failed"]


def test_unknown_makes_the_client_say_hello_again(h: Harness) -> None:
    h.start()
    d, results = h.job(job_id="forgotten")
    h.backend.forget()  # the backend restarted behind the same address
    h.advance(1.0)  # next ping -> Unknown -> hello
    hellos = h.backend.of_type(ClientHello)
    assert len(hellos) == 2
    peers = {p.address for p, m in h.backend.received if isinstance(m, ClientHello)}
    assert len(peers) == 1  # same link, no reconnection
    assert [r.result for r in results] == ["crash"]
    assert results[0].text.startswith("backend unavailable")
    assert h.client.connected
    # Jobs go through again afterwards.
    d2, results2 = h.job(job_id="after")
    assert [m.job_id for m in h.backend.of_type(ClientNewJob)] == ["forgotten", "after"]


def test_unknown_before_hello_answered_only_says_hello_again(h: Harness) -> None:
    h.backend.answer_hello = False
    h.start()
    d, results = h.job(job_id="waiting")
    h.backend.answer_hello = True
    h.advance(1.0)  # ping -> Unknown -> hello -> containers -> job sent
    assert len(h.backend.of_type(ClientHello)) == 2
    assert [m.job_id for m in h.backend.of_type(ClientNewJob)] == ["waiting"]
    assert results == []


def test_heartbeat_pings_and_a_silent_backend_is_lost(h: Harness) -> None:
    h.start()
    d, results = h.job(job_id="silent")
    h.advance(2.0)
    assert len(h.backend.of_type(Ping)) == 2
    assert results == [] and h.client.connected
    h.backend.answer_pings = False
    first = h.backend.last_peer().address
    h.advance(4.0)
    assert [r.result for r in results] == ["crash"]
    assert "backend unavailable" in results[0].text and "no answer" in results[0].text
    # The client remade the link and said hello on it.
    hello_peers = [p.address for p, m in h.backend.received if isinstance(m, ClientHello)]
    assert len(hello_peers) == 2 and hello_peers[-1] != first


def test_unreachable_at_start_crashes_after_the_connect_timeout() -> None:
    h = Harness(endpoint="mem:nowhere", connect_timeout=5.0)
    h.start()
    d, results = h.job(job_id="u1")
    queue: List[Any] = []
    h.client.get_queue().addErrback(queue.append)
    ready: List[Any] = []
    h.client.wait_until_ready(timeout=3.0).addErrback(ready.append)
    h.advance(3.0)
    assert ready[0].check(BackendUnavailable) and "backend unreachable at mem:nowhere" in str(ready[0].value)
    h.advance(1.9)
    assert results == [] and queue == []
    h.advance(0.2)
    assert len(results) == 1
    assert results[0].result == "crash" and results[0].backend_unavailable
    assert "mem:nowhere" in results[0].text and "5 s" in results[0].text
    assert queue[0].check(BackendUnavailable)
    assert h.client.pending == ()


def test_kill_job_sent_and_held(h: Harness) -> None:
    h.start()
    d, results = h.job(job_id="k1")
    assert h.client.kill_job("k1") is True
    h.mem.pump()
    assert [m.job_id for m in h.backend.of_type(ClientKillJob)] == ["k1"]
    assert results == []  # the backend's answer decides
    h.backend.last_peer().send(done("k1", "killed", "killed by the client", 0.0))
    h.mem.pump()
    assert [(r.result, r.local) for r in results] == [("killed", False)]
    assert h.client.kill_job("k1") is False
    assert h.client.kill_job("never") is False


def test_kill_job_not_yet_sent_is_answered_locally() -> None:
    h = Harness(endpoint="mem:nowhere")
    h.start()
    d, results = h.job(job_id="k2")
    assert h.client.kill_job("k2") is True
    assert [(r.result, r.local) for r in results] == [("killed", True)]
    h.advance(10)  # the connect timer was cancelled
    assert len(results) == 1


def test_cancelling_the_deferred_kills_and_forgets_the_job(h: Harness) -> None:
    h.start()
    d, results = h.job(job_id="c1")
    d.cancel()
    h.mem.pump()
    assert isinstance(results[0], Failure) and results[0].check(CancelledError)
    assert [m.job_id for m in h.backend.of_type(ClientKillJob)] == ["c1"]
    h.backend.last_peer().send(done("c1", "killed", "", 0.0))
    h.mem.pump()
    assert len(results) == 1


def test_get_queue_snapshots_in_order(h: Harness) -> None:
    h.start()
    got: List[Any] = []
    h.client.get_queue().addCallback(got.append)
    h.client.get_queue().addCallback(got.append)
    h.mem.pump()
    assert len(h.backend.of_type(ClientGetQueue)) == 2
    peer = h.backend.last_peer()
    peer.send(
        BackendGetQueue(
            [("r1", True, "agent-1", "c/t", "cli", 1000, 1030)],
            [("w1", False, "c/t2", "web", 20), ("w2", True, "c/t", "cli", 30)],
        )
    )
    peer.send(BackendGetQueue([], []))
    h.mem.pump()
    assert got == [
        QueueSnapshot(
            running=(RunningJob("r1", True, "agent-1", "c/t", "cli", 1000, 1030),),
            waiting=(WaitingJob("w1", False, "c/t2", "web", 20), WaitingJob("w2", True, "c/t", "cli", 30)),
        ),
        QueueSnapshot(),
    ]


def test_get_queue_fails_cleanly_when_the_backend_is_lost(h: Harness) -> None:
    h.start()
    errors: List[Failure] = []
    h.client.get_queue().addErrback(errors.append)
    h.mem.pump()
    h.backend.last_peer().disconnect("gone")
    h.mem.pump()
    assert len(errors) == 1 and errors[0].check(BackendUnavailable)
    assert "backend unavailable" in str(errors[0].value)


def test_wait_for_environment(h: Harness) -> None:
    h.start()
    got: List[Any] = []
    h.client.wait_for_environment("python3").addBoth(got.append)
    h.mem.pump()
    assert got == []
    h.backend.last_peer().send(BackendUpdateContainers(("default", "python3")))
    h.mem.pump()
    assert got == [("default", "python3")]
    missing: List[Failure] = []
    h.client.wait_for_environment("java", timeout=2).addErrback(missing.append)
    h.advance(2.0)
    assert missing[0].check(EnvironmentUnavailable)
    assert str(missing[0].value) == "environment java is not offered by any agent; available: default, python3"


def test_stop_answers_every_pending_job_once(h: Harness) -> None:
    h.start()
    d, results = h.job(job_id="p1")
    waits: List[Failure] = []
    h.client.wait_for_environment("nope").addErrback(waits.append)
    stopped: List[Any] = []
    h.client.stop().addCallback(stopped.append)
    h.mem.pump()
    assert stopped == [None]
    assert [(r.result, r.local) for r in results] == [("crash", True)]
    assert "client stopped" in results[0].text
    assert waits[0].check(BackendUnavailable)
    pings = len(h.backend.of_type(Ping))
    h.advance(5)
    assert len(h.backend.of_type(Ping)) == pings  # heartbeat stopped
    with pytest.raises(RuntimeError):
        h.client.new_job("c", "t", {})


def test_bad_submissions_raise_at_once(h: Harness) -> None:
    h.start()
    h.job(job_id="dup")
    with pytest.raises(ValueError, match="already pending"):
        h.client.new_job("c", "t", {}, job_id="dup")
    with pytest.raises(MessageError, match="time_limit"):
        h.client.new_job("c", "t", {}, time_limit="30")  # type: ignore[arg-type]
    assert h.client.pending == ("dup",)


def test_generated_job_ids_are_unique(h: Harness) -> None:
    h.start()
    h.job()
    h.job()
    ids = [m.job_id for m in h.backend.of_type(ClientNewJob)]
    assert len(ids) == 2 and len(set(ids)) == 2


def test_client_as_a_service(h: Harness) -> None:
    h.client.startService()
    h.mem.pump()
    assert h.client.running and h.client.connected
    d = h.client.stopService()
    results: List[Any] = []
    d.addCallback(results.append)
    h.mem.pump()  # the stop is done once the link's last words are delivered
    assert results == [None] and not h.client.running


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError):
        Client(Clock(), ENDPOINT, ping_interval=0)


# -- against the real backend core (agent played by a small fake) ---------------------


@implementer(IAgentHandler)
class ScriptedAgent:
    """An agent that answers each job from its input: ``{"result": type}``, or never for ``hang``."""

    def __init__(self, environments: Tuple[str, ...] = ("default",)) -> None:
        self.environments = environments
        self.peer: Any = None
        self.jobs: List[Any] = []

    def peer_connected(self, peer: IPeer) -> None:
        self.peer = peer
        containers = {env: {"id": "sha256:0", "created": 0, "ports": []} for env in self.environments}
        peer.send(AgentHello("scripted", 2, containers))

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        self.peer = None

    def backend_new_job(self, peer: IPeer, message: BackendNewJob) -> None:
        self.jobs.append(message)
        if "hang" in message.inputdata:
            return
        peer.send(AgentJobStarted(message.job_id))
        rtype = message.inputdata.get("result", "success")
        peer.send(AgentResult(rtype, f"graded {message.task_id}").to_message(message.job_id))

    def backend_kill_job(self, peer: IPeer, message: BackendKillJob) -> None:
        peer.send(AgentResult.killed().to_message(message.job_id))

    def ping(self, peer: IPeer, message: Ping) -> None:
        peer.send(Pong())


def test_against_the_real_backend_core() -> None:
    from inginious_tx.backend.core import Backend
    from inginious_tx.backend.policies import PriorityPolicy

    clock = Clock()
    mem = MemoryTransport()
    backend = Backend(clock, PriorityPolicy())
    mem.listen(clock, "mem:clients", backend.client_sink())
    mem.listen(clock, "mem:agents", backend.agent_sink())
    backend.start()
    agent = ScriptedAgent()
    agent_link = mem.connect(clock, "mem:agents", Dispatcher(agent, IAgentHandler))
    client = Client(clock, "mem:clients", "core-test", transport=mem, ping_interval=1.0, connect_timeout=5.0).start()
    mem.pump()
    assert client.environments == ("default",)

    started: List[str] = []
    results: List[Any] = []
    client.new_job("c", "t1", {"result": "failed"}, job_id="a", on_started=started.append).addCallback(results.append)
    mem.pump()
    assert started == ["a"] and [(r.job_id, r.result, r.text) for r in results] == [("a", "failed", "graded t1")]

    # A job for an environment nobody offers waits; a running one hangs.
    client.new_job("c", "t2", {}, "nowhere", job_id="w").addCallback(results.append)
    client.new_job("c", "t3", {"hang": "1"}, job_id="r").addCallback(results.append)
    snapshots: List[Any] = []
    client.get_queue().addCallback(snapshots.append)
    mem.pump()
    [snapshot] = snapshots
    assert [(j.job_id, j.is_mine, j.agent_name, j.task) for j in snapshot.running] == [("r", True, "scripted", "c/t3")]
    assert [(j.job_id, j.task) for j in snapshot.waiting] == [("w", "c/t2")]

    # Killing: the waiting job at once by the backend, the running one through its agent.
    client.kill_job("w")
    client.kill_job("r")
    mem.pump()
    assert [(r.job_id, r.result, r.local) for r in results[1:]] == [("w", "killed", False), ("r", "killed", False)]

    # The heartbeat keeps both sides content over time.
    for _ in range(20):
        clock.advance(0.5)
        mem.pump()
    assert client.connected and client.environments == ("default",)

    # The agent leaves: the environment disappears from the client's list.
    agent_link.stop()
    mem.pump()
    assert client.environments == ()
    client.stop()
    backend.shutdown()


def test_a_stopped_client_starts_again_as_a_service_does(h: Harness) -> None:
    # IService: stopService then startService runs the service again.
    h.client.startService()
    h.mem.pump()
    first = h.backend.last_peer()
    h.client.stopService()
    h.mem.pump()
    assert not h.client.connected
    h.client.startService()
    h.mem.pump()
    assert h.client.connected and h.client.running
    assert len(h.backend.of_type(ClientHello)) == 2 and h.backend.last_peer() is not first
    d, results = h.job(job_id="again")
    h.backend.last_peer().send(done("again"))
    h.mem.pump()
    assert [r.result for r in results] == ["success"]
    pings = len(h.backend.of_type(Ping))
    h.advance(1.1)
    assert len(h.backend.of_type(Ping)) == pings + 1  # one heartbeat, not two
