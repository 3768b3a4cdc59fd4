"""Hostile peers against the transports, over real sockets and processes.

Part of the hostile-peer suite of issue 10: what a peer that does not play
by the rules (copies another's ZeroMQ routing id, never says hello, sends
huge frame headers, never reads) can make the backend do or hold.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from typing import Any, List, Optional, Tuple

import msgpack
import pytest
import pytest_twisted
import zmq
import zmq.auth
from faults_support import Endpoints, Lab, closed_by_peer, frame, free_port, raw_tcp, read_frames
from subprocess_env import child_env
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from inginious_tx.agent.core import Agent
from inginious_tx.agent.mock import MockBackend
from inginious_tx.agent.result import AgentConfig
from inginious_tx.backend.service import BackendService
from inginious_tx.backend.testing import agent_hello, new_job
from inginious_tx.embedded import InProcessTransport
from inginious_tx.interfaces import IPeer
from inginious_tx.messages import (
    AgentJobDone,
    BackendGetQueue,
    BackendJobDone,
    BackendJobStarted,
    BackendNewJob,
    ClientGetQueue,
    ClientHello,
    ClientKillJob,
    MessageMeta,
    Ping,
    Unknown,
)
from inginious_tx.testing import MemoryTransport, RecordingSink
from inginious_tx.transport import Limits
from inginious_tx.transport.zmq import ZmqTransport

# ---------------------------------------------------------------------------
# Contract 1: IPeer.accepted()
# ---------------------------------------------------------------------------


def test_every_in_process_peer_provides_accepted() -> None:
    """The fakes and the in-process link implement the whole IPeer, accepted() included."""
    memory = MemoryTransport()
    server, client = RecordingSink(), RecordingSink()
    memory.listen(None, "mem:x", server)
    conn = memory.connect(None, "mem:x", client)
    memory.pump()
    (peer,) = server.connected
    for p in (peer, conn.peer):
        assert verifyObject(IPeer, p)
        assert not p.hello_accepted
        p.accepted()
        p.accepted()  # idempotent
        assert p.hello_accepted


def test_the_embedded_link_provides_accepted() -> None:
    clock = Clock()
    backend_side, agent_side = RecordingSink(), RecordingSink()
    conn = InProcessTransport(clock, backend_side).connect(clock, "in-process:agent", agent_side)
    clock.advance(0)
    (peer,) = backend_side.connected
    for p in (peer, conn.peer):
        assert verifyObject(IPeer, p)
        p.accepted()
        p.accepted()


def test_default_limits_bound_strangers() -> None:
    limits = Limits()
    assert limits.max_hello_frame == 64 * 1024
    assert limits.hello_timeout == 10.0
    assert limits.max_pending * limits.max_hello_frame <= 16 * 1024 * 1024


def test_client_endpoints_take_frames_no_larger_than_the_largest_job() -> None:
    from inginious_tx.backend.tap import Options

    options = Options()
    options.parseOptions([])
    limits = options["limits"]
    clients = limits.for_clients()
    assert clients.max_frame == 16 * MiB + MiB < limits.max_frame == 64 * MiB
    assert clients.max_send_buffer == limits.max_send_buffer  # results to clients may still be large
    # The ZeroMQ worst case before hello, on a client endpoint: 136 MiB with the defaults.
    assert limits.zmq_max_pending * clients.max_frame == 136 * MiB
    assert limits.max_partial_bytes == 256 * MiB
    options = Options()
    options.parseOptions(["--max-inputdata", "none"])
    assert options["limits"].for_clients() == options["limits"]


# ---------------------------------------------------------------------------
# Finding 1: ZeroMQ session hijack with a copied routing id (plain and CurveZMQ)
# ---------------------------------------------------------------------------


class Keys:
    """A server key pair and three peers: alice and mallory (both allowed clients), agent1 (the agent)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        for name in ("server", "alice", "mallory", "agent1"):
            zmq.auth.create_certificates(folder, name)
        for allowed, who in (("clients", ("alice", "mallory")), ("agents", ("agent1",))):
            os.makedirs(f"{folder}/{allowed}")
            for w in who:
                shutil.copy(f"{folder}/{w}.key", f"{folder}/{allowed}/{w}.key")

    def listen(self, allowed: str) -> str:
        f = self.folder
        return f"zmq:tcp://127.0.0.1:*?curve-secret={f}/server.key_secret&curve-allowed={f}/{allowed}"

    def connect(self, listener: Any, who: str) -> str:
        f = self.folder
        return f"{listener.connect_endpoint}?curve-secret={f}/{who}.key_secret&curve-server={f}/server.key"

    def secure(self, socket: zmq.Socket, who: str) -> None:
        public, secret = zmq.auth.load_certificate(f"{self.folder}/{who}.key_secret")
        socket.curve_publickey, socket.curve_secretkey = public, secret
        socket.curve_serverkey = zmq.auth.load_certificate(f"{self.folder}/server.key")[0]


class RawPeer:
    """A plain pyzmq DEALER (nothing of ours in the way) that may copy someone's routing id."""

    def __init__(
        self,
        context: zmq.Context,
        listener: Any,
        routing_id: Optional[bytes] = None,
        keys: Optional[Keys] = None,
        who: str = "",
    ) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.linger = 0
        if routing_id is not None:
            self.socket.setsockopt(zmq.ROUTING_ID, routing_id)
        if keys is not None:
            keys.secure(self.socket, who)
        self.socket.connect(listener.connect_endpoint[len("zmq:") :])
        self.got: List[Any] = []

    def send(self, *messages: Any) -> None:
        for m in messages:
            self.socket.send(m.dump())

    def poll(self) -> List[Any]:
        """Everything received so far (read without blocking)."""
        while True:
            try:
                self.got.append(MessageMeta.load(self.socket.recv(zmq.NOBLOCK)))
            except zmq.Again:
                return self.got

    def about(self, job_id: str) -> List[Any]:
        return [m for m in self.poll() if getattr(m, "job_id", None) == job_id]

    def close(self) -> None:
        self.socket.close(linger=0)


