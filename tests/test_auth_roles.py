"""The authorisation rule shared by both transports: a peer allowed as a
client cannot register as an agent, and the other way round.

Each role has its own endpoint and its own credentials (a CA per role for
TLS, a folder of allowed keys per role for CurveZMQ); the backend refuses a
configuration that accepts one credential on both sides, and a credentialed
peer that speaks the other role's part on its endpoint gets nothing for it.
Last, everything deployed as processes: twistd backend and agent, and the
``inginious-tx`` command, each with its credentials.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, List

import pytest
import pytest_twisted
from test_auth_curve import Keys
from test_auth_tls import Pki
from test_cli_integration import cli, free_port, spawn_twistd, stop_daemons
from twisted.python import usage
from zope.interface import implementer

from inginious_tx.backend import tap as backend_tap
from inginious_tx.backend.roles import check_separate_credentials
from inginious_tx.backend.service import BackendService
from inginious_tx.backend.testing import agent_hello, new_job
from inginious_tx.cli import DEFAULT_BACKEND
from inginious_tx.interfaces import IMessageSink, IPeer
from inginious_tx.messages import ClientHello, Unknown
from inginious_tx.transport.stream import StreamTransport

# -- one credential on both sides is refused -------------------------------------------


def test_one_ca_for_both_roles_is_refused(short_tmp: str) -> None:
    pki = Pki.make(short_tmp)
    same = pki.listen(pki.clients_ca)
    with pytest.raises(ValueError, match="CA certificate CN=clients-ca .* accepted both on the client endpoint"):
        check_separate_credentials([same], [same.replace("ssl:0", "ssl:1")])
    # The same CA under another file name is the same CA.
    shutil.copy(pki.clients_ca.path, f"{short_tmp}/copy.pem")
    copy = same.replace(pki.clients_ca.path, f"{short_tmp}/copy.pem")
    with pytest.raises(ValueError, match="a client could register as an agent"):
        check_separate_credentials([same], [pki.listen(pki.agents_ca), copy])
    check_separate_credentials([same], [pki.listen(pki.agents_ca)])  # separate CAs: fine


def test_one_curve_key_for_both_roles_is_refused(short_tmp: str) -> None:
    keys = Keys.make(short_tmp)
    with pytest.raises(ValueError, match="CurveZMQ public key .* accepted both"):
        check_separate_credentials([keys.listen("clients")], [keys.listen("clients")])
    shutil.copy(f"{short_tmp}/alice.key", f"{short_tmp}/agents/alice.key")  # alice listed as an agent too
    with pytest.raises(ValueError) as refused:
        check_separate_credentials([keys.listen("clients")], [keys.listen("agents")])
    assert keys.public("alice") in str(refused.value) and "agents/alice.key" in str(refused.value)


def test_unrelated_and_unreadable_endpoints_pass_the_check(short_tmp: str) -> None:
    keys = Keys.make(short_tmp)
    check_separate_credentials(["tcp:2000", "zmq:tcp://127.0.0.1:2000"], ["tcp:2001", "unix:/x"])
    check_separate_credentials([keys.listen("clients")], [keys.listen("agents")])
    # Unreadable files are left to listen(), which reports them.
    check_separate_credentials([f"ssl:1:caCertsFile={short_tmp}/none.pem"], [f"ssl:2:caCertsFile={short_tmp}/none.pem"])


def test_the_backend_options_and_service_enforce_the_rule(short_tmp: str) -> None:
    from twisted.internet import reactor

    keys = Keys.make(short_tmp)
    shared = keys.listen("clients")
    with pytest.raises(usage.UsageError, match="a client could register as an agent"):
        backend_tap.Options().parseOptions(["--clients", shared, "--agents", shared.replace("*", "2001")])
    with pytest.raises(ValueError, match="a client could register as an agent"):
        BackendService(reactor, [shared], [shared])
    options = backend_tap.Options()
    options.parseOptions(["--clients", keys.listen("clients"), "--agents", keys.listen("agents")])
    assert options["agents"] == [keys.listen("agents")]


@pytest.mark.parametrize(
    "backend,error",
    [
        ("ssl:host=h:port=1:caCertsFile={f}/absent.pem", "--backend: cannot read certificate file"),
        ("zmq:tcp://h:1?curve-secret={f}/absent&curve-server={f}/server.key", "--backend: cannot read the CurveZMQ"),
        ("zmq:tcp://h:1?curve-secret={f}/agent1.key_secret", "needs both"),
    ],
)
def test_the_agent_refuses_unusable_credentials_before_it_starts(short_tmp: str, backend: str, error: str) -> None:
    from inginious_tx.agent import tap as agent_tap

    Keys.make(short_tmp)
    with pytest.raises(usage.UsageError, match=error):
        agent_tap.Options().parseOptions(["--kind", "mock", "--backend", backend.format(f=short_tmp)])
    good = agent_tap.Options()
    good.parseOptions(["--kind", "mock", "--backend", f"zmq:tcp://h:1?curve-secret={short_tmp}/agent1.key_secret"
                       f"&curve-server={short_tmp}/server.key"])  # fmt: skip
    assert good["backend"].startswith("zmq:tcp://h:1?")


def test_every_default_endpoint_is_on_loopback() -> None:
    options = backend_tap.Options()
    options.parseOptions(["--agents", backend_tap.DEFAULT_AGENTS])
    assert options["clients"] == ["zmq:tcp://127.0.0.1:2000"]
    assert options["agents"] == ["zmq:tcp://127.0.0.1:2001"]
    assert DEFAULT_BACKEND == "zmq:tcp://127.0.0.1:2000"


# -- a credentialed peer speaking the other role's part -------------------------------------


@implementer(IMessageSink)
class Impostor:
    """Connects with valid credentials for one endpoint and speaks the other role's part."""

    def __init__(self, endpoint: str, says: List[Any]) -> None:
        from twisted.internet import reactor

        self.says = says
        self.received: List[Any] = []
        self.connection = StreamTransport(retry_policy=lambda a: 0.1).connect(reactor, endpoint, self)

    def peer_connected(self, peer: IPeer) -> None:
        for message in self.says:
            peer.send(message)

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        pass

    def message_received(self, peer: IPeer, message: Any) -> None:
        self.received.append(message)


