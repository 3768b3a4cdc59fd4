"""Every transport through the same tests: the two plugins over real sockets,
and the in-memory transport that the embedded agent and the tests use.

Kinds: ZeroMQ over TCP and IPC, stream over TCP and Unix sockets, memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
import pytest_twisted
from zope.interface.verify import verifyClass, verifyObject

from inginious_tx.interfaces import IConnection, IListener, IPeer, ITransport
from inginious_tx.messages import ALL_MESSAGES, ClientNewJob, MessageMeta, Ping, Pong
from inginious_tx.testing import MemoryTransport, RecordingSink
from inginious_tx.transport import Limits, UnknownEndpoint, transport_for
from inginious_tx.transport import connect as connect_any
from inginious_tx.transport import listen as listen_any
from inginious_tx.transport.stream import IProtocolOwner, StreamConnection, StreamListener, StreamTransport
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
KINDS = ["zmq-tcp", "zmq-ipc", "tcp", "unix", "memory"]


def _kind(name: str, short_tmp: str) -> Any:
    from twisted.internet import reactor

    if name == "memory":
        return MemoryTransport(reactor, autopump=True), "mem:contract"
    return {
        "zmq-tcp": (_zmq, "zmq:tcp://127.0.0.1:*"),
        "zmq-ipc": (_zmq, f"zmq:ipc://{short_tmp}/s.ipc"),
        "tcp": (fast_stream(), "tcp:0"),
        "unix": (fast_stream(), f"unix:{short_tmp}/s.sock"),
    }[name]


@pytest.fixture(params=KINDS)
def kind(request: Any, short_tmp: str) -> Any:
    """(transport, listening endpoint) for each kind of link."""
    return _kind(request.param, short_tmp)


async def open_pair(
    transport: Any,
    endpoint: str,
    closers: list,
    until: Any,
    within: Any,
    limits: Limits = _LIMITS,
    server: Any = None,
) -> Any:
    """A listener and a connection to it; returns (listener, connection, server sink, client sink,
    the server's peer for the client) once both ends know each other."""
    from twisted.internet import reactor

    server = server if server is not None else RecordingSink()
    client = RecordingSink()
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
    for cls in (ZmqTransport, StreamTransport, MemoryTransport):
        assert verifyClass(ITransport, cls)
        assert verifyObject(ITransport, cls())
    # a stream protocol reports to its owner through an interface, not private methods
    for owner in (StreamListener, StreamConnection):
        assert verifyClass(IProtocolOwner, owner)


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


@pytest_twisted.ensureDeferred
async def test_what_was_sent_before_stop_arrives(kind: Any, closers: list, until: Any, within: Any) -> None:
    # A peer's last words (an agent's last results, the kills of an
    # interrupted command) are written out before the link closes: stop()
    # is the flush, no timer needed.
    transport, endpoint = kind
    listener, conn, server, client, peer = await open_pair(transport, endpoint, closers, until, within)
    peer.send(Ping())  # the server has spoken on this link
    await within(client.wait_for(1))
    n = 3000
    for i in range(n):
        conn.peer.send(
            ClientNewJob(str(i), 0, "c", "t", {"pad": "x" * 2000}, "default", False, 30, None, 100, False, "x", None)
        )
    await within(conn.stop(), 10)
    got = await within(server.wait_for(n), 10)
    assert [m.job_id for _, m in got] == [str(i) for i in range(n)]


@pytest_twisted.ensureDeferred
async def test_the_connection_comes_back_after_the_server_drops_it(
    kind: Any, closers: list, until: Any, within: Any
) -> None:
    # The connecting side keeps its link until stop(): a server that drops
    # the peer hears from it again, with nothing done by the user.
    transport, endpoint = kind
    listener, conn, server, client, peer = await open_pair(transport, endpoint, closers, until, within)
    peer.disconnect("dropped by the test")

    def arrived() -> bool:
        conn.peer.send(Ping())  # sends while the link is down may be dropped
        return bool(server.messages)

    await until(arrived, 20, "a message after the drop")
    assert isinstance(server.messages[0][1], Ping)


# Listening again on a TCP port freed a moment ago races with every other
# socket of the machine: the drop test above covers the TCP kinds.
@pytest.mark.parametrize("name", [k for k in KINDS if "tcp" not in k])
@pytest_twisted.ensureDeferred
async def test_the_connection_comes_back_with_the_server(
    name: str, short_tmp: str, closers: list, until: Any, within: Any
) -> None:
    # ... and a server that stops and listens again on the same address is reached again.
    from twisted.internet import reactor

    transport, endpoint = _kind(name, short_tmp)
    listener, conn, server, client, peer = await open_pair(transport, endpoint, closers, until, within)
    await listener.stop()
    again = RecordingSink()
    relistener = await transport.listen(reactor, listener.connect_endpoint, again, _LIMITS)
    closers.append(relistener.stop)

    def arrived() -> bool:
        conn.peer.send(Ping())
        return bool(again.messages)

    await until(arrived, 20, "a message through the new listener")
    assert isinstance(again.messages[0][1], Ping)


class _Flaky(RecordingSink):
    """Raises on every Pong, records the rest."""

    def message_received(self, peer: Any, message: Any) -> None:
        if isinstance(message, Pong):
            raise RuntimeError("a bug in the handler")
        super().message_received(peer, message)


@pytest_twisted.ensureDeferred
async def test_a_sink_that_raises_is_logged_and_delivery_goes_on(
    kind: Any, closers: list, until: Any, within: Any, log_events: Any
) -> None:
    transport, endpoint = kind
    server = _Flaky()
    listener, conn, server, client, peer = await open_pair(transport, endpoint, closers, until, within, server=server)
    conn.peer.send(Pong())
    conn.peer.send(Ping())
    (received,) = await within(server.wait_for(1))
    assert isinstance(received[1], Ping)
    assert log_events.has("a bug in the handler") or any(
        "a bug in the handler" in str(e.get("log_failure", "")) for e in log_events
    )
