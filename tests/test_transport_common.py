"""Both transport plugins through the same tests, over real sockets.

Kinds: ZeroMQ over TCP and IPC, stream over TCP and Unix sockets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
import pytest_twisted
from zope.interface.verify import verifyClass, verifyObject

from inginious_tx.interfaces import IConnection, IListener, IPeer, ITransport
from inginious_tx.messages import ALL_MESSAGES, ClientNewJob, MessageMeta, Ping
from inginious_tx.testing import RecordingSink
from inginious_tx.transport import Limits, UnknownEndpoint, transport_for
from inginious_tx.transport import connect as connect_any
from inginious_tx.transport import listen as listen_any
from inginious_tx.transport.stream import StreamTransport
from inginious_tx.transport.zmq import ZmqTransport

VECTORS = Path(__file__).parent / "data" / "wire-vectors-0.6.json"


def samples() -> List[Any]:
    """One sample message of each of the 18 types, in ALL_MESSAGES order."""
    by_type: Dict[str, Any] = {}
    for vector in json.loads(VECTORS.read_text()):
        by_type.setdefault(vector["msgtype"], MessageMeta.load(bytes.fromhex(vector["hex"])))
    return [by_type[cls.msgtype] for cls in ALL_MESSAGES]


def fast_stream() -> StreamTransport:
    return StreamTransport(retry_policy=lambda attempt: 0.05)


_zmq = ZmqTransport()
_LIMITS = Limits()
KINDS = ["zmq-tcp", "zmq-ipc", "tcp", "unix"]


@pytest.fixture(params=KINDS)
def kind(request: Any, short_tmp: str) -> Any:
    """(transport, listening endpoint) for each kind of link."""
    return {
        "zmq-tcp": (_zmq, "zmq:tcp://127.0.0.1:*"),
        "zmq-ipc": (_zmq, f"zmq:ipc://{short_tmp}/s.ipc"),
        "tcp": (fast_stream(), "tcp:0"),
        "unix": (fast_stream(), f"unix:{short_tmp}/s.sock"),
    }[request.param]


async def open_pair(
    transport: Any, endpoint: str, closers: list, until: Any, within: Any, limits: Limits = _LIMITS
) -> Any:
    """A listener and a connection to it; returns (listener, connection, server sink, client sink,
    the server's peer for the client) once both ends know each other."""
    from twisted.internet import reactor

    server, client = RecordingSink(), RecordingSink()
    listener = await transport.listen(reactor, endpoint, server, limits)
    closers.append(listener.stop)
    conn = transport.connect(reactor, listener.connect_endpoint, client, limits)
    closers.append(conn.stop)
    await until(lambda: client.connected, what="client connected")
    # A ZeroMQ listener learns of a peer from its first message.
    conn.peer.send(Ping())
    await within(server.wait_for(1))
    peer = server.messages[0][0]
    assert server.connected == [peer]
    del server.messages[:]
    return listener, conn, server, client, peer


def test_transports_provide_the_interface() -> None:
    for cls in (ZmqTransport, StreamTransport):
        assert verifyClass(ITransport, cls)
        assert verifyObject(ITransport, cls())


def test_samples_cover_every_type() -> None:
    assert [type(m) for m in samples()] == list(ALL_MESSAGES)
    assert len(ALL_MESSAGES) == 18


@pytest.mark.parametrize(
    "endpoint, plugin",
    [
        ("zmq:tcp://127.0.0.1:2001", ZmqTransport),
        ("zmq:ipc:///tmp/agents", ZmqTransport),
        ("tcp:2001:interface=127.0.0.1", StreamTransport),
        ("tcp6:2001", StreamTransport),
        ("unix:/run/inginious/agents.sock", StreamTransport),
        ("ssl:2001:privateKey=k.pem", StreamTransport),
    ],
)
def test_transport_for_picks_the_plugin(endpoint: str, plugin: type) -> None:
    chosen = transport_for(endpoint)
    assert isinstance(chosen, plugin)
    assert chosen.handles(endpoint)


@pytest.mark.parametrize("endpoint", ["bogus:1234", "http://example.org", "2001", ""])
def test_transport_for_unknown_endpoint_is_a_clear_error(endpoint: str) -> None:
    with pytest.raises(UnknownEndpoint) as info:
        transport_for(endpoint)
    text = str(info.value)
    assert repr(endpoint) in text
    assert "zmq:tcp://" in text and "unix:" in text


@pytest_twisted.ensureDeferred
async def test_module_level_listen_and_connect_route_by_endpoint(closers: list, until: Any, within: Any) -> None:
    from twisted.internet import reactor

    for endpoint in ("zmq:tcp://127.0.0.1:*", "tcp:0"):
        server, client = RecordingSink(), RecordingSink()
        listener = await listen_any(reactor, endpoint, server)
        closers.append(listener.stop)
        conn = connect_any(reactor, listener.connect_endpoint, client)
        closers.append(conn.stop)
        await until(lambda c=client: c.connected, what="client connected")  # stream: sends before that are dropped
        conn.peer.send(Ping())
        assert [m for _, m in await within(server.wait_for(1))] == [Ping()]


@pytest_twisted.ensureDeferred
async def test_every_message_type_both_ways(kind: Any, closers: list, until: Any, within: Any) -> None:
    transport, endpoint = kind
    listener, conn, server, client, peer = await open_pair(transport, endpoint, closers, until, within)

    assert verifyObject(IListener, listener)
    assert verifyObject(IConnection, conn)
    assert verifyObject(IPeer, conn.peer)
    assert verifyObject(IPeer, peer)
    assert isinstance(peer.address, bytes) and peer.address
    assert isinstance(conn.peer.address, bytes) and isinstance(conn.peer.description, str)
    assert hash(peer) == hash(peer) and {peer: 1}[peer] == 1

    sent = samples()
    for message in sent:
        conn.peer.send(message)
    received = await within(server.wait_for(len(sent)))
    assert [m for _, m in received] == sent
    assert all(p == peer for p, _ in received)

    for message in sent:
        peer.send(message)
    received = await within(client.wait_for(len(sent)))
    assert [m for _, m in received] == sent
    assert all(p is conn.peer for p, _ in received)
    assert server.connected == [peer] and client.connected == [conn.peer]


@pytest_twisted.ensureDeferred
async def test_burst_of_10000_arrives_complete_and_in_order(kind: Any, closers: list, until: Any, within: Any) -> None:
    transport, endpoint = kind
    listener, conn, server, client, peer = await open_pair(transport, endpoint, closers, until, within)
    n = 10_000

    def job(i: int) -> Any:
        return ClientNewJob(
            str(i), 0, "course", "task", {"q": "x" * 50}, "default", False, 30, None, 100, False, "test", None
        )

    for i in range(n):
        conn.peer.send(job(i))
    got = await within(server.wait_for(n), 10)
    assert [m.job_id for _, m in got] == [str(i) for i in range(n)]

    for i in range(n):
        peer.send(job(i))
    got = await within(client.wait_for(n), 10)
    assert [m.job_id for _, m in got] == [str(i) for i in range(n)]


@pytest_twisted.ensureDeferred
async def test_stopped_connection_drops_sends_quietly(kind: Any, closers: list, until: Any, within: Any) -> None:
    transport, endpoint = kind
    listener, conn, server, client, peer = await open_pair(transport, endpoint, closers, until, within)
    await conn.stop()
    assert client.disconnected and client.disconnected[-1][0] is conn.peer
    conn.peer.send(Ping())  # dropped, no exception
    await listener.stop()
    peer.send(Ping())  # dropped, no exception
    assert [m for _, m in client.messages] == []