@pytest_twisted.ensureDeferred
async def test_a_client_saying_agent_hello_is_no_agent_and_the_reverse(
    short_tmp: str, until: Any, within: Any, closers: list, log_events: Any
) -> None:
    from twisted.internet import reactor

    pki = Pki.make(short_tmp)
    service = BackendService(reactor, [pki.listen(pki.clients_ca)], [pki.listen(pki.agents_ca)], shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    clients, agents = await within(service.ready)
    backend = service.backend

    client = Impostor(pki.connect(clients, "alice"), [agent_hello("alice-as-agent", 4, ["default"])])
    closers.append(client.connection.stop)
    await until(lambda: client.received, what="the backend's answer to the client")
    assert client.received == [Unknown()]  # "say hello (as a client) first"
    assert backend.agents == []

    agent = Impostor(pki.connect(agents, "agent1"), [ClientHello("agent-as-client"), new_job("j")])
    closers.append(agent.connection.stop)
    await until(
        lambda: log_events.has("protocol error", "client_new_job", "not expected"), what="the agent's job refused"
    )
    assert log_events.has("protocol error", "client_hello", "not expected")
    assert backend.clients == [] and backend.waiting_count == 0 and agent.received == []


# -- deployed as processes ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_twistd_backend_and_agent_and_the_command_with_credentials(short_tmp: str) -> None:
    """Clients over TLS with certificates, the agent over CurveZMQ; the command gets its result."""

    os.makedirs(f"{short_tmp}/tls")
    os.makedirs(f"{short_tmp}/curve")
    pki, keys = Pki.make(f"{short_tmp}/tls"), Keys.make(f"{short_tmp}/curve")
    f, k = pki.folder, keys.folder
    tls_port, zmq_port = free_port(), free_port()
    clients = f"ssl:{tls_port}:privateKey={f}/server.key:certKey={f}/server.pem:caCertsFile={pki.clients_ca.path}"
    agents = f"zmq:tcp://127.0.0.1:{zmq_port}?curve-secret={k}/server.key_secret&curve-allowed={k}/agents"
    agent_side = f"zmq:tcp://127.0.0.1:{zmq_port}?curve-secret={k}/agent1.key_secret&curve-server={k}/server.key"
    client_side = (
        f"ssl:host=127.0.0.1:port={tls_port}:caCertsFile={pki.server_ca.path}"
        f":certKey={f}/alice.pem:privateKey={f}/alice.key"
    )
    daemons = [
        spawn_twistd("inginious-backend", "--clients", clients, "--agents", agents),
        spawn_twistd("inginious-agent", "--backend", agent_side, "--kind", "mock", "--slots", "1", "--name", "a1"),
    ]
    try:
        run = await cli(
            "submit", "c/t", "--backend", client_side, "--connect-timeout", "20", "--wait-for-backend",
            "-i", "@mock_grade=42",
        )  # fmt: skip
        logs = run.err + "".join(b"".join(d.out).decode() for d in daemons)
        assert run.status == 0, logs
        assert run.out.startswith("result: success\ngrade: 42\n")
        # Without a certificate the command gets nowhere (and says why on the backend's side).
        bare = f"ssl:host=127.0.0.1:port={tls_port}:caCertsFile={pki.server_ca.path}"
        run = await cli("environments", "--backend", bare, "--connect-timeout", "1")
        assert run.status == 69, run.err
    finally:
        await stop_daemons(daemons)
    backend_log = b"".join(daemons[0].out).decode()
    assert "TLS failed" in backend_log
