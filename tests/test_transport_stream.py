"""The stream transport: framing, bad input, slow readers, reconnection.

Protocol-level tests use StringTransport and MemoryReactorClock (no real
time); integration tests use real TCP and Unix sockets.
"""

from __future__ import annotations

import struct
from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from inginious_tx.interfaces import IConnection, IPeer
from inginious_tx.messages import AgentJobDone, BackendJobStarted, ClientHello, Ping, Pong
from inginious_tx.testing import RecordingSink
from inginious_tx.transport import Limits
from inginious_tx.transport.stream import (
    IPartialHolder,
    StreamListener,
    StreamTransport,
    _ServerFactory,
    listening_endpoint,
)

_LIMITS = Limits()


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def fast() -> StreamTransport:
    return StreamTransport(retry_policy=lambda attempt: 0.05)


# ---------------------------------------------------------------------------
# Protocol unit tests (StringTransport)
# ---------------------------------------------------------------------------


def server_protocol(limits: Limits = _LIMITS, accepted: bool = True, clock: Any = None) -> Any:
    """A server-side protocol on a StringTransport, and the sink it delivers to.

    ``accepted``: as if the role had accepted the peer's hello already.
    """
    sink = RecordingSink()
    listener = StreamListener("tcp:0", sink, limits, clock or Clock())
    protocol = _ServerFactory(listener).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    if accepted:
        protocol.peer.accepted()
    return protocol, transport, sink


def test_a_full_partial_frame_budget_closes_the_oldest_partial_frame_not_the_newcomer() -> None:
    """Audit (MEDIUM): a peer filling --max-partial-bytes with frames it never finishes used to get
    every later large frame refused (its sender disconnected).  Now the oldest partial frame goes."""
    sink = RecordingSink()
    listener = StreamListener("tcp:0", sink, Limits(max_partial_bytes=100), Clock())
    factory = _ServerFactory(listener)
    peers = []
    for _ in range(3):
        protocol, transport = factory.buildProtocol(None), StringTransport()
        protocol.makeConnection(transport)
        protocol.peer.accepted()
        peers.append((protocol, transport))
    (hostile, hostile_t), (honest, honest_t), (third, third_t) = peers
    payload = ClientHello("x" * 70).dump()
    hostile.dataReceived(frame(payload)[:60])
    honest.dataReceived(frame(payload)[:60])  # 120 > 100: the hostile one, older, is closed
    assert hostile_t.disconnecting and not honest_t.disconnecting
    assert listener.budget.used == 60 and listener.budget.evictions == 1
    honest.dataReceived(frame(payload)[60:])
    assert [m for _, m in sink.messages] == [ClientHello("x" * 70)]
    assert listener.budget.used == 0 and listener.budget.holders() == 0
    # A frame larger than the whole budget closes its own connection, and no other.
    honest.dataReceived(frame(payload)[:60])
    third.dataReceived(struct.pack(">I", 200) + b"\0" * 120)
    assert third_t.disconnecting and not honest_t.disconnecting and listener.budget.used == 60
    assert third.close_reason.endswith("(limits.max_partial_bytes), and it alone would exceed them")
    assert verifyObject(IPartialHolder, honest)


def test_a_stalled_partial_frame_is_closed_at_its_deadline_and_a_completed_one_is_not() -> None:
    clock = Clock()
    protocol, transport, sink = server_protocol(Limits(partial_frame_timeout=5.0), clock=clock)
    data = frame(ClientHello("y" * 50).dump())
    protocol.dataReceived(data[:20])
    clock.advance(4)
    protocol.dataReceived(data[20:])  # completed in time: its deadline goes
    assert not clock.getDelayedCalls() and [m for _, m in sink.messages] == [ClientHello("y" * 50)]
    protocol.dataReceived(data[:20])
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting and protocol.budget.used == 0
    assert protocol.close_reason.startswith("a frame was not completed within 5 s (20 of ")