@pytest.fixture
def raw_context() -> Any:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


async def backend_and_agent(closers: list, until: Any, within: Any, keys: Optional[Keys]) -> Any:
    """A real backend (in this process, on the real reactor) listening on ZeroMQ, and one mock agent."""
    from twisted.internet import reactor

    plain = "zmq:tcp://127.0.0.1:*"
    service = BackendService(
        reactor,
        [keys.listen("clients") if keys else plain],
        [keys.listen("agents") if keys else plain],
        shutdown_grace=0,
    )
    service.startService()
    closers.append(service.stopService)
    clients, agents = await within(service.ready)
    endpoint = keys.connect(agents, "agent1") if keys else agents.connect_endpoint
    agent = Agent(reactor, MockBackend(reactor, AgentConfig()), "agent1", 2, endpoint)
    agent.startService()
    closers.append(agent.stopService)
    await until(lambda: [a.name for a in service.backend.agents] == ["agent1"], what="the agent to register")
    return service, clients, agents


@pytest.mark.parametrize("secured", [False, True], ids=["plain", "curve"])
@pytest_twisted.ensureDeferred
async def test_a_copied_client_routing_id_takes_nothing_over(
    secured: bool, short_tmp: str, raw_context: Any, closers: list, until: Any, within: Any
) -> None:
    """Mallory connects with alice's routing id while alice waits for a result: she
    cannot kill alice's job, see it, or receive its result; alice gets her result.

    On main (ROUTER_HANDOVER on, sessions keyed by routing id): mallory's
    kill went through and alice's result went to mallory."""
    keys = Keys(short_tmp) if secured else None
    service, clients, _ = await backend_and_agent(closers, until, within, keys)
    alice = RawPeer(raw_context, clients, b"alice-session", keys, "alice")
    alice.send(ClientHello("alice"), new_job("alice-job", inputdata={"@mock_delay": 1.0}))
    await until(
        lambda: any(type(m) is BackendJobStarted for m in alice.about("alice-job")), what="alice's job to start"
    )

    mallory = RawPeer(raw_context, clients, b"alice-session", keys, "mallory")
    mallory.send(ClientHello("alice"), ClientKillJob("alice-job"), ClientGetQueue(), ClientHello("alice"))
    mallory.send(ClientKillJob("alice-job"), ClientGetQueue())

    await until(lambda: any(type(m) is BackendJobDone for m in alice.about("alice-job")), what="alice's result")
    [done] = [m for m in alice.about("alice-job") if type(m) is BackendJobDone]
    assert done.result == ("success", "") and done.grade == 100.0  # not killed
    # Whatever mallory got (an Unknown, her own queue view), nothing is about alice's job as hers.
    assert mallory.about("alice-job") == []
    for queue in (m for m in mallory.poll() if type(m) is BackendGetQueue):
        assert not any(mine for _, mine, *rest in queue.jobs_running), queue
    # alice's session is intact: she still talks to the backend as herself.
    alice.send(new_job("alice-job-2"))
    await until(lambda: any(type(m) is BackendJobDone for m in alice.about("alice-job-2")), what="alice's second job")
    assert mallory.about("alice-job-2") == []


@pytest.mark.parametrize("secured", [False, True], ids=["plain", "curve"])
@pytest_twisted.ensureDeferred
async def test_a_routing_id_reused_after_its_peer_left_is_a_new_session(
    secured: bool, short_tmp: str, raw_context: Any, closers: list, until: Any, within: Any
) -> None:
    """Alice leaves with a job running; mallory reconnects with alice's routing id and talks
    at once: she is a stranger (Unknown), alice's session is over (her job is killed), and
    mallory gets nothing of alice's.  On main mallory simply continued alice's session."""
    keys = Keys(short_tmp) if secured else None
    service, clients, _ = await backend_and_agent(closers, until, within, keys)
    alice = RawPeer(raw_context, clients, b"alice-session", keys, "alice")
    alice.send(ClientHello("alice"), new_job("alice-job", inputdata={"@mock_delay": 1.0}))
    await until(
        lambda: any(type(m) is BackendJobStarted for m in alice.about("alice-job")), what="alice's job to start"
    )
    alice.close()

    tries: List[RawPeer] = []
    started = [0.0]

    def mallory_took_the_id() -> bool:
        # libzmq ignores a duplicate routing id until the old connection is gone:
        # retry (a new connection every 200 ms) until it is.
        if tries and tries[-1].poll():
            return True
        if tries and time.monotonic() - started[0] < 0.2:
            return False
        if tries:
            tries[-1].close()
        tries.append(RawPeer(raw_context, clients, b"alice-session", keys, "mallory"))
        tries[-1].send(ClientGetQueue())
        started[0] = time.monotonic()
        return False

    await until(mallory_took_the_id, what="mallory to be heard with alice's routing id")
    mallory = tries[-1]
    assert [type(m) for m in mallory.poll()] == [Unknown]  # a stranger: must say hello first
    mallory.send(ClientKillJob("alice-job"), ClientGetQueue())
    await until(lambda: len(mallory.poll()) >= 3, what="mallory's next answers")
    assert {type(m) for m in mallory.poll()} == {Unknown}
    # alice's session ended with her connection: no client is registered, her job is gone from the agent.
    await until(lambda: not service.backend.clients and not service.backend.agents[0].running)
    assert mallory.about("alice-job") == []


