"""TLS with client certificates: only holders of a certificate signed by the
endpoint's CA reach the backend, over real sockets.

A fresh PKI (EC keys, so it takes milliseconds) is made for each test: a CA
for the server, one for clients, one for agents and an unrelated one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import pytest
import pytest_twisted
from zope.interface import implementer

from inginious_tx.agent.core import Agent
from inginious_tx.agent.mock import MockBackend
from inginious_tx.agent.result import AgentConfig
from inginious_tx.backend.service import BackendService
from inginious_tx.backend.testing import agent_hello, new_job
from inginious_tx.client import Client
from inginious_tx.interfaces import IMessageSink, IPeer
from inginious_tx.messages import ClientHello
from inginious_tx.transport import tls
from inginious_tx.transport.stream import StreamTransport

# ---------------------------------------------------------------------------
# A PKI made on the fly
# ---------------------------------------------------------------------------


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


class _Authority:
    """A CA: signs certificates, written as PEM files in ``folder``."""

    def __init__(self, folder: str, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = _write(f"{folder}/{name}.pem", cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, server: bool = False) -> Tuple[str, str]:
        """A certificate for ``name`` (a server's names: localhost and 127.0.0.1): (cert file, key file)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return (
            _write(f"{self.folder}/{name}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            _write(f"{self.folder}/{name}.key", key_pem),
        )


@dataclass
class Pki:
    """CAs for the server, the clients and the agents, an outsider's CA, and a certificate from each."""

    folder: str
    server_ca: _Authority
    clients_ca: _Authority
    agents_ca: _Authority
    other_ca: _Authority

    @classmethod
    def make(cls, folder: str) -> Pki:
        pki = cls(
            folder,
            _Authority(folder, "server-ca"),
            _Authority(folder, "clients-ca"),
            _Authority(folder, "agents-ca"),
            _Authority(folder, "other-ca"),
        )
        pki.server_ca.issue("server", server=True)
        pki.clients_ca.issue("alice")
        pki.agents_ca.issue("agent1")
        pki.other_ca.issue("mallory")
        return pki

    def listen(self, peers_ca: _Authority) -> str:
        """A listening endpoint string that requires certificates from ``peers_ca``."""
        f = self.folder
        return f"ssl:0:privateKey={f}/server.key:certKey={f}/server.pem:caCertsFile={peers_ca.path}"

    def connect(self, listener: Any, who: Optional[str], trust: Optional[_Authority] = None) -> str:
        """An endpoint string to ``listener`` with ``who``'s certificate (None: no certificate)."""
        endpoint = f"{listener.connect_endpoint}:caCertsFile={(trust or self.server_ca).path}"
        if who is not None:
            endpoint += f":certKey={self.folder}/{who}.pem:privateKey={self.folder}/{who}.key"
        return endpoint


# ---------------------------------------------------------------------------
# A backend with TLS on both endpoints, and peers
# ---------------------------------------------------------------------------


@dataclass
class Stack:
    pki: Pki
    service: BackendService
    clients: Any  # the client listener
    agents: Any  # the agent listener

    @property
    def backend(self) -> Any:
        return self.service.backend


@pytest_twisted.async_yield_fixture
async def stack(short_tmp: str, within: Any) -> Any:
    from twisted.internet import reactor

    pki = Pki.make(short_tmp)
    service = BackendService(reactor, [pki.listen(pki.clients_ca)], [pki.listen(pki.agents_ca)], shutdown_grace=0)
    service.startService()
    clients, agents = await within(service.ready)
    yield Stack(pki, service, clients, agents)
    await service.stopService()


_stream = StreamTransport(retry_policy=lambda attempt: 0.1)


@implementer(IMessageSink)
class Intruder:
    """Says hello as a client (and submits a job) or as an agent, on every connection."""

    def __init__(self, endpoint: str, role: str, name: str) -> None:
        from twisted.internet import reactor

        self.role = role
        self.name = name
        self.received: List[Any] = []
        self.lost: List[str] = []
        self.connection = _stream.connect(reactor, endpoint, self)

    def peer_connected(self, peer: IPeer) -> None:
        if self.role == "client":
            peer.send(ClientHello(self.name))
            peer.send(new_job(f"{self.name}-job"))
        else:
            peer.send(agent_hello(self.name, 4, ["default"]))

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        self.lost.append(reason)

    def message_received(self, peer: IPeer, message: Any) -> None:
        self.received.append(message)


async def honest_job_completes(stack: Stack, until: Any, within: Any, closers: list) -> None:
    """A credentialed agent registers and a credentialed client's job succeeds."""
    from twisted.internet import reactor

    pki = stack.pki
    if not stack.backend.agents:
        agent = Agent(reactor, MockBackend(reactor, AgentConfig()), "agent1", 2, pki.connect(stack.agents, "agent1"))
        agent.startService()
        closers.append(agent.stopService)
    await until(lambda: [a.name for a in stack.backend.agents] == ["agent1"], what="the agent to register")
    client = Client(reactor, pki.connect(stack.clients, "alice"), "alice", connect_timeout=5)
    client.start()
    closers.append(client.stop)
    result = await within(client.new_job("course", "task", {"@mock_result": "success"}))
    assert result.result == "success", result


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_credentialed_agent_and_client_work(stack: Stack, until: Any, within: Any, closers: list) -> None:
    assert stack.clients.connect_endpoint.startswith("ssl:host=127.0.0.1:")  # loopback unless asked
    await honest_job_completes(stack, until, within, closers)
    assert [c.name for c in stack.backend.clients] == ["alice"]


#: (role, whose certificate or None) that must not get in.
REFUSED = [
    ("client", None),  # no certificate
    ("client", "mallory"),  # signed by another CA
    ("client", "agent1"),  # an agent's certificate on the client endpoint
    ("agent", None),
    ("agent", "mallory"),
    ("agent", "alice"),  # a client's certificate on the agent endpoint
]


@pytest.mark.parametrize("role,who", REFUSED, ids=[f"{r}-{w or 'nocert'}" for r, w in REFUSED])
@pytest_twisted.ensureDeferred
async def test_a_peer_without_the_right_certificate_gets_nothing_in(
    stack: Stack, role: str, who: Optional[str], until: Any, within: Any, closers: list, log_events: Any
) -> None:
    listener = stack.clients if role == "client" else stack.agents
    intruder = Intruder(stack.pki.connect(listener, who), role, "intruder")
    closers.append(intruder.connection.stop)
    await until(lambda: intruder.lost, what="the server to drop the intruder")
    assert log_events.has("TLS failed")  # logged by the server (and the intruder)
    await honest_job_completes(stack, until, within, closers)
    # The intruder said hello (and submitted) on every connection: none of it arrived.
    assert "intruder" not in [c.name for c in stack.backend.clients]
    assert "intruder" not in [a.name for a in stack.backend.agents]
    assert stack.backend.waiting_count == 0 and stack.backend.running_count == 0
    assert intruder.received == []


@pytest_twisted.ensureDeferred
async def test_a_client_does_not_talk_to_a_server_its_ca_did_not_sign(
    stack: Stack, until: Any, within: Any, closers: list, log_events: Any
) -> None:
    from twisted.internet import reactor

    endpoint = stack.pki.connect(stack.clients, "alice", trust=stack.pki.other_ca)
    client = Client(reactor, endpoint, "alice", connect_timeout=0.5)
    client.start()
    closers.append(client.stop)
    result = await within(client.new_job("course", "task", {}))
    assert result.result == "crash" and "backend unavailable" in result.text
    assert stack.backend.clients == []
    assert log_events.has("TLS failed", "certificate verify failed")


@pytest_twisted.ensureDeferred
async def test_an_unknown_name_is_refused_too(stack: Stack, until: Any, closers: list) -> None:
    """The server's certificate must name the host (or ``hostname=``) the client asked for."""
    endpoint = stack.pki.connect(stack.clients, "alice") + ":hostname=grader.example.org"
    intruder = Intruder(endpoint, "client", "misdirected")
    closers.append(intruder.connection.stop)
    await until(lambda: intruder.lost, what="the client to refuse the server")
    assert stack.backend.clients == []


# -- endpoint strings ------------------------------------------------------------------


def test_endpoint_strings_are_read_as_twisted_reads_them() -> None:
    assert tls.split_endpoint(r"ssl:2001:privateKey=a\:b.pem:caCertsFile=x=y") == (
        ["ssl", "2001"],
        {"privateKey": "a:b.pem", "caCertsFile": "x=y"},
    )
    assert tls.verifies_peers("ssl:2001:caCertsFile=ca.pem")
    assert not tls.verifies_peers("ssl:2001:privateKey=k.pem") and not tls.verifies_peers("tcp:2001")
    with pytest.raises(ValueError, match="given twice"):
        tls.split_endpoint("ssl:2001:caCertsFile=a:caCertsFile=b")


@pytest.mark.parametrize(
    "endpoint,error",
    [
        ("ssl:0:privateKey={f}/server.key:caCertsFile={f}/clients-ca.pem:verify=no", "unknown parameter(s) verify"),
        ("ssl:0:privateKey={f}/nothing.key:caCertsFile={f}/clients-ca.pem", "cannot read certificate"),
        ("ssl:0:certKey={f}/server.pem:caCertsFile={f}/clients-ca.pem", "privateKey=FILE"),
        ("ssl:0:privateKey={f}/server.key:certKey={f}/server.pem:caCertsFile={f}/server.key", "no valid PEM"),
        ("ssl:0:privateKey={f}/alice.key:certKey={f}/server.pem:caCertsFile={f}/clients-ca.pem", "cannot load"),
        ("ssl:http:privateKey={f}/server.key:caCertsFile={f}/clients-ca.pem", "port='http' is not a whole number"),
        ("ssl:1:port=2:privateKey={f}/server.key:caCertsFile={f}/clients-ca.pem", "give the port once"),
    ],
)
def test_bad_listening_strings_are_clear_errors(short_tmp: str, endpoint: str, error: str) -> None:
    from twisted.internet import reactor

    Pki.make(short_tmp)
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        tls.server_endpoint(reactor, endpoint.format(f=short_tmp))


@pytest.mark.parametrize(
    "endpoint,error",
    [
        ("ssl:host=127.0.0.1:caCertsFile={f}/server-ca.pem", "ssl:host=HOST:port=PORT"),
        ("ssl:host=h:port=1:caCertsFile={f}/server-ca.pem:certKey={f}/alice.pem", "privateKey=FILE"),
        ("ssl:host=h:port=1:caCertsFile={f}/none.pem", "cannot read certificate file"),
    ],
)
def test_bad_connecting_strings_are_clear_errors(short_tmp: str, endpoint: str, error: str) -> None:
    from twisted.internet import reactor

    Pki.make(short_tmp)
    with pytest.raises(ValueError, match=error):
        tls.client_endpoint(reactor, endpoint.format(f=short_tmp))


@pytest_twisted.ensureDeferred
async def test_a_bad_string_fails_the_backend_start_with_the_reason(short_tmp: str, within: Any) -> None:
    from twisted.internet import reactor

    service = BackendService(
        reactor, [f"ssl:0:privateKey={short_tmp}/absent.key:caCertsFile={short_tmp}/ca.pem"], ["tcp:0"]
    )
    service.startService()
    with pytest.raises(ValueError, match="absent.key"):
        await within(service.ready)
    await service.stopService()


def test_an_unverified_side_is_logged(short_tmp: str, log_events: Any) -> None:
    from twisted.internet import reactor

    pki = Pki.make(short_tmp)
    tls.server_endpoint(reactor, f"ssl:0:privateKey={short_tmp}/server.key:certKey={short_tmp}/server.pem")
    assert log_events.has("has no caCertsFile", "any client")
    tls.client_endpoint(reactor, "ssl:host=127.0.0.1:port=1")
    assert log_events.has("the server's certificate is not verified")
    assert tls.authorities(pki.listen(pki.clients_ca)).popitem()[1] == "CN=clients-ca"
    assert tls.authorities("tcp:2001") == {}
    assert os.path.exists(pki.clients_ca.path)
