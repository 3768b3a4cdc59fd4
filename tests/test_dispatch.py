"""Dispatcher and MemoryTransport: messages reach the role's methods."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from inginious_tx import messages as M
from inginious_tx.dispatch import Dispatcher
from inginious_tx.interfaces import (
    IAgentHandler,
    IConnection,
    IListener,
    IMessageSink,
    IPeer,
    ITransport,
)
from inginious_tx.testing import MemoryTransport, RecordingSink


@implementer(IAgentHandler)
class RecordingAgent:
    def __init__(self):
        self.calls = []

    def peer_connected(self, peer):
        self.calls.append(("connected", peer))

    def peer_disconnected(self, peer, reason):
        self.calls.append(("disconnected", peer, reason))

    def backend_new_job(self, peer, message):
        self.calls.append(("new_job", message))

    def backend_kill_job(self, peer, message):
        raise RuntimeError("handler bug")

    def ping(self, peer, message):
        self.calls.append(("ping", message))
        peer.send(M.Pong())


def test_dispatcher_routes_by_role_and_logs_the_rest():
    transport = MemoryTransport()
    agent = RecordingAgent()
    server = RecordingSink()
    transport.listen(None, "mem:backend", server)
    unexpected = []
    sink = Dispatcher(agent, IAgentHandler, on_unexpected=lambda p, m: unexpected.append(m))
    verifyObject(IMessageSink, sink)
    conn = transport.connect(None, "mem:backend", sink)
    transport.pump()
    (to_agent,) = server.connected
    to_agent.send(M.Ping())
    to_agent.send(M.ClientHello("not for agents"))  # wrong side: logged, not raised
    to_agent.send(M.BackendKillJob((b"a", "j")))  # handler raises: logged, not raised
    to_agent.send(M.BackendNewJob((b"a", "j"), "c", "t", {}, "default", False, 10, None, 100, False, None))
    transport.pump()
    kinds = [c[0] for c in agent.calls]
    assert kinds == ["connected", "ping", "new_job"]
    assert unexpected == [M.ClientHello("not for agents")]
    assert [m for _, m in server.messages] == [M.Pong()]
    assert sink.handles(M.Ping) and not sink.handles(M.ClientHello)
    conn.stop()
    transport.pump()
    assert agent.calls[-1][0] == "disconnected"


def test_dispatcher_refuses_a_handler_without_the_role():
    with pytest.raises(TypeError):
        Dispatcher(object(), IAgentHandler)


def test_memory_transport_provides_the_interfaces():
    clock = Clock()
    transport = MemoryTransport(clock, autopump=True)
    verifyObject(ITransport, transport)
    server = RecordingSink()
    listener = transport.listen(clock, "mem:x", server).result
    verifyObject(IListener, listener)
    client = RecordingSink()
    conn = transport.connect(clock, "mem:x", client)
    verifyObject(IConnection, conn)
    verifyObject(IPeer, conn.peer)
    conn.peer.send(M.ClientHello("c"))
    clock.advance(0)
    assert [m for _, m in server.messages] == [M.ClientHello("c")]
    peer_seen_by_server = server.messages[0][0]
    conn.reconnect()
    clock.advance(0)
    assert server.disconnected[0][0] == peer_seen_by_server
    assert len(server.connected) == 2 and server.connected[1].address != peer_seen_by_server.address
    listener.stop()
    clock.advance(0)
    assert len(client.disconnected) == 2