@pytest.mark.parametrize("secured", [False, True], ids=["plain", "curve"])
@pytest_twisted.ensureDeferred
async def test_a_silent_impostor_on_a_departed_clients_routing_id_receives_nothing(
    secured: bool, short_tmp: str, raw_context: Any, closers: list, until: Any, within: Any
) -> None:
    """Alice leaves with a job running; once her connection is gone, mallory (another allowed
    key with CurveZMQ) connects with alice's routing id and says nothing.  Alice's session ends
    when her connection closes (the socket monitor), so her result goes to no one.  On main the
    session lived on until a send failed, and alice's result was sent to mallory."""
    keys = Keys(short_tmp) if secured else None
    service, clients, _ = await backend_and_agent(closers, until, within, keys)
    alice = RawPeer(raw_context, clients, b"alice-session", keys, "alice")
    alice.send(ClientHello("alice"), new_job("alice-job", inputdata={"@mock_delay": 1.0}))
    await until(
        lambda: any(type(m) is BackendJobStarted for m in alice.about("alice-job")), what="alice's job to start"
    )
    alice.close()
    await until(lambda: clients.connections == 0, what="alice's connection to close")
    mallory = RawPeer(raw_context, clients, b"alice-session", keys, "mallory")
    closers.append(mallory.close)
    await until(lambda: clients.connections == 1, what="mallory to connect")
    # Her session is over: no client registered, her job killed (not run to its end).
    await until(lambda: not service.backend.clients and not service.backend.agents[0].running)
    assert not mallory.socket.poll(500), f"mallory received {mallory.poll()}"


@pytest.mark.parametrize("secured", [False, True], ids=["plain", "curve"])
@pytest_twisted.ensureDeferred
async def test_an_impostor_with_an_agents_routing_id_cannot_answer_its_jobs(
    secured: bool, short_tmp: str, raw_context: Any, closers: list, until: Any, within: Any
) -> None:
    """Eve copies the agent's routing id (she is given the real one, the best case for her)
    and answers its running job with grade 100: the client gets the agent's own answer."""
    keys = Keys(short_tmp) if secured else None
    service, clients, agents = await backend_and_agent(closers, until, within, keys)
    [agent] = service.backend.agents
    [agent_id] = [r for r, p in agents.peers.items() if p is agent.peer]
    # What the status page shows of an agent is no routing id.
    assert agent_id.hex() not in agent.peer.description and agent_id not in agent.peer.address

    alice = RawPeer(raw_context, clients, None, keys, "alice")
    alice.send(ClientHello("alice"), new_job("alice-job", inputdata={"@mock_delay": 1.0, "@mock_grade": 50}))
    await until(lambda: any(type(m) is BackendJobStarted for m in alice.about("alice-job")), what="the job to start")
    [job_key] = list(agent.running)
    eve = RawPeer(raw_context, agents, agent_id, keys, "agent1" if secured else "")
    forged = AgentJobDone(job_key, ("success", "hacked"), 100.0, {}, {}, {}, "", None, "", "")
    eve.send(forged, agent_hello("agent1", 8, ["default"]), forged)

    await until(lambda: any(type(m) is BackendJobDone for m in alice.about("alice-job")), what="alice's result")
    [done] = [m for m in alice.about("alice-job") if type(m) is BackendJobDone]
    assert done.grade == 50.0 and done.result[1] != "hacked"
    assert not any(type(m) is BackendNewJob for m in eve.poll())


FIRST_ID = """
import zmq
from twisted.internet import reactor, task
from inginious_tx.messages import Ping
from inginious_tx.testing import RecordingSink
from inginious_tx.transport import Limits
from inginious_tx.transport.zmq import ZmqTransport

async def main(reactor):
    sink = RecordingSink()
    listener = await ZmqTransport().listen(reactor, "zmq:tcp://127.0.0.1:*", sink, Limits())
    dealer = zmq.Context().socket(zmq.DEALER)
    dealer.connect(listener.connect_endpoint[4:])
    dealer.send(Ping().dump())
    for _ in range(500):
        if listener.peers or sink.messages:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    print(list(listener.peers)[0].hex())

task.react(lambda r: __import__("twisted.internet.defer").internet.defer.ensureDeferred(main(r)))
"""


def test_the_first_assigned_routing_id_of_a_fresh_backend_is_not_predictable() -> None:
    """ZeroMQ gives a peer without its own routing id (every INGInious 0.6 peer) 0 + a counter
    started from an unseeded rand(): on main every fresh backend's first peer was 006b8b4567."""
    ids = [
        subprocess.run(
            [sys.executable, "-c", FIRST_ID], env=child_env(), capture_output=True, text=True, timeout=60, check=True
        ).stdout.strip()
        for _ in range(3)
    ]
    assert all(len(i) == 10 and i.startswith("00") for i in ids), ids
    assert len(set(ids)) == 3 and "006b8b4567" not in ids, ids


# ---------------------------------------------------------------------------
# Finding 5: stream connections that never say hello
# ---------------------------------------------------------------------------

MiB = 1 << 20


