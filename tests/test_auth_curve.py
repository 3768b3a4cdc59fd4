"""CurveZMQ: only peers whose public key is allowed on an endpoint reach the
backend, over real ZeroMQ sockets.

Intruders are plain pyzmq sockets (so that nothing of ours could hide a
message) whose monitor tells when the server refused their handshake.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any, List, Optional

import pytest
import pytest_twisted
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from inginious_tx.agent.core import Agent
from inginious_tx.agent.mock import MockBackend
from inginious_tx.agent.result import AgentConfig
from inginious_tx.backend.service import BackendService
from inginious_tx.backend.testing import agent_hello, new_job
from inginious_tx.client import Client
from inginious_tx.messages import ClientHello
from inginious_tx.transport import curve

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


@dataclass
class Keys:
    """A server key pair; alice (a client), agent1 (an agent) and eve (nobody), each allowed where they belong."""

    folder: str

    @classmethod
    def make(cls, folder: str) -> Keys:
        for name in ("server", "alice", "agent1", "eve"):
            zmq.auth.create_certificates(folder, name)
        for allowed, who in (("clients", "alice"), ("agents", "agent1")):
            os.makedirs(f"{folder}/{allowed}")
            shutil.copy(f"{folder}/{who}.key", f"{folder}/{allowed}/{who}.key")
        return cls(folder)

    def listen(self, allowed: str) -> str:
        f = self.folder
        return f"zmq:tcp://127.0.0.1:*?curve-secret={f}/server.key_secret&curve-allowed={f}/{allowed}"

    def connect(self, listener: Any, who: str, server: str = "server") -> str:
        f = self.folder
        return f"{listener.connect_endpoint}?curve-secret={f}/{who}.key_secret&curve-server={f}/{server}.key"

    def public(self, who: str) -> str:
        return zmq.auth.load_certificate(f"{self.folder}/{who}.key")[0].decode()


@dataclass
class Stack:
    keys: Keys
    service: BackendService
    clients: Any
    agents: Any

    @property
    def backend(self) -> Any:
        return self.service.backend


@pytest_twisted.async_yield_fixture
async def stack(short_tmp: str, within: Any) -> Any:
    from twisted.internet import reactor

    keys = Keys.make(short_tmp)
    service = BackendService(reactor, [keys.listen("clients")], [keys.listen("agents")], shutdown_grace=0)
    service.startService()
    clients, agents = await within(service.ready)
    yield Stack(keys, service, clients, agents)
    await service.stopService()
    assert curve._handlers == {}  # the ZAP handler goes with the last CurveZMQ listener


@pytest.fixture
def raw_context() -> Any:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


class Intruder:
    """A raw DEALER socket that says hello as a client (and submits) or as an agent."""

    def __init__(self, context: zmq.Context, keys: Keys, listener: Any, role: str, who: Optional[str]) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.linger = 0
        if who is not None:
            public, secret = zmq.auth.load_certificate(f"{keys.folder}/{who}.key_secret")
            self.socket.curve_publickey, self.socket.curve_secretkey = public, secret
            self.socket.curve_serverkey = zmq.auth.load_certificate(f"{keys.folder}/server.key")[0]
        self.monitor = self.socket.get_monitor_socket()
        self.events: List[int] = []
        self.socket.connect(listener.connect_endpoint[len("zmq:") :])
        if role == "client":
            self.socket.send(ClientHello("intruder").dump())
            self.socket.send(new_job("intruder-job").dump())
        else:
            self.socket.send(agent_hello("intruder", 4, ["default"]).dump())

    def refused(self) -> bool:
        while True:
            try:
                self.events.append(recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"])
            except zmq.Again:
                return any(e & HANDSHAKE_FAILED for e in self.events)


async def honest_job_completes(stack: Stack, until: Any, within: Any, closers: list) -> None:
    """A listed agent registers and a listed client's job succeeds."""
    from twisted.internet import reactor

    keys = stack.keys
    agent = Agent(reactor, MockBackend(reactor, AgentConfig()), "agent1", 2, keys.connect(stack.agents, "agent1"))
    agent.startService()
    closers.append(agent.stopService)
    await until(lambda: [a.name for a in stack.backend.agents] == ["agent1"], what="the agent to register")
    client = Client(reactor, keys.connect(stack.clients, "alice"), "alice", connect_timeout=5)
    client.start()
    closers.append(client.stop)
    result = await within(client.new_job("course", "task", {"@mock_result": "success"}))
    assert result.result == "success", result


@pytest_twisted.ensureDeferred
async def test_listed_agent_and_client_work(stack: Stack, until: Any, within: Any, closers: list) -> None:
    assert stack.clients.connect_endpoint.startswith("zmq:tcp://127.0.0.1:")
    await honest_job_completes(stack, until, within, closers)
    assert [c.name for c in stack.backend.clients] == ["alice"]


#: (role, whose key or None) that must not get in.
REFUSED = [
    ("client", None),  # no CurveZMQ at all
    ("client", "eve"),  # a key listed nowhere
    ("client", "agent1"),  # an agent's key on the client endpoint
    ("agent", None),
    ("agent", "eve"),
    ("agent", "alice"),  # a client's key on the agent endpoint
]