def test_frames_split_anyhow_arrive_whole_and_in_order() -> None:
    protocol, transport, sink = server_protocol()
    messages = [ClientHello(str(i) * i) for i in range(1, 30)]
    data = b"".join(frame(m.dump()) for m in messages)
    for i in range(len(data)):  # one byte at a time
        protocol.dataReceived(data[i : i + 1])
    protocol.dataReceived(data)  # all at once
    protocol.dataReceived(data[:7] + data[7:] + data)  # coalesced
    assert [m for _, m in sink.messages] == messages * 4
    assert not transport.disconnected
    [peer] = sink.connected
    assert verifyObject(IPeer, peer)
    assert peer.address == peer.description.encode() and peer.description.startswith("tcp:192.168.1.1:54321#")


def test_a_large_frame_in_many_chunks() -> None:
    protocol, transport, sink = server_protocol()
    big = AgentJobDone((b"c", "j"), ("success", "ok"), 100.0, {}, {}, {}, "", b"\x1f" * 3_000_000, None, None).dump()
    data = frame(big) + frame(Ping().dump())
    for i in range(0, len(data), 65536):
        protocol.dataReceived(data[i : i + 65536])
    assert [type(m) for _, m in sink.messages] == [AgentJobDone, Ping]
    assert sink.messages[0][1].archive == b"\x1f" * 3_000_000


def test_oversized_frame_aborts_with_a_reason(log_events: Any) -> None:
    protocol, transport, sink = server_protocol(Limits(max_frame=100))
    protocol.dataReceived(frame(Ping().dump()) + struct.pack(">I", 101) + b"x" * 20 + frame(Ping().dump()))
    assert transport.disconnected
    assert [m for _, m in sink.messages] == [Ping()]  # what came before is delivered, nothing after
    protocol.connectionLost(Failure(Exception("aborted")))
    [(peer, reason)] = sink.disconnected
    assert reason == "frame of 101 bytes exceeds the maximum of 100 bytes"
    assert log_events.has(peer.description, reason)


def test_undecodable_payload_aborts_with_a_reason(log_events: Any) -> None:
    protocol, transport, sink = server_protocol()
    protocol.dataReceived(frame(b"\x93\x01\x02\x03") + frame(Ping().dump()))
    assert transport.disconnected
    assert sink.messages == []
    protocol.dataReceived(frame(Ping().dump()))  # ignored once closing
    protocol.connectionLost(Failure(Exception("aborted")))
    [(_, reason)] = sink.disconnected
    assert reason.startswith("undecodable message:") and "map" in reason
    assert log_events.has("undecodable message")


def test_a_peer_that_does_not_read_is_dropped() -> None:
    protocol, transport, sink = server_protocol(Limits(max_send_buffer=10_000))
    [peer] = sink.connected
    message = BackendJobStarted("x" * 1000)
    for _ in range(50):
        peer.send(message)  # the buffer is not full yet: nothing counted
    assert not transport.disconnected
    transport.producer.pauseProducing()  # what the transport says when its buffer is full
    for _ in range(9):
        peer.send(message)
    assert not transport.disconnected
    transport.producer.resumeProducing()  # drained: the count starts again
    transport.producer.pauseProducing()
    for _ in range(9):
        peer.send(message)
    assert not transport.disconnected
    peer.send(message)
    assert transport.disconnected
    sent = len(transport.value())
    peer.send(message)  # dropped: the connection is closing
    assert len(transport.value()) == sent
    protocol.connectionLost(Failure(Exception("aborted")))
    assert "does not read" in sink.disconnected[0][1]


class ExplodingSink(RecordingSink):
    def message_received(self, peer: Any, message: Any) -> None:
        if message == Ping():
            raise RuntimeError("handler bug")
        super().message_received(peer, message)


def test_a_failing_handler_keeps_the_connection(log_events: Any) -> None:
    sink = ExplodingSink()
    protocol = _ServerFactory(StreamListener("tcp:0", sink, _LIMITS)).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(frame(Ping().dump()) + frame(Pong().dump()))
    assert [m for _, m in sink.messages] == [Pong()]
    assert not transport.disconnected
    assert log_events.has("handler failed")