def test_never_hello_stream_connections_cost_little_and_are_closed() -> None:
    """A real ``twistd inginious-backend`` (64 MiB frames allowed): 30 connections that each
    announce a 60 MiB frame and send 4 MiB of it are closed at once and its peak memory stays
    near its baseline; connections that say nothing are closed after ``--hello-timeout``; one
    beyond ``--max-pending`` is closed at once; an honest client is served all along.

    On main each of the 30 was buffered (about 120 MB more at the peak) and kept open, idle
    ones were never closed, and there was no cap."""
    with Lab() as lab:
        clients, agents = lab.endpoints("clients", ("tcp",)), lab.endpoints("agents", ("tcp",))
        backend = lab.backend(
            clients, agents, "--max-frame", str(64 * MiB), "--hello-timeout", "2", "--max-pending", "30"
        )
        endpoint = clients.connect["tcp"]
        lab.agent("a1", agents.connect["tcp"])
        lab.wait(lab.registered(backend, "a1"), 30, "the agent to register")
        honest = lab.client("honest", endpoint)
        lab.wait(honest.ready(), 30, "the honest client's hello to be answered")
        baseline = backend.memory()["VmHWM"]

        # 30 connections, each a 60 MiB frame header and 4 MiB of its payload.
        flood = [raw_tcp(endpoint) for _ in range(30)]
        chunk = b"\0" * MiB
        for s in flood:
            try:
                s.sendall(struct.pack(">I", 60 * MiB))
                for _ in range(4):
                    s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed by the backend already: what we want
        assert all(closed_by_peer(s, 10) for s in flood)
        grown = backend.memory()["VmHWM"] - baseline
        assert grown < 24 * MiB, f"the backend's peak memory grew by {grown / MiB:.1f} MiB"
        assert backend.has("before an accepted hello exceeds the maximum of 65536 bytes")

        # 30 connections that say nothing fill --max-pending: the next one is closed at once.
        idle = [raw_tcp(endpoint) for _ in range(30)]
        started = time.monotonic()
        try:
            extra: Optional[socket.socket] = raw_tcp(endpoint)
        except ConnectionResetError:
            extra = None  # closed so soon that the reset came during connect(): refused at once too
        assert extra is None or closed_by_peer(extra, 5)
        # the idle ones are still open (unless a busy machine took us past their hello deadline)
        assert time.monotonic() - started > 1.8 or not closed_by_peer(idle[0], 0.1)
        # refused, not timed out at the hello deadline: the log says which, whatever the load
        lab.wait(lambda: backend.count("refused 1 connection(s)") > 0, 10, "the refusal to be logged")
        # ... and every idle one is closed once the hello deadline passes.
        assert all(closed_by_peer(s, 10) for s in idle)
        assert time.monotonic() - started >= 1.5
        assert backend.has("no accepted hello within 2 s")

        # The honest client, connected for longer than the deadline, is still served.
        [job] = honest.submit(["honest-1"])
        lab.wait(honest.answered([job]), 30, "the honest job's result")
        assert honest.results[job][0]["type"] == "success", honest.results[job]
        assert honest.ready_count == 1  # one hello: its connection was never cut
        for s in [*flood, *idle, *([extra] if extra else [])]:
            s.close()


# ---------------------------------------------------------------------------
# ZeroMQ strangers: large frames before hello, routing ids by the hundred
# ---------------------------------------------------------------------------


_zmq = ZmqTransport()


class HelloSink(RecordingSink):
    """Accepts a peer when it says ClientHello, as the backend core does."""

    def message_received(self, peer: IPeer, message: Any) -> None:
        if type(message) is ClientHello:
            peer.accepted()
        super().message_received(peer, message)


@pytest_twisted.ensureDeferred
async def test_zmq_frames_over_the_hello_limit_from_strangers_are_dropped(
    raw_context: Any, closers: list, until: Any, within: Any, log_events: Any
) -> None:
    from twisted.internet import reactor

    sink = HelloSink()
    listener = await _zmq.listen(reactor, "zmq:tcp://127.0.0.1:*", sink, Limits(max_hello_frame=64 * 1024))
    closers.append(listener.stop)
    big = new_job("big", inputdata={"blob": "x" * MiB})
    peer = RawPeer(raw_context, listener)
    peer.send(big, Ping())
    await until(lambda: sink.messages, what="the ping")
    assert [type(m) for _, m in sink.messages] == [Ping]  # the 1 MiB job was dropped
    assert log_events.has("dropped 1 message(s) over 65536 bytes from peers that have not said hello")
    peer.send(ClientHello("me"), big)
    await until(lambda: len(sink.messages) == 3, what="the job after hello")
    assert sink.messages[2][1] == big


@pytest_twisted.ensureDeferred
async def test_zmq_strangers_are_bounded(raw_context: Any, closers: list, until: Any, within: Any) -> None:
    """300 connections that never say hello: only zmq_max_pending are kept (the others are closed
    as soon as made), so the listener holds at most that many sessions (on main: all 300, forever)."""
    from twisted.internet import reactor

    sink = HelloSink()
    # no hello timeout within the test: a pending stranger closed by it frees a place for a refused
    # one that reconnects (on a loaded machine the test lasts longer than the default 10 s)
    limits = Limits(zmq_max_pending=50, hello_timeout=600)
    listener = await _zmq.listen(reactor, "zmq:tcp://127.0.0.1:*", sink, limits)
    closers.append(listener.stop)
    honest = RawPeer(raw_context, listener)
    honest.send(ClientHello("honest"))
    await until(lambda: sink.messages, what="the honest hello")
    dealers = []
    for i in range(300):
        dealer = RawPeer(raw_context, listener, b"stranger-%d" % i)
        dealer.send(Ping())
        dealers.append(dealer)
    # (Which strangers get in is a race: a refused one reconnects, and may lose its ping.)
    await until(lambda: len(sink.messages) > 1, timeout=20, what="pings of strangers let in")
    await until(lambda: listener.refused >= 250, timeout=20, what="the connections over the cap to be refused")
    assert len(sink.messages) <= 1 + 50
    assert len(listener.peers) <= 51 and sink.messages[0][0] in listener.peers.values()
    honest.send(Ping())
    await until(lambda: sink.messages[-1][0] is sink.messages[0][0], what="the honest peer to be heard again")
    for dealer in dealers:
        dealer.close()