@pytest.mark.parametrize("role,who", REFUSED, ids=[f"{r}-{w or 'nokey'}" for r, w in REFUSED])
@pytest_twisted.ensureDeferred
async def test_a_peer_without_an_allowed_key_gets_nothing_in(
    stack: Stack,
    role: str,
    who: Optional[str],
    raw_context: zmq.Context,
    until: Any,
    within: Any,
    closers: list,
    log_events: Any,
) -> None:
    listener = stack.clients if role == "client" else stack.agents
    intruder = Intruder(raw_context, stack.keys, listener, role, who)
    await until(intruder.refused, what="the server to refuse the intruder's handshake")
    if who is not None:  # a key was shown: the ZAP handler refused it, and said so
        assert log_events.has("refused a CurveZMQ peer", stack.keys.public(who), "is not allowed")
    await honest_job_completes(stack, until, within, closers)
    assert "intruder" not in [c.name for c in stack.backend.clients]
    assert "intruder" not in [a.name for a in stack.backend.agents]
    assert stack.backend.waiting_count == 0 and stack.backend.running_count == 0


@pytest.mark.parametrize(
    "who,server",
    [("eve", "server"), ("alice", "eve")],
    ids=["unlisted-key", "server-impersonated"],
)
@pytest_twisted.ensureDeferred
async def test_our_client_without_the_right_keys_gets_backend_unavailable(
    stack: Stack, who: str, server: str, within: Any, closers: list
) -> None:
    """An unlisted key, or a server that does not hold the secret key the client expects: no link."""
    from twisted.internet import reactor

    client = Client(reactor, stack.keys.connect(stack.clients, who, server), who, connect_timeout=0.5)
    client.start()
    closers.append(client.stop)
    result = await within(client.new_job("course", "task", {}))
    assert result.result == "crash" and "backend unavailable" in result.text
    assert stack.backend.clients == []


# -- endpoint strings ------------------------------------------------------------------


def test_query_parameters_are_percent_decoded(short_tmp: str) -> None:
    keys = Keys.make(short_tmp)
    os.rename(f"{short_tmp}/clients", f"{short_tmp}/a&b c")
    endpoint = (
        f"zmq:tcp://127.0.0.1:2000?curve-secret={short_tmp}/server.key_secret&curve-allowed={short_tmp}/a%26b%20c"
    )
    base, settings = curve.server_settings(endpoint)
    assert base == "zmq:tcp://127.0.0.1:2000"
    assert settings is not None and list(settings.allowed) == [keys.public("alice").encode()]
    assert curve.server_settings("zmq:tcp://127.0.0.1:2000") == ("zmq:tcp://127.0.0.1:2000", None)
    assert curve.allowed_keys(endpoint) == settings.allowed and curve.allowed_keys("tcp:2000") == {}


@pytest.mark.parametrize(
    "side,query,error",
    [
        ("listen", "curve-secret={f}/server.key_secret", "needs both"),
        ("listen", "curve-secret={f}/server.key&curve-allowed={f}/clients", "secret key"),
        ("listen", "curve-secret={f}/server.key_secret&curve-allowed={f}/none", "is not a folder"),
        ("listen", "curve-secret={f}/server.key_secret&curve-allowed={f}/empty", "holds no public key"),
        ("listen", "curve-secret={f}/server.key_secret&curve-allowed={f}/clients&curve-server=x", "for connecting"),
        ("listen", "curve-secret={f}/absent&curve-allowed={f}/clients", "cannot read the CurveZMQ key file"),
        ("connect", "curve-secret={f}/alice.key_secret", "needs both"),
        ("connect", "curve-secret={f}/alice.key_secret&curve-server={f}/server.key&curve-allowed=x", "for listening"),
        ("connect", "curve-key={f}/alice.key_secret", "bad parameter"),
        ("connect", "curve-secret=a&curve-secret=b", "given twice"),
    ],
)
def test_bad_curve_parameters_are_clear_errors(short_tmp: str, side: str, query: str, error: str) -> None:
    Keys.make(short_tmp)
    os.makedirs(f"{short_tmp}/empty", exist_ok=True)
    endpoint = "zmq:tcp://127.0.0.1:2000?" + query.format(f=short_tmp)
    parse = curve.server_settings if side == "listen" else curve.client_settings
    with pytest.raises(ValueError, match=error):
        parse(endpoint)


@pytest_twisted.ensureDeferred
async def test_a_bad_curve_listener_fails_the_start_and_leaves_no_zap_handler(short_tmp: str, within: Any) -> None:
    from twisted.internet import reactor

    keys = Keys.make(short_tmp)
    service = BackendService(
        reactor, [keys.listen("clients")], [keys.listen("agents").replace("127.0.0.1:*", "256.0.0.1:1")]
    )
    service.startService()
    with pytest.raises(ValueError, match="cannot listen"):
        await within(service.ready)
    await service.stopService()
    assert curve._handlers == {}
