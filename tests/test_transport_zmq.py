"""The ZeroMQ transport: INGInious 0.6 interoperation, bad input, identities, reactor use."""

from __future__ import annotations

from collections import Counter
from typing import Any, List

import msgpack
import pytest
import pytest_twisted
import zmq
from zmq.utils.monitor import recv_monitor_message
from zope.interface.verify import verifyObject

from inginious_tx.interfaces import IConnection, IListener, IPeer
from inginious_tx.messages import BackendJobStarted, BackendUpdateContainers, ClientHello, ClientNewJob, Ping, Pong
from inginious_tx.testing import RecordingSink
from inginious_tx.transport import Limits
from inginious_tx.transport.zmq import HIGH_WATER_MARK, RECONNECT_MAX_MS, ZmqTransport

_transport = ZmqTransport()
_raw_context = zmq.Context()
_LIMITS = Limits()


@pytest.fixture
def raw(closers: list) -> Any:
    """``raw(socket_type, identity=None)``: a plain pyzmq socket, as INGInious 0.6 uses them."""

    def make(socket_type: int, identity: bytes | None = None) -> zmq.Socket:
        sock = _raw_context.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        closers.append(sock.close)
        return sock

    return make


def pack(fields: dict) -> bytes:
    """What INGInious 0.6 puts on the wire: a msgpack map, ``type`` included."""
    return msgpack.packb(fields, use_bin_type=True)


