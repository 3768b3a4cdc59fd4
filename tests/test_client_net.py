"""The client over real sockets: a tiny fake backend behind the real ZeroMQ and TCP transports.

These check what the in-memory tests cannot: that the client's idea of links
(hello on connect, loss on close or silence) matches what the real transports
report, with real time and the real reactor (bounded by timeouts, no sleeps).
"""

from __future__ import annotations

from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from zope.interface import implementer

from inginious_tx import transport
from inginious_tx.client import BackendUnavailable, Client, ClientJobResult
from inginious_tx.dispatch import Dispatcher
from inginious_tx.interfaces import IBackendClientHandler, IPeer
from inginious_tx.messages import (
    BackendGetQueue,
    BackendJobDone,
    BackendJobStarted,
    BackendUpdateContainers,
    ClientHello,
    Pong,
    Unknown,
)

TIMEOUT = 10.0


@implementer(IBackendClientHandler)
class InstantBackend:
    """Answers every job at once with a success named after its input."""

    def __init__(self) -> None:
        self.registered: set = set()
        self.hellos: List[bytes] = []
        self.jobs: List[str] = []
        self._hello_waiters: List[Deferred] = []

    def next_hello(self) -> Deferred:
        d: Deferred = Deferred()
        self._hello_waiters.append(d)
        return d

    def peer_connected(self, peer: IPeer) -> None:
        pass

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        self.registered.discard(peer.address)

    def _known(self, peer: IPeer) -> bool:
        if peer.address in self.registered:
            return True
        peer.send(Unknown())
        return False

    def client_hello(self, peer: IPeer, message: ClientHello) -> None:
        self.registered.add(peer.address)
        self.hellos.append(peer.address)
        peer.send(BackendUpdateContainers(("default",)))
        waiters, self._hello_waiters = self._hello_waiters, []
        for d in waiters:
            d.callback(peer.address)

    def client_new_job(self, peer: IPeer, message: Any) -> None:
        if not self._known(peer):
            return
        self.jobs.append(message.job_id)
        if message.inputdata.get("hang"):
            return
        peer.send(BackendJobStarted(message.job_id))
        peer.send(
            BackendJobDone(
                message.job_id,
                ("success", f"got {message.inputdata.get('q')}"),
                100.0,
                {},
                {},
                {},
                "",
                None,
                "",
                "",
            )
        )

    def client_kill_job(self, peer: IPeer, message: Any) -> None:
        pass

    def client_get_queue(self, peer: IPeer, message: Any) -> None:
        if self._known(peer):
            peer.send(BackendGetQueue([], [(j, True, "c/t", "test", 30) for j in self.jobs]))

    def ping(self, peer: IPeer, message: Any) -> None:
        if self._known(peer):
            peer.send(Pong())


async def listen(endpoint: str, backend: InstantBackend) -> Any:
    from twisted.internet import reactor

    return await transport.listen(reactor, endpoint, Dispatcher(backend, IBackendClientHandler))