@pytest_twisted.ensureDeferred
async def test_zmq_connections_beyond_the_cap_are_refused(
    raw_context: Any, closers: list, until: Any, within: Any, log_events: Any
) -> None:
    """A ROUTER accepts any number of connections by itself: the listener shuts down those
    beyond ``max_connections`` as soon as they are made (on main there was no cap)."""
    from twisted.internet import reactor

    sink = HelloSink()
    listener = await _zmq.listen(reactor, "zmq:tcp://127.0.0.1:*", sink, Limits(max_connections=5))
    closers.append(listener.stop)
    inside = [RawPeer(raw_context, listener) for _ in range(5)]
    for p in inside:
        p.send(Ping())
    await until(lambda: len(sink.messages) == 5, what="the first five")
    assert listener.connections == 5

    extra = RawPeer(raw_context, listener)
    monitor = extra.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    extra.send(Ping())
    await until(lambda: monitor.poll(0), what="the sixth connection to be closed")
    assert len(sink.messages) == 5 and listener.refused >= 1
    assert log_events.has("refused", "5 connections are open (limits.max_connections)")
    extra.socket.disable_monitor()
    monitor.close(linger=0)
    extra.close()

    inside[0].close()  # a place frees up
    await until(lambda: listener.connections <= 4, what="the closed connection to be counted out")
    later = RawPeer(raw_context, listener)
    later.send(Ping())
    await until(lambda: len(sink.messages) == 6, what="a new connection once there is room")


@pytest_twisted.ensureDeferred
async def test_a_zmq_peer_that_never_reads_is_cut_off_at_its_high_water_mark(
    raw_context: Any, closers: list, until: Any, within: Any
) -> None:
    """On main the ROUTER went on queueing (and then dropped messages one by one, the peer
    staying registered); now its session ends, as a stream peer's does past max_send_buffer."""
    from twisted.internet import reactor

    sink = HelloSink()
    listener = await _zmq.listen(reactor, "zmq:tcp://127.0.0.1:*", sink, Limits(zmq_send_hwm=50))
    closers.append(listener.stop)
    deaf = RawPeer(raw_context, listener)
    deaf.socket.setsockopt(zmq.RCVHWM, 1)
    deaf.send(ClientHello("deaf"))
    await until(lambda: sink.messages, what="the hello")
    [(peer, _)] = sink.messages
    result = BackendJobStarted("x" * 65536)
    sent = [0]

    def flood() -> bool:
        for _ in range(50):
            peer.send(result)
            sent[0] += 1
        return bool(sink.disconnected)

    await until(flood, timeout=20, what="the deaf peer to be cut off")
    [(gone, reason)] = sink.disconnected
    assert gone is peer and "limits.zmq_send_hwm" in reason
    assert listener.peers == {} and sent[0] < 5000
    # Its connection is closed too, so that ZeroMQ frees what it queued for it.
    await until(lambda: listener.connections == 0, what="the deaf peer's connection to be closed")


def test_a_malformed_job_on_a_stream_connection_is_answered_and_the_connection_kept() -> None:
    """Every job is answered once, even one that does not decode: on main a stream client's
    malformed job closed its connection (dropping its other jobs) and was never answered."""
    with Lab() as lab:
        clients, agents = lab.endpoints("clients", ("tcp",)), lab.endpoints("agents", ("tcp",))
        backend = lab.backend(clients, agents)
        lab.agent("a1", agents.connect["tcp"])
        lab.wait(lab.registered(backend, "a1"), 30, "the agent to register")
        s = raw_tcp(clients.connect["tcp"])
        bad = dict(new_job("bad").__dict__, time_limit="thirty", type="client_new_job")
        s.sendall(
            frame(ClientHello("raw").dump())
            + frame(new_job("good", inputdata={"@mock_delay": 0.5}).dump())
            + frame(msgpack.packb(bad, use_bin_type=True))
        )
        answer = read_frames(s, lambda m: type(m) is BackendJobDone and m.job_id == "bad", 20)
        assert answer.result[0] == "crash" and "time_limit" in answer.result[1]
        done = read_frames(s, lambda m: type(m) is BackendJobDone, 20)
        assert (done.job_id, done.result[0]) == ("good", "success")
        s.close()


def test_claiming_the_first_assigned_routing_id_does_not_crash_the_backend() -> None:
    """libzmq does not check that the id it assigns is free: a peer that took it first makes
    the ROUTER abort the whole process (``Assertion failed: ok (src/socket_base.cpp)``) when
    the next peer without an id of its own connects.  On main the first assigned id was always
    006b8b4567, so one connection could take any fresh backend down."""
    with Lab() as lab:
        clients, agents = lab.endpoints("clients", ("zmq",)), lab.endpoints("agents", ("zmq",))
        backend = lab.backend(clients, agents)
        address = clients.connect["zmq"][len("zmq:") :]
        context = zmq.Context()
        try:
            squatter = context.socket(zmq.DEALER)
            squatter.linger = 0
            squatter.setsockopt(zmq.ROUTING_ID, bytes.fromhex("006b8b4567"))
            squatter.connect(address)
            squatter.send(ClientHello("squatter").dump())
            assert squatter.poll(10_000), "the backend did not answer the squatter"
            honest = context.socket(zmq.DEALER)  # no routing id: the backend assigns one
            honest.linger = 0
            honest.connect(address)
            honest.send(ClientHello("honest").dump())
            assert honest.poll(10_000), "the backend did not answer the honest client"
            assert type(MessageMeta.load(honest.recv())).__name__ == "BackendUpdateContainers"
            assert backend.alive
        finally:
            context.destroy(linger=0)