def test_connection_retries_on_the_injected_clock() -> None:
    reactor = MemoryReactorClock()
    sink = RecordingSink()
    conn = StreamTransport(retry_policy=lambda attempt: 0.5 * attempt).connect(
        reactor, "tcp:host=127.0.0.1:port=2001", sink, _LIMITS
    )
    assert verifyObject(IConnection, conn)
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [("127.0.0.1", 2001)]
    conn.peer.send(Ping())  # not connected: dropped, no error

    def fail_attempt(i: int) -> None:
        factory = reactor.tcpClients[i][2]
        factory.clientConnectionFailed(reactor.connectors[i], Failure(ConnectionRefusedError()))

    fail_attempt(0)
    reactor.advance(0.49)
    assert len(reactor.tcpClients) == 1
    reactor.advance(0.02)
    assert len(reactor.tcpClients) == 2
    fail_attempt(1)
    reactor.advance(0.99)  # second attempt: a longer delay
    assert len(reactor.tcpClients) == 2
    reactor.advance(0.02)
    assert len(reactor.tcpClients) == 3

    protocol = reactor.tcpClients[2][2].buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert sink.connected == [conn.peer] and conn.protocol is not None
    conn.peer.send(Ping())
    assert transport.value() == frame(Ping().dump())
    protocol.dataReceived(frame(Pong().dump()))
    assert sink.messages == [(conn.peer, Pong())]


def test_listening_defaults_to_loopback(log_events: Any) -> None:
    assert listening_endpoint("tcp:2001") == "tcp:2001:interface=127.0.0.1"
    assert listening_endpoint("ssl:2001:privateKey=k.pem") == "ssl:2001:privateKey=k.pem:interface=127.0.0.1"
    assert listening_endpoint("tcp6:2001") == r"tcp6:2001:interface=\:\:1"
    assert log_events.has("tcp:2001", "127.0.0.1 only")
    for explicit in ("tcp:2001:interface=0.0.0.0", "tcp:port=2001:interface=10.1.2.3", "unix:/tmp/x.sock"):
        assert listening_endpoint(explicit) == explicit


# ---------------------------------------------------------------------------
# Integration tests (real sockets)
# ---------------------------------------------------------------------------


class RawClient(Protocol):
    """Writes what it is told and records whether the server closed the connection."""

    def __init__(self) -> None:
        self.lost: Deferred = Deferred()
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


async def raw_client(endpoint: str, closers: list) -> RawClient:
    from twisted.internet import reactor

    protocol = await connectProtocol(clientFromString(reactor, endpoint), RawClient())
    closers.append(protocol.transport.abortConnection)
    return protocol


@pytest.fixture(params=["tcp", "unix"])
def endpoint(request: Any, short_tmp: str) -> str:
    return "tcp:0" if request.param == "tcp" else f"unix:{short_tmp}/s.sock"


async def serve(endpoint: str, closers: list, limits: Limits = _LIMITS) -> Any:
    from twisted.internet import reactor

    sink = RecordingSink(accept=True)
    listener = await fast().listen(reactor, endpoint, sink, limits)
    closers.append(listener.stop)
    return listener, sink


async def good_client_round_trip(listener: Any, server: RecordingSink, closers: list, until: Any, within: Any) -> None:
    """A well-behaved client connects, sends, and gets an answer."""
    from twisted.internet import reactor

    client = RecordingSink()
    conn = fast().connect(reactor, listener.connect_endpoint, client, _LIMITS)
    closers.append(conn.stop)
    await until(lambda: client.connected, what="the good client to connect")
    before = len(server.messages)
    conn.peer.send(ClientHello("good"))
    await within(server.wait_for(before + 1))
    peer, message = server.messages[before]
    assert message == ClientHello("good")
    peer.send(Pong())
    assert [m for _, m in await within(client.wait_for(1))] == [Pong()]


@pytest_twisted.ensureDeferred
async def test_garbage_closes_that_connection_only(
    endpoint: str, closers: list, until: Any, within: Any, log_events: Any
) -> None:
    listener, server = await serve(endpoint, closers)
    raw = await raw_client(listener.connect_endpoint, closers)
    raw.transport.write(frame(Ping().dump()) + frame(b"\xc1 garbage") + frame(Ping().dump()))
    await within(raw.lost)
    await until(lambda: server.disconnected, what="the server to see the bad peer go")
    [(bad, reason)] = server.disconnected
    assert reason.startswith("undecodable message: not a msgpack message")
    assert [(p, m) for p, m in server.messages] == [(bad, Ping())]
    assert log_events.has(bad.description, "undecodable message")
    await good_client_round_trip(listener, server, closers, until, within)