async def listen_again(endpoint: str, backend: InstantBackend, within: float = 5.0) -> Any:
    """Listen on an address just released: ZeroMQ closes sockets in the background."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + within
    while True:
        try:
            return await listen(endpoint, backend)
        except ValueError:
            if reactor.seconds() > deadline:
                raise
            await deferLater(reactor, 0.05, lambda: None)


def make_client(endpoint: str, **options: Any) -> Client:
    from twisted.internet import reactor

    options.setdefault("ping_interval", 0.2)
    options.setdefault("ping_misses", 3)
    options.setdefault("connect_timeout", 5.0)
    return Client(reactor, endpoint, "net-test", **options).start()


def bounded(d: Deferred, seconds: float = TIMEOUT) -> Deferred:
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


async def round_trip(client: Client) -> None:
    started: List[str] = []
    result = await bounded(client.new_job("c", "t", {"q": "42"}, job_id="rt", on_started=started.append))
    assert isinstance(result, ClientJobResult)
    assert (result.result, result.text, result.grade, result.local) == ("success", "got 42", 100.0, False)
    assert started == ["rt"]


def free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_zmq_round_trip_and_silent_backend_is_lost() -> None:
    backend = InstantBackend()
    listener = await listen("zmq:tcp://127.0.0.1:*", backend)
    client = make_client(listener.connect_endpoint)
    try:
        assert await bounded(client.wait_until_ready()) == ("default",)
        await round_trip(client)
        # A job the backend never answers, then the backend goes silent.
        pending = client.new_job("c", "t", {"hang": "1"}, job_id="hangs")
        await listener.stop()
        result = await bounded(pending)
        assert result.result == "crash" and result.backend_unavailable
        assert "no answer" in result.text
    finally:
        await client.stop()
        await listener.stop()


@pytest_twisted.ensureDeferred
async def test_zmq_backend_restart_is_noticed_through_unknown() -> None:
    port = free_tcp_port()
    endpoint = f"zmq:tcp://127.0.0.1:{port}"
    first = InstantBackend()
    listener = await listen(endpoint, first)
    client = make_client(endpoint, ping_misses=50)  # long patience: Unknown must be what notices
    try:
        await bounded(client.wait_until_ready())
        pending = client.new_job("c", "t", {"hang": "1"}, job_id="forgotten")
        await listener.stop()
        second = InstantBackend()
        hello = second.next_hello()
        listener = await listen_again(endpoint, second)
        # The DEALER reconnects by itself; the next ping gets Unknown; hello again.
        await bounded(hello)
        result = await bounded(pending)
        assert result.result == "crash" and result.backend_unavailable
        assert "forgot" in result.text
        await bounded(client.wait_until_ready())
        await round_trip(client)
        assert second.jobs == ["rt"]
    finally:
        await client.stop()
        await listener.stop()


@pytest_twisted.ensureDeferred
async def test_zmq_unreachable_backend_crashes_after_the_connect_timeout() -> None:
    from twisted.internet import reactor

    endpoint = f"zmq:tcp://127.0.0.1:{free_tcp_port()}"
    client = make_client(endpoint, connect_timeout=0.5)
    try:
        t0 = reactor.seconds()
        result = await bounded(client.new_job("c", "t", {}))
        assert result.result == "crash" and result.backend_unavailable
        assert endpoint in result.text
        assert 0.4 <= reactor.seconds() - t0 < 5
    finally:
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_tcp_round_trip_loss_and_reconnection() -> None:
    port = free_tcp_port()
    backend = InstantBackend()
    listener = await listen(f"tcp:{port}:interface=127.0.0.1", backend)
    client = make_client(f"tcp:127.0.0.1:{port}", ping_misses=50)
    try:
        await bounded(client.wait_until_ready())
        await round_trip(client)
        pending = client.new_job("c", "t", {"hang": "1"}, job_id="cut")
        queue = client.get_queue()
        snapshot = await bounded(queue)
        assert [w.job_id for w in snapshot.waiting] == ["rt", "cut"]
        # Closing the connection is an immediate, certain loss (no heartbeat needed).
        await listener.stop()
        result = await bounded(pending, 3.0)
        assert result.result == "crash" and result.backend_unavailable
        assert "connection lost" in result.text
        with pytest.raises(BackendUnavailable):
            # Nothing answers while the backend is down.
            await bounded(client.wait_until_ready(timeout=0.3))
        # The backend comes back: the client reconnects and says hello again.
        again = InstantBackend()
        hello = again.next_hello()
        listener = await listen(f"tcp:{port}:interface=127.0.0.1", again)
        await bounded(hello)
        await bounded(client.wait_until_ready())
        await round_trip(client)
        assert len(backend.hellos) == 1 and len(again.hellos) == 1
    finally:
        await client.stop()
        await listener.stop()


def test_endpoint_errors_are_raised_at_start() -> None:
    from twisted.internet import reactor

    with pytest.raises(transport.UnknownEndpoint, match="no transport understands"):
        Client(reactor, "carrier-pigeon:home").start()
    with pytest.raises(ValueError):
        Client(reactor, "zmq:nonsense").start()


def _raw_06_backend(port: int, stop: Any, deadline_s: float = TIMEOUT) -> List[dict]:
    """An INGInious 0.6 backend's side of a conversation, with raw pyzmq and msgpack.

    Runs in a thread (it blocks); nothing of inginious_tx is used, so what the
    client sends is checked at the wire level.  Returns every map received.
    """
    import time

    import msgpack
    import zmq

    def pack(d: dict) -> bytes:
        return msgpack.packb(d, use_bin_type=True)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    received: List[dict] = []
    end = time.monotonic() + deadline_s
    try:
        while not stop.is_set() and time.monotonic() < end:
            if not sock.poll(20):
                continue
            identity, payload = sock.recv_multipart()
            msg = msgpack.unpackb(payload, raw=False, use_list=False, strict_map_key=False)
            received.append(msg)
            kind = msg["type"]
            if kind == "client_hello":
                sock.send_multipart(
                    [identity, pack({"available_containers": ("default", "py3"), "type": "backend_update_containers"})]
                )
            elif kind == "ping":
                sock.send_multipart([identity, pack({"type": "pong"})])
            elif kind == "client_new_job":
                jid = msg["job_id"]
                sock.send_multipart([identity, pack({"job_id": jid, "type": "backend_job_started"})])
                done = {
                    "job_id": jid,
                    "result": ("failed", "not quite"),
                    "grade": 42.5,
                    "problems": {"q1": ("failed", "try again")},
                    "tests": {},
                    "custom": {"k": 1},
                    "state": "",
                    "archive": None,
                    "stdout": "o",
                    "stderr": "e",
                    "type": "backend_job_done",
                }
                sock.send_multipart([identity, pack(done)])
    finally:
        sock.close(0)
        ctx.term()
    return received


@pytest_twisted.ensureDeferred
async def test_interoperates_with_a_raw_inginious_0_6_backend() -> None:
    import threading

    from twisted.internet.threads import deferToThread

    port = free_tcp_port()
    stop = threading.Event()
    conversation = deferToThread(_raw_06_backend, port, stop)
    client = make_client(f"zmq:tcp://127.0.0.1:{port}")
    try:
        assert await bounded(client.wait_for_environment("py3")) == ("default", "py3")
        started: List[str] = []
        result = await bounded(
            client.new_job("course", "task", {"q1": "x"}, "py3", time_limit=9, job_id="j-06", on_started=started.append)
        )
    finally:
        stop.set()
        await client.stop()
    received = await bounded(conversation)
    assert started == ["j-06"]
    assert (result.result, result.text, result.grade, result.problems, result.custom) == (
        "failed",
        "not quite",
        42.5,
        {"q1": ("failed", "try again")},
        {"k": 1},
    )
    assert received[0] == {"type": "client_hello", "name": "net-test"}
    [job] = [m for m in received if m["type"] == "client_new_job"]
    assert job == {
        "type": "client_new_job",
        "job_id": "j-06",
        "priority": 0,
        "course_id": "course",
        "task_id": "task",
        "inputdata": {"q1": "x"},
        "environment": "py3",
        "enable_network": False,
        "time_limit": 9,
        "hard_time_limit": None,
        "mem_limit": 100,
        "debug": False,
        "launcher": "inginious-tx",
        "run_cmd": None,
    }