async def raw_recv(sock: zmq.Socket, until: Any, timeout: float = 5.0) -> List[bytes]:
    """The next multipart message on a raw socket, without blocking the reactor."""
    got: List[List[bytes]] = []

    def ready() -> bool:
        try:
            got.append(sock.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return False
        return True

    await until(ready, timeout, what="a raw ZeroMQ message")
    return got[0]


async def listening(closers: list, sink: Any, limits: Limits = _LIMITS, transport: Any = _transport) -> Any:
    from twisted.internet import reactor

    listener = await transport.listen(reactor, "zmq:tcp://127.0.0.1:*", sink, limits)
    closers.append(listener.stop)
    return listener


def connecting(closers: list, endpoint: str, sink: Any, limits: Limits = _LIMITS, transport: Any = _transport) -> Any:
    from twisted.internet import reactor

    conn = transport.connect(reactor, endpoint, sink, limits)
    closers.append(conn.stop)
    return conn


@pytest_twisted.ensureDeferred
async def test_an_inginious_06_dealer_talks_to_our_router(closers: list, raw: Any, until: Any, within: Any) -> None:
    server = RecordingSink()
    listener = await listening(closers, server)
    assert verifyObject(IListener, listener)
    dealer = raw(zmq.DEALER, identity=b"frontend-06")
    dealer.connect(listener.connect_endpoint[len("zmq:") :])
    dealer.send(pack({"name": "frontend", "type": "client_hello"}))

    [(peer, message)] = await within(server.wait_for(1))
    assert message == ClientHello("frontend")
    assert server.connected == [peer]
    assert verifyObject(IPeer, peer)
    # The routing id stays private: neither the address (job ids) nor the description (logs, status) show it.
    assert b"frontend-06" not in peer.address and peer.address.startswith(b"zmq-")
    assert "frontend-06" not in peer.description and b"frontend-06".hex() not in peer.description
    assert "127.0.0.1" in peer.description

    peer.send(BackendUpdateContainers(("default", "python3")))
    frames = await raw_recv(dealer, until)
    assert len(frames) == 1
    assert msgpack.unpackb(frames[0], raw=False) == {
        "available_containers": ["default", "python3"],
        "type": "backend_update_containers",
    }


@pytest_twisted.ensureDeferred
async def test_our_dealer_talks_to_an_inginious_06_router(
    closers: list, raw: Any, until: Any, within: Any, log_events: Any
) -> None:
    router = raw(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    client = RecordingSink()
    conn = connecting(closers, "zmq:" + router.getsockopt(zmq.LAST_ENDPOINT).decode(), client)
    assert verifyObject(IConnection, conn)
    await until(lambda: client.connected == [conn.peer])
    conn.peer.send(ClientHello("tx-client"))

    identity, payload = await raw_recv(router, until)
    assert msgpack.unpackb(payload, raw=False) == {"name": "tx-client", "type": "client_hello"}

    router.send_multipart([identity, b"\xc1 not msgpack"])
    router.send_multipart([identity, b"two", b"frames"])
    router.send_multipart([identity, pack({"type": "pong"})])
    [(peer, message)] = await within(client.wait_for(1))
    assert peer is conn.peer and message == Pong()
    assert log_events.has("undecodable", "not a msgpack message")
    assert log_events.has("2 frames")


@pytest_twisted.ensureDeferred
async def test_garbage_is_logged_and_dropped_and_the_peer_goes_on(
    closers: list, raw: Any, within: Any, log_events: Any
) -> None:
    server = RecordingSink()
    listener = await listening(closers, server)
    dealer = raw(zmq.DEALER, identity=b"garbage-peer")
    dealer.connect(listener.connect_endpoint[len("zmq:") :])
    dealer.send(b"\xc1\x00 not msgpack")
    dealer.send(pack({"type": "no_such_type"}))
    dealer.send(pack({"type": "client_hello"}))  # missing field
    dealer.send_multipart([b"one", b"two", b"three"])
    dealer.send(b"")
    dealer.send(pack({"type": "ping"}))

    [(peer, message)] = await within(server.wait_for(1))
    assert message == Ping()
    assert server.connected == [peer]  # garbage announces no peer
    # Logged without the routing id (it is private): the peer was not heard from properly yet.
    hexid = "a new peer"
    assert log_events.has(hexid, "not a msgpack message")
    assert log_events.has(hexid, "unknown message type 'no_such_type'")
    assert log_events.has(hexid, "client_hello: missing field 'name'")
    assert log_events.has(hexid, "3 frames")
    assert not log_events.has(b"garbage-peer".hex())


@pytest_twisted.ensureDeferred
async def test_oversized_message_drops_that_peer_only(closers: list, raw: Any, until: Any, within: Any) -> None:
    limits = Limits(max_frame=1024)
    server = RecordingSink()
    listener = await listening(closers, server, limits)
    bad = raw(zmq.DEALER, identity=b"too-big")
    monitor = bad.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    closers.append(monitor.close)
    bad.connect(listener.connect_endpoint[len("zmq:") :])
    assert (await raw_event(monitor, until))["event"] == zmq.EVENT_CONNECTED
    bad.send(ClientHello("x" * 4000).dump())  # valid, but over max_frame
    assert (await raw_event(monitor, until))["event"] == zmq.EVENT_DISCONNECTED

    client = RecordingSink()
    good = connecting(closers, listener.connect_endpoint, client, limits)
    good.peer.send(Ping())
    [(peer, message)] = await within(server.wait_for(1))
    assert message == Ping() and peer.address != b"too-big"
    peer.send(Pong())
    assert [m for _, m in await within(client.wait_for(1))] == [Pong()]
    assert all(p.address != b"too-big" for p in server.connected)


async def raw_event(monitor: zmq.Socket, until: Any) -> dict:
    got: List[dict] = []

    def ready() -> bool:
        try:
            got.append(recv_monitor_message(monitor, zmq.NOBLOCK))
        except zmq.Again:
            return False
        return True

    await until(ready, what="a socket monitor event")
    return got[0]


@pytest_twisted.ensureDeferred
async def test_bursts_of_20000_lose_nothing_either_way(closers: list, until: Any, within: Any) -> None:
    """ROUTER drops silently at its high-water mark: the HWM must hold a benchmark burst."""
    assert HIGH_WATER_MARK >= 20_000
    server, client = RecordingSink(), RecordingSink()
    listener = await listening(closers, server)
    conn = connecting(closers, listener.connect_endpoint, client)
    n = 20_000
    for i in range(n):
        conn.peer.send(BackendJobStarted(str(i)))
    got = await within(server.wait_for(n), 10)
    assert [m.job_id for _, m in got] == [str(i) for i in range(n)]
    peer = got[0][0]
    for i in range(n):
        peer.send(
            ClientNewJob(str(i), 0, "c", "t", {"q": "y" * 100}, "default", False, 30, None, 100, False, "l", None)
        )
    got = await within(client.wait_for(n), 10)
    assert [m.job_id for _, m in got] == [str(i) for i in range(n)]


@pytest_twisted.ensureDeferred
async def test_reconnect_opens_a_new_identity(closers: list, until: Any, within: Any) -> None:
    server, client = RecordingSink(), RecordingSink()
    listener = await listening(closers, server)
    conn = connecting(closers, listener.connect_endpoint, client)
    await until(lambda: client.connected == [conn.peer])
    conn.peer.send(Ping())
    [(first, _)] = await within(server.wait_for(1))

    conn.reconnect()
    assert client.disconnected == [(conn.peer, "reconnecting")]
    await until(lambda: client.connected == [conn.peer, conn.peer], what="second peer_connected")
    conn.peer.send(Ping())
    await within(server.wait_for(2))
    second = server.messages[1][0]
    assert second.address != first.address and second != first
    assert server.connected == [first, second]
    second.send(Pong())
    assert [m for _, m in await within(client.wait_for(1))] == [Pong()]
    # while the server is away, ZeroMQ's own reconnection backs off
    assert conn._conn.socket.get(zmq.RECONNECT_IVL_MAX) == RECONNECT_MAX_MS > conn._conn.socket.get(zmq.RECONNECT_IVL)


@pytest_twisted.ensureDeferred
async def test_disconnect_forgets_the_identity(closers: list, until: Any, within: Any) -> None:
    server, client = RecordingSink(), RecordingSink()
    listener = await listening(closers, server)
    conn = connecting(closers, listener.connect_endpoint, client)
    conn.peer.send(Ping())
    [(peer, _)] = await within(server.wait_for(1))
    assert list(listener.peers.values()) == [peer]

    peer.disconnect("heartbeat missed")
    peer.disconnect("again")  # idempotent
    assert listener.peers == {}
    peer.send(BackendJobStarted("dropped"))  # a forgotten peer is not sent to
    conn.peer.send(Ping())
    await within(server.wait_for(2))
    again = server.messages[1][0]
    assert server.connected == [peer, again]
    # A forgotten session stays forgotten: what comes next from that routing id is a new peer.
    assert again != peer and again.address != peer.address
    again.send(BackendJobStarted("kept"))
    assert [m.job_id for _, m in await within(client.wait_for(1))] == ["kept"]
    assert server.disconnected == []  # forgetting is the role's decision: not reported back to it


@pytest_twisted.ensureDeferred
async def test_sending_to_a_departed_peer_is_logged_not_raised(
    closers: list, raw: Any, until: Any, within: Any, log_events: Any
) -> None:
    server = RecordingSink()
    listener = await listening(closers, server)
    dealer = raw(zmq.DEALER, identity=b"leaver")
    dealer.connect(listener.connect_endpoint[len("zmq:") :])
    dealer.send(Ping().dump())
    [(peer, _)] = await within(server.wait_for(1))
    dealer.close()

    def sent_and_dropped() -> bool:
        peer.send(Pong())  # never raises
        return peer.forgotten

    # The session ends when the socket monitor reports the connection closed
    # (checked before every send), or else when a send finds it unconnected.
    await until(sent_and_dropped, what="a send to a departed peer to be dropped")
    if log_events.has(peer.description, "not connected"):
        # A failed send may have consumed the socket's edge-triggered read
        # notification: the listener must look at its socket again anyway, or a
        # message that arrived meanwhile would wait for the next good send.
        assert listener._conn.read_scheduled is not None
    # Its session ends with its connection: the role hears of it, on its own reactor turn.
    await until(lambda: server.disconnected == [(peer, "its connection closed")])
    assert listener.peers == {}
    other = raw(zmq.DEALER, identity=b"stayer")
    other.connect(listener.connect_endpoint[len("zmq:") :])
    other.send(Ping().dump())
    await within(server.wait_for(2))


@pytest_twisted.ensureDeferred
async def test_messages_sent_before_the_server_listens_are_delivered(
    closers: list, short_tmp: str, until: Any, within: Any
) -> None:
    from twisted.internet import reactor

    endpoint = f"zmq:ipc://{short_tmp}/late.ipc"
    client = RecordingSink()
    conn = connecting(closers, endpoint, client)
    conn.peer.send(ClientHello("early"))
    server = RecordingSink()
    listener = await _transport.listen(reactor, endpoint, server, Limits())
    closers.append(listener.stop)
    assert [m for _, m in await within(server.wait_for(1))] == [ClientHello("early")]


class CountingReactor:
    """The real reactor, counting the calls made to it."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.calls: Counter = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


@pytest_twisted.ensureDeferred
async def test_everything_runs_on_the_injected_reactor(closers: list, until: Any, within: Any) -> None:
    from twisted.internet import reactor

    counting = CountingReactor(reactor)
    server, client = RecordingSink(), RecordingSink()
    listener = await _transport.listen(counting, "zmq:tcp://127.0.0.1:*", server, Limits())
    closers.append(listener.stop)
    conn = _transport.connect(counting, listener.connect_endpoint, client, Limits())
    closers.append(conn.stop)
    assert counting.calls["addReader"] == 4  # the ROUTER, its monitor, the DEALER and the ZAP handler
    await until(lambda: client.connected)
    before = counting.calls["callLater"]
    conn.peer.send(Ping())
    [(peer, _)] = await within(server.wait_for(1))
    peer.send(Pong())
    await within(client.wait_for(1))
    assert counting.calls["callLater"] > before  # the post-send read checks
    await conn.stop()
    await listener.stop()
    assert counting.calls["removeReader"] == 4


def test_one_lazy_context_per_transport() -> None:
    a, b = ZmqTransport(), ZmqTransport()
    assert a._context is None
    assert a.context is a.context and a.context is not b.context
    a.close()
    b.close()
    assert a._context is None


@pytest_twisted.ensureDeferred
async def test_bad_endpoints_are_clear_errors(closers: list) -> None:
    from twisted.internet import reactor

    with pytest.raises(ValueError, match="zmq:tcp://HOST:PORT"):
        await _transport.listen(reactor, "zmq:nonsense", RecordingSink(), Limits())
    listener = await listening(closers, RecordingSink())
    with pytest.raises(ValueError, match="cannot listen on"):
        await _transport.listen(reactor, listener.connect_endpoint, RecordingSink(), Limits())
    with pytest.raises(ValueError, match="not a ZeroMQ endpoint"):
        _transport.connect(reactor, "zmq:", RecordingSink(), Limits())
    with pytest.raises(ValueError, match="cannot connect"):
        _transport.connect(reactor, "zmq:bogus://x", RecordingSink(), Limits())


class FailingSink(RecordingSink):
    def message_received(self, peer: Any, message: Any) -> None:
        if message == Ping():
            raise RuntimeError("handler bug")
        super().message_received(peer, message)


@pytest_twisted.ensureDeferred
async def test_a_failing_handler_does_not_stop_the_reader(closers: list, within: Any, log_events: Any) -> None:
    server = FailingSink()
    listener = await listening(closers, server)
    conn = connecting(closers, listener.connect_endpoint, RecordingSink())
    conn.peer.send(Ping())
    conn.peer.send(Pong())
    assert [m for _, m in await within(server.wait_for(1))] == [Pong()]
    assert log_events.has("handler failed")