@pytest_twisted.ensureDeferred
async def test_oversized_frame_closes_that_connection_only(
    endpoint: str, closers: list, until: Any, within: Any, log_events: Any
) -> None:
    listener, server = await serve(endpoint, closers, Limits(max_frame=4096))
    raw = await raw_client(listener.connect_endpoint, closers)
    raw.transport.write(struct.pack(">I", 1 << 30) + b"\x00" * 100)
    await within(raw.lost)
    await until(lambda: server.disconnected, what="the server to see the bad peer go")
    [(bad, reason)] = server.disconnected
    assert reason == f"frame of {1 << 30} bytes exceeds the maximum of 4096 bytes"
    assert log_events.has(bad.description, "exceeds the maximum")
    await good_client_round_trip(listener, server, closers, until, within)


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_is_dropped(closers: list, until: Any, within: Any) -> None:
    listener, server = await serve("tcp:0", closers, Limits(max_send_buffer=1 << 20))
    raw = await raw_client(listener.connect_endpoint, closers)
    raw.transport.pauseProducing()  # never reads
    await until(lambda: server.connected)
    [peer] = server.connected
    message = BackendJobStarted("x" * 16_000)
    for _ in range(200):  # 3.2 MB for a 1 MiB allowance
        peer.send(message)
    await until(lambda: server.disconnected, what="the slow reader to be dropped")
    assert "does not read" in server.disconnected[0][1]
    await good_client_round_trip(listener, server, closers, until, within)


@pytest_twisted.ensureDeferred
async def test_a_large_message_over_a_real_socket(endpoint: str, closers: list, until: Any, within: Any) -> None:
    from twisted.internet import reactor

    listener, server = await serve(endpoint, closers)
    client = RecordingSink()
    conn = fast().connect(reactor, listener.connect_endpoint, client, _LIMITS)
    closers.append(conn.stop)
    await until(lambda: client.connected)
    archive = bytes(range(256)) * 40_000  # 10 MB
    done = AgentJobDone((b"c", "j"), ("success", "ok"), 100.0, {}, {}, {}, "", archive, None, None)
    conn.peer.send(done)
    conn.peer.send(Ping())
    got = await within(server.wait_for(2), 10)
    assert [m for _, m in got] == [done, Ping()]


@pytest_twisted.ensureDeferred
async def test_reconnects_after_the_server_restarts(endpoint: str, closers: list, until: Any, within: Any) -> None:
    from twisted.internet import reactor

    listener, server = await serve(endpoint, closers)
    where = listener.connect_endpoint
    client = RecordingSink()
    conn = fast().connect(reactor, where, client, _LIMITS)
    closers.append(conn.stop)
    await until(lambda: client.connected == [conn.peer])
    conn.peer.send(Ping())
    await within(server.wait_for(1))

    await listener.stop()
    await until(lambda: client.disconnected, what="the client to see the server go")
    assert client.disconnected[0][0] is conn.peer
    conn.peer.send(ClientHello("lost"))  # dropped while disconnected

    again = RecordingSink()
    relisten = where.replace("tcp:host=127.0.0.1:port=", "tcp:interface=127.0.0.1:port=")
    listener2 = await fast().listen(reactor, relisten, again, _LIMITS)
    closers.append(listener2.stop)
    await until(lambda: client.connected == [conn.peer, conn.peer], what="the client to reconnect")
    conn.peer.send(ClientHello("back"))
    assert [m for _, m in await within(again.wait_for(1))] == [ClientHello("back")]
    again.messages[0][0].send(Pong())
    assert [m for _, m in await within(client.wait_for(1))] == [Pong()]


