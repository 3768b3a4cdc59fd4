"""Hostile peers against the transports, over real sockets and processes.

Part of the hostile-peer suite of issue 10: what a peer that does not play
by the rules (copies another's ZeroMQ routing id, never says hello, sends
huge frame headers, never reads) can make the backend do or hold.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from inginious_tx.backend.embedded import InProcessTransport
from inginious_tx.interfaces import IPeer
from inginious_tx.testing import MemoryTransport, RecordingSink
from inginious_tx.transport import Limits


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