def zmtp_stranger(port: int) -> socket.socket:
    """A raw ZMTP 3.0 peer (NULL mechanism) that completes the handshake as a DEALER."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\0" * 16 + b"\0" + b"\0" * 31)
    greeting = b""
    while len(greeting) < 64:
        chunk = s.recv(64 - len(greeting))
        assert chunk, "the backend closed the connection during the greeting"
        greeting += chunk
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    s.sendall(b"\x04" + bytes([len(ready)]) + ready)
    return s


def test_never_hello_zmq_connections_are_closed_and_what_they_sent_freed() -> None:
    """ZeroMQ reads a message whole before the backend sees it: 30 strangers each sending
    4 MiB of a 60 MiB message made a backend hold 120 MiB for as long as they liked (on main,
    still held 12 s later).  Now their connections are shut down after --hello-timeout, which
    frees it; one beyond --zmq-max-pending is closed at once; an honest ZeroMQ client is served
    all along."""
    with Lab() as lab:
        port = free_port()
        clients = Endpoints([f"zmq:tcp://127.0.0.1:{port}"], {"zmq": f"zmq:tcp://127.0.0.1:{port}"})
        agents = lab.endpoints("agents", ("tcp",))
        backend = lab.backend(
            clients,
            agents,
            "--max-frame",
            str(64 * MiB),
            "--hello-timeout",
            "2",
            "--max-inputdata",
            str(64 * MiB),
            "--zmq-max-pending",
            "30"
        )
        lab.agent("a1", agents.connect["tcp"])
        lab.wait(lab.registered(backend, "a1"), 30, "the agent to register")
        honest = lab.client("honest", clients.connect["zmq"])
        lab.wait(honest.ready(), 30, "the honest client's hello to be answered")
        baseline = backend.memory()["VmRSS"]

        strangers = []
        for _ in range(30):
            s = zmtp_stranger(port)
            assert b"READY" in s.recv(256)
            s.sendall(b"\x02" + struct.pack(">Q", 60 * MiB))  # a 60 MiB message, and 4 MiB of it
            for _ in range(4):
                s.sendall(b"\0" * MiB)
            strangers.append(s)
        started = time.monotonic()
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert closed_by_peer(extra, 1.5)  # closed as soon as made: before the hello deadline
        assert all(closed_by_peer(s, 15) for s in strangers)
        assert time.monotonic() - started >= 1.0
        lab.wait(
            lambda: backend.memory()["VmRSS"] < baseline + 24 * MiB, 10, "the backend to free the partial messages"
        )
        lab.wait(lambda: backend.count("refused", "(limits.zmq_max_pending)") > 0, 10, "the refusal to be logged")

        [job] = honest.submit(["honest-1"])
        lab.wait(honest.answered([job]), 30, "the honest job's result")
        assert honest.results[job][0]["type"] == "success", honest.results[job]
        assert honest.ready_count == 1  # one hello: its connection was never cut
        for s in [*strangers, extra]:
            s.close()


@pytest_twisted.ensureDeferred
async def test_a_lone_zmq_stranger_is_closed_at_its_hello_deadline(closers: list, until: Any) -> None:
    """Nothing else happening on the listener: the deadline comes from the socket monitor alone."""
    from twisted.internet import reactor

    listener = await _zmq.listen(reactor, "zmq:tcp://127.0.0.1:*", HelloSink(), Limits(hello_timeout=0.5))
    closers.append(listener.stop)
    port = int(listener.connect_endpoint.rsplit(":", 1)[1])
    stranger = zmtp_stranger(port)
    closers.append(stranger.close)
    await until(lambda: listener.timed_out == 1, what="the stranger's deadline")
    assert closed_by_peer(stranger, 5)


def test_a_curve_key_with_a_colon_is_named_in_full() -> None:
    """The z85 alphabet has ':'; on main such a key was cut at it (and shown as '(?)')."""
    from inginious_tx.transport.curve import user_key

    key = b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    assert len(key) == 40 and b":" in key
    assert user_key("curve:" + key.decode() + ":" + "ab" * 16) == key
    assert user_key("null:" + "ab" * 16) is None
    assert user_key(None) is None


def test_zmq_strangers_hold_at_most_zmq_max_pending_jobs_by_default() -> None:
    """The audit's flood with the backend's default bounds (64 MiB frames, 16 MiB inputdata):
    30 raw ZMTP strangers each announcing a message of 64 MiB - 100 bytes are cut off at the
    header (a client's frames are bounded by the largest job, --max-inputdata + 1 MiB); 30 more
    announcing 17 MiB - 100 bytes and sending 13 MiB of it: only --zmq-max-pending (8) are let in.
    On main the first flood grew the backend from 58 MB to 1.9 GB for --hello-timeout (10 s)."""
    with Lab() as lab:
        port = free_port()
        clients = Endpoints([f"zmq:tcp://127.0.0.1:{port}"], {"zmq": f"zmq:tcp://127.0.0.1:{port}"})
        agents = lab.endpoints("agents", ("tcp",))
        backend = lab.backend(clients, agents, "--max-frame", str(64 * MiB))
        lab.agent("a1", agents.connect["tcp"])
        lab.wait(lab.registered(backend, "a1"), 30, "the agent to register")
        honest = lab.client("honest", clients.connect["zmq"])
        lab.wait(honest.ready(), 30, "the honest client's hello to be answered")
        baseline = backend.memory()["VmHWM"]

        def flood(size: int, send: int) -> int:
            """Strangers that got all of ``send`` MiB through."""
            through = []
            for _ in range(30):
                try:
                    s = zmtp_stranger(port)
                except (OSError, AssertionError):  # refused during the greeting
                    continue
                try:
                    s.recv(256)
                    s.sendall(b"\x02" + struct.pack(">Q", size))
                    for _ in range(send):
                        s.sendall(b"\0" * MiB)
                    through.append(s)
                except OSError:
                    s.close()
            for s in through:
                s.close()
            return len(through)

        assert flood(64 * MiB - 100, 4) == 0
        # At most 8 are let in. A refused one may still get its 13 MiB into the kernel's buffers
        # before the backend shuts it down, and how many do depends on how busy the machine is, so
        # the count only says that strangers were refused; what ZeroMQ holds is what the peak
        # memory below measures (30 held strangers would be 390 MiB over the bound).
        assert flood(17 * MiB - 100, 13) < 30
        grown = backend.memory()["VmHWM"] - baseline
        assert grown < 8 * 17 * MiB + 16 * MiB, f"the backend's peak memory grew by {grown / MiB:.1f} MiB"
        lab.wait(lambda: backend.count("refused", "(limits.zmq_max_pending)") > 0, 10, "the refusal to be logged")
        [job] = honest.submit(["honest-1"])
        lab.wait(honest.answered([job]), 30, "the honest job's result")
        assert honest.results[job][0]["type"] == "success", honest.results[job]


def raw_stream(connect: str) -> socket.socket:
    """A plain socket to a stream endpoint string (``tcp:host=...:port=N`` or ``unix:path=...``)."""
    if connect.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(connect.split("path=", 1)[1] if "path=" in connect else connect[len("unix:") :])
        return s
    return raw_tcp(connect)


def malformed_jobs() -> List[Tuple[str, bytes]]:
    """(job id, payload): a job nested 5,000 deep, one missing a field, one with an extra field."""
    def packed(job_id: str, change: Any) -> bytes:
        fields = msgpack.unpackb(new_job(job_id).dump(), raw=False)
        change(fields)
        return msgpack.packb(fields, use_bin_type=True)

    mark = "NESTED-HERE-1234"  # 16 characters: packed as 0xb0 + the text
    deep = packed("deep", lambda f: f.update(inputdata={"x": mark}))
    deep = deep.replace(b"\xb0" + mark.encode(), b"\x91" * 5000 + b"\xc0")
    return [
        ("deep", deep),
        ("missing", packed("missing", lambda f: f.pop("task_id"))),
        ("extra", packed("extra", lambda f: f.update(evil=1))),
    ]


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_malformed_jobs_on_a_stream_connection_are_answered_once_and_the_others_kept(
    kind: str, short_tmp: str
) -> None:
    """Audit item 3 (re-check): over tcp: and unix:, each malformed job is answered crash once,
    the connection stays, and the client's other job is run."""
    with Lab() as lab:
        agents = lab.endpoints("agents", ("tcp",))
        if kind == "unix":
            path = os.path.join(short_tmp, "c.sock")
            clients = Endpoints([f"unix:{path}"], {"unix": f"unix:path={path}"})
        else:
            clients = lab.endpoints("clients", ("tcp",))
        backend = lab.backend(clients, agents)
        lab.agent("a1", agents.connect["tcp"])
        lab.wait(lab.registered(backend, "a1"), 30, "the agent to register")
        s = raw_stream(clients.connect[kind])
        bad = malformed_jobs()
        s.sendall(
            frame(ClientHello("raw").dump())
            + frame(new_job("good", inputdata={"@mock_delay": 0.3}).dump())
            + b"".join(frame(payload) for _, payload in bad)
        )
        answers: List[Any] = []
        read_frames(s, lambda m: answers.append(m) or (type(m) is BackendJobDone and m.job_id == "good"), 30)
        done = [m for m in answers if type(m) is BackendJobDone]
        assert sorted(m.job_id for m in done) == ["deep", "extra", "good", "missing"], done  # each once
        for m in done:
            assert m.result[0] == ("success" if m.job_id == "good" else "crash"), m
        assert backend.alive
        s.close()


def test_partial_frames_of_hellod_stream_connections_share_one_budget() -> None:
    """30 connections say hello (free on plain tcp:), then each announces a 60 MiB frame and
    sends 8 MiB of it, in turns.  Their partial frames share --max-partial-bytes (64 MiB here):
    the connections that would go over it are closed with a log line, the backend's peak stays
    near the budget, and an honest client is served.  On main each connection could hold up to
    --max-frame: the same run grew the backend by about 240 MiB (and 30 x 60 MiB if sent whole)."""
    with Lab() as lab:
        clients, agents = lab.endpoints("clients", ("tcp",)), lab.endpoints("agents", ("tcp",))
        backend = lab.backend(
            clients, agents, "--max-frame", str(64 * MiB), "--max-inputdata", str(64 * MiB),
            "--max-partial-bytes", str(64 * MiB),
        )  # fmt: skip
        endpoint = clients.connect["tcp"]
        lab.agent("a1", agents.connect["tcp"])
        lab.wait(lab.registered(backend, "a1"), 30, "the agent to register")
        honest = lab.client("honest", endpoint)
        lab.wait(honest.ready(), 30, "the honest client's hello to be answered")
        baseline = backend.memory()["VmHWM"]

        flood = [raw_tcp(endpoint) for _ in range(30)]
        for i, s in enumerate(flood):
            s.sendall(frame(ClientHello(f"flood{i}").dump()) + struct.pack(">I", 60 * MiB))
        for s in flood:
            read_frames(s, lambda m: True, 10)  # hello answered: accepted
        chunk = b"\0" * MiB
        open_ = list(flood)
        for _ in range(8):
            for s in list(open_):
                try:
                    s.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    open_.remove(s)
        lab.wait(lambda: backend.count("(limits.max_partial_bytes)") > 0, 10, "the budget to be logged")
        grown = backend.memory()["VmHWM"] - baseline
        assert grown < 64 * MiB + 40 * MiB, f"the backend's peak memory grew by {grown / MiB:.1f} MiB"
        closed = sum(closed_by_peer(s, 0.2) for s in flood)
        assert closed >= 20, closed  # 64 MiB hold 8 such frames at most
        [job] = honest.submit(["honest-1"])
        lab.wait(honest.answered([job]), 30, "the honest job's result")
        assert honest.results[job][0]["type"] == "success", honest.results[job]
        for s in flood:
            s.close()


def hostile_partial_frames(endpoint: str, n: int, announce: int, send: int, name: str) -> List[socket.socket]:
    """``n`` connections that say hello, announce a frame of ``announce`` bytes and send ``send`` of it."""
    hostile = [raw_tcp(endpoint) for _ in range(n)]
    for i, s in enumerate(hostile):
        s.sendall(frame(ClientHello(f"{name}{i}").dump()))
        read_frames(s, lambda m: True, 10)  # hello answered: accepted, frames up to the client maximum
        s.sendall(struct.pack(">I", announce) + b"\0" * send)
    return hostile


def test_hostile_partial_frames_cannot_starve_an_honest_client_and_stalled_ones_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Audit (MEDIUM, partial_dos.py): connections that said hello fill --max-partial-bytes with
    frames they never finish.  An honest client's 2 MiB jobs still get through, twice (the budget
    makes room by closing the oldest partial frames, not the newcomer), the stalled connections
    are closed after --partial-frame-timeout, and the backend's peak stays near the budget.

    On main the honest client was disconnected ("would take the bytes held in partial frames
    over ...") and the hostile connections held the budget for as long as they liked."""
    # The frames' read buffers (up to 64 KiB each) come from glibc's heap by default, where
    # freed ones return to the system only if nothing newer sits above them: whether resident
    # memory falls then depends on the allocator's history (it did not, 1 run in 10).  Blocks
    # of 16 KiB and more mapped on their own are returned as soon as freed, so the check below
    # measures whether the backend let go of the frames, not where malloc put them.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(16 * 1024))
    with Lab() as lab:
        clients, agents = lab.endpoints("clients", ("tcp",)), lab.endpoints("agents", ("tcp",))
        backend = lab.backend(
            clients, agents, "--max-frame", str(32 * MiB), "--max-inputdata", str(16 * MiB),
            "--max-partial-bytes", str(32 * MiB), "--partial-frame-timeout", "4",
        )  # fmt: skip
        endpoint = clients.connect["tcp"]
        lab.agent("a1", agents.connect["tcp"])
        lab.wait(lab.registered(backend, "a1"), 30, "the agent to register")
        honest = raw_tcp(endpoint)
        honest.sendall(frame(ClientHello("honest").dump()))
        read_frames(honest, lambda m: True, 10)
        baseline = backend.memory()
        hostile: List[socket.socket] = []
        for round_ in range(2):
            # 4 x 8 MiB of 16 MiB frames: the 32 MiB budget is full.
            hostile += hostile_partial_frames(endpoint, 4, 16 * MiB, 8 * MiB, f"hostile{round_}-")
            # Best effort (freed heap may be reused): the eviction logged below shows the budget was full.
            lab.wait(
                lambda: backend.memory()["VmRSS"] > baseline["VmRSS"] + 24 * MiB, 5, "the frames to be read", fail=False
            )
            job_id = f"honest-{round_}"
            honest.sendall(frame(new_job(job_id, inputdata={"answer": "x" * (2 * MiB)}).dump()))
            done = read_frames(honest, lambda m, job_id=job_id: type(m) is BackendJobDone and m.job_id == job_id, 30)
            assert done.result[0] == "success", done.result
        assert backend.has("was the oldest when the bytes held in partial frames reached 33554432")
        assert not backend.has("(limits.max_partial_bytes), and it is the oldest")  # the honest one never was
        grown = backend.memory()["VmHWM"] - baseline["VmHWM"]
        assert grown < 32 * MiB + 32 * MiB, f"the backend's peak memory grew by {grown / MiB:.1f} MiB"

        # Every hostile connection is closed: evicted, or its stalled frame timed out.
        started = time.monotonic()
        assert all(closed_by_peer(s, 20) for s in hostile)
        assert backend.has("a frame was not completed within 4 s")
        assert time.monotonic() - started < 15
        lab.wait(lambda: backend.memory()["VmRSS"] < baseline["VmRSS"] + 24 * MiB, 20, "the partial frames freed")
        # The honest connection was never cut and is still served.
        honest.sendall(frame(new_job("honest-2").dump()))
        done = read_frames(honest, lambda m: type(m) is BackendJobDone and m.job_id == "honest-2", 30)
        assert done.result[0] == "success", done.result
        assert backend.alive
        for s in [honest, *hostile]:
            s.close()