@pytest_twisted.ensureDeferred
async def test_reconnect_makes_a_new_connection(closers: list, until: Any, within: Any) -> None:
    from twisted.internet import reactor

    listener, server = await serve("tcp:0", closers)
    client = RecordingSink()
    conn = fast().connect(reactor, listener.connect_endpoint, client, _LIMITS)
    closers.append(conn.stop)
    await until(lambda: len(server.connected) == 1)
    conn.reconnect()
    await until(lambda: len(server.connected) == 2 and len(client.connected) == 2, what="a new connection")
    first, second = server.connected
    assert first != second and first.address != second.address
    assert server.disconnected[0][0] is first
    assert client.disconnected == [(conn.peer, "reconnect requested")]
    conn.peer.send(Ping())
    assert (await within(server.wait_for(1)))[0][0] is second


@pytest_twisted.ensureDeferred
async def test_stopping_ends_connections_for_good(closers: list, until: Any, within: Any) -> None:
    from twisted.internet import reactor

    listener, server = await serve("tcp:0", closers)
    assert "host=127.0.0.1" in listener.connect_endpoint  # loopback by default
    clients: List[RecordingSink] = [RecordingSink(), RecordingSink()]
    conns = [fast().connect(reactor, listener.connect_endpoint, c, _LIMITS) for c in clients]
    for conn in conns:
        closers.append(conn.stop)
    await until(lambda: len(server.connected) == 2)
    await within(conns[0].stop())
    assert not conns[0]._service.running
    assert clients[0].disconnected and clients[0].disconnected[0][0] is conns[0].peer
    await until(lambda: len(server.disconnected) == 1)

    await within(listener.stop())
    assert {r for _, r in server.disconnected[1:]} == {"listener stopped"}
    await until(lambda: clients[1].disconnected, what="the second client to see the listener stop")


def self_signed(folder: str) -> Any:
    """A certificate for 'localhost' (also its own CA) and its key, as PEM files."""
    import datetime
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(f"{folder}/ca")
    cert_path, key_path = f"{folder}/ca/cert.pem", f"{folder}/key.pem"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")  # inside Twisted's ssl: parser
@pytest_twisted.ensureDeferred
async def test_tls_is_a_matter_of_the_endpoint_string(closers: list, short_tmp: str, until: Any, within: Any) -> None:
    from twisted.internet import reactor

    cert, key = self_signed(short_tmp)
    listener, server = await serve(f"ssl:0:privateKey={key}:certKey={cert}", closers)
    assert listener.connect_endpoint.startswith("ssl:host=127.0.0.1:port=")
    client = RecordingSink()
    verified = f"{listener.connect_endpoint}:hostname=localhost:caCertsDir={short_tmp}/ca"
    conn = fast().connect(reactor, verified, client, _LIMITS)
    closers.append(conn.stop)
    await until(lambda: client.connected)
    conn.peer.send(ClientHello("over tls"))
    [(peer, message)] = await within(server.wait_for(1))
    assert message == ClientHello("over tls") and peer.description.startswith("ssl:127.0.0.1:")
    peer.send(Pong())
    assert [m for _, m in await within(client.wait_for(1))] == [Pong()]


@pytest_twisted.ensureDeferred
async def test_tcp6_listens_on_ipv6_loopback_by_default(closers: list, until: Any, within: Any) -> None:
    import socket

    from twisted.internet import reactor

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    listener, server = await serve("tcp6:0", closers)
    assert listener.connect_endpoint.startswith(r"tcp:host=\:\:1:port=")
    client = RecordingSink()
    conn = fast().connect(reactor, listener.connect_endpoint, client, _LIMITS)
    closers.append(conn.stop)
    await until(lambda: client.connected)
    conn.peer.send(Ping())
    [(peer, _)] = await within(server.wait_for(1))
    assert peer.description.startswith("tcp6:[::1]:")


@pytest_twisted.ensureDeferred
async def test_tcp_connections_disable_nagle(closers: list, until: Any) -> None:
    """Small messages must leave at once (Nagle + delayed ACKs cost ~40 ms a job)."""
    import socket

    from twisted.internet import reactor

    listener, server = await serve("tcp:0", closers)
    conn = fast().connect(reactor, listener.connect_endpoint, RecordingSink(), _LIMITS)
    closers.append(conn.stop)
    await until(lambda: len(listener.protocols) == 1 and conn.protocol is not None)
    for protocol in (next(iter(listener.protocols)), conn.protocol):
        handle = protocol.transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
