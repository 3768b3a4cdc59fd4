"""Transport selection: endpoint strings -> transport plugins.

``zmq:tcp://127.0.0.1:2001`` goes to the ZeroMQ transport, Twisted stream
endpoint strings (``tcp:2001``, ``unix:/path``, ``ssl:...``) to the stream
transport; a third-party plugin registered under the
``inginious_tx.transports`` entry point group can claim other strings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from .._reactor import CommonReactor
from ..interfaces import IConnection, IEndpointCheck, IMessageSink, ITransport
from ..plugin import TRANSPORTS, PluginError, available

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "UnknownEndpoint",
    "transports",
    "transport_for",
    "listen",
    "connect",
    "shared_credentials",
    "SharedCredential",
    "check_credentials",
    "check_endpoint",
    "LISTENING_FORMS",
    "CONNECTING_FORMS",
]

#: The endpoint strings a command listens on, for messages.
LISTENING_FORMS = (
    "zmq:tcp://HOST:PORT, zmq:ipc:///PATH, tcp:PORT:interface=HOST, unix:/PATH or ssl:PORT:privateKey=KEY..."
)
#: The endpoint strings a command connects to, for messages.
CONNECTING_FORMS = "zmq:tcp://HOST:PORT, zmq:ipc:///PATH, tcp:HOST:PORT, unix:/PATH or ssl:HOST:PORT:caCertsFile=CA..."

DEFAULT_MAX_FRAME = 64 * 1024 * 1024
DEFAULT_MAX_HELLO_FRAME = 64 * 1024
DEFAULT_HELLO_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_PENDING = 100
#: ZeroMQ strangers cost a whole message each (see ``Limits.zmq_max_pending``): fewer of them.
DEFAULT_ZMQ_MAX_PENDING = 8
#: Room for a job's fields besides its inputdata, in a client's largest frame (``Limits.client_max_frame``).
CLIENT_FRAME_MARGIN = 1 << 20
DEFAULT_MAX_PARTIAL_BYTES = 256 * 1024 * 1024
DEFAULT_PARTIAL_FRAME_TIMEOUT = 60.0
DEFAULT_ZMQ_SEND_HWM = 1_000_000


@dataclass(frozen=True)
class Limits:
    """Bounds a transport enforces on what peers send it."""

    #: Largest accepted frame (one encoded message), in bytes.
    max_frame: int = DEFAULT_MAX_FRAME
    #: Largest number of encoded bytes queued for one slow stream peer
    #: before the connection is dropped (a client that never reads).
    max_send_buffer: int = 4 * DEFAULT_MAX_FRAME
    #: Largest frame accepted from a peer whose hello has not been accepted
    #: yet (see :meth:`inginious_tx.interfaces.IPeer.accepted`); hellos are tiny.
    max_hello_frame: int = DEFAULT_MAX_HELLO_FRAME
    #: Seconds a connection has to get its hello accepted before it is closed.
    hello_timeout: float = DEFAULT_HELLO_TIMEOUT
    #: Most open connections of one listener (further ones are closed as soon as made).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Most connections of one listener whose hello is not accepted yet
    #: (further ones are closed as soon as made).
    max_pending: int = DEFAULT_MAX_PENDING
    #: Most messages a ZeroMQ listener queues for one peer (its send
    #: high-water mark); a peer that does not read is cut off on reaching it
    #: (its session ends, its connection is closed).
    #: ZeroMQ counts messages, not bytes: each may be up to ``max_frame``.
    zmq_send_hwm: int = DEFAULT_ZMQ_SEND_HWM
    #: Most connections of one ZeroMQ listener whose hello is not accepted
    #: yet (instead of ``max_pending``).  ZeroMQ reads a message whole before
    #: we see it and cannot limit strangers' frames apart, so each of them
    #: may hold up to ``max_frame`` bytes until its hello deadline.
    zmq_max_pending: int = DEFAULT_ZMQ_MAX_PENDING
    #: Largest frame from a client (a job: the backend's largest inputdata
    #: and a margin); None: ``max_frame``.  See :meth:`for_clients`.
    client_max_frame: Optional[int] = None
    #: Most bytes of frames received in part, over every connection of a
    #: stream transport's listeners.  When a frame would take them over it,
    #: the connection whose partial frame started first is closed.
    max_partial_bytes: int = DEFAULT_MAX_PARTIAL_BYTES
    #: Seconds a listener's connection has to complete a frame it started
    #: sending; a stalled one is closed and its partial frame freed.
    partial_frame_timeout: float = DEFAULT_PARTIAL_FRAME_TIMEOUT

    def for_clients(self) -> Limits:
        """These limits for an endpoint of clients: frames no larger than the largest job accepted."""
        if self.client_max_frame is None or self.client_max_frame >= self.max_frame:
            return self
        return replace(self, max_frame=self.client_max_frame)


#: The limits used when none are given.
DEFAULT_LIMITS = Limits()


class UnknownEndpoint(ValueError):
    """No installed transport understands an endpoint string."""


_cache: Optional[List[Any]] = None


def transports() -> List[Any]:
    """One instance of every installed transport plugin (cached)."""
    global _cache
    if _cache is None:
        found = []
        for name, ep in sorted(available(TRANSPORTS).items()):
            try:
                obj = ep.load()
                inst = obj() if isinstance(obj, type) else obj
                verifyObject(ITransport, inst)
            except Exception as e:
                raise PluginError(f"transport plugin {name!r} is broken: {e}") from e
            found.append(inst)
        _cache = found
    return _cache


def transport_for(endpoint: str, listening: Optional[bool] = None) -> Any:
    """The transport plugin that handles ``endpoint``.

    ``listening`` only chooses the forms the error message suggests
    (to listen on, to connect to, or both when None).
    """
    for t in transports():
        if t.handles(endpoint):
            return t
    names = ", ".join(t.name for t in transports()) or "none installed"
    if listening is None:
        forms = f"to listen: {LISTENING_FORMS}; to connect: {CONNECTING_FORMS}"
    else:
        forms = LISTENING_FORMS if listening else CONNECTING_FORMS
    raise UnknownEndpoint(f"no transport understands the endpoint {endpoint!r} (transports: {names}); use {forms}")


def check_endpoint(endpoint: str, listening: bool) -> None:
    """Raise ValueError, saying what is wrong, if ``endpoint`` cannot be listened on (``listening``) or
    connected to: no transport understands it, or its transport (:class:`IEndpointCheck`) refuses it.

    Only the string (and the credential files it names) is checked: whether
    the port is free or the peer up is known when it is used.
    """
    transport = transport_for(endpoint, listening)
    checker = IEndpointCheck(transport, None)
    if checker is not None:
        checker.check(endpoint, listening)


def listen(reactor: CommonReactor, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS) -> Deferred:
    """Listen on ``endpoint`` with whichever transport handles it."""
    return transport_for(endpoint, True).listen(reactor, endpoint, sink, limits)


def connect(reactor: CommonReactor, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS) -> IConnection:
    """Connect to ``endpoint`` with whichever transport handles it."""
    return transport_for(endpoint, False).connect(reactor, endpoint, sink, limits)


@dataclass(frozen=True)
class SharedCredential:
    """A credential that endpoints of two groups both accept."""

    #: "CA certificate" or "CurveZMQ public key"
    kind: str
    #: what names it: the key and the files it was read from, or a certificate's subject and fingerprint
    name: str
    #: an endpoint of each group that accepts it
    first: str
    second: str
    #: how to make the two groups accept different credentials
    fix: str


def _accepted(endpoints: Sequence[str], read: Callable[[str], Dict[Any, str]]) -> Dict[Any, Tuple[str, str]]:
    """Credential -> (endpoint, label) for what ``read`` finds on ``endpoints`` (unreadable ones are skipped:
    listening on them fails with the reason)."""
    found: Dict[Any, Tuple[str, str]] = {}
    for endpoint in endpoints:
        try:
            items = read(endpoint)
        except ValueError:
            continue
        for item, label in items.items():
            found.setdefault(item, (endpoint, label))
    return found


def shared_credentials(first: Sequence[str], second: Sequence[str]) -> List[SharedCredential]:
    """The credentials a listening endpoint of ``first`` and one of ``second`` both accept:
    a CA trusted (``caCertsFile``) or a CurveZMQ key allowed (``curve-allowed``).

    Which groups must not share is a role's rule (the backend's clients and
    agents: :func:`inginious_tx.backend.roles.check_separate_credentials`).
    """
    from . import curve, tls

    checks = (
        (tls.authorities, "CA certificate", "sign their certificates with different CAs"),
        (curve.allowed_keys, "CurveZMQ public key", "give them different keys and folders"),
    )
    shared = []
    for read, kind, fix in checks:
        a = _accepted(first, read)
        b = _accepted(second, read)
        for item in sorted(set(a) & set(b)):
            if isinstance(item, bytes):  # a key, and the files it was read from
                name = f"{item.decode()} ({a[item][1]}, {b[item][1]})"
            else:  # a certificate fingerprint, and its subject
                name = f"{a[item][1]} (SHA-256 {item})"
            shared.append(SharedCredential(kind, name, a[item][0], b[item][0], fix))
    return shared


def check_credentials(endpoint: str) -> None:
    """Read now the certificates and keys a connecting ``endpoint`` names.

    Raises ValueError if one is missing or unusable, so that a command can
    refuse it before it starts rather than fail once running.
    """
    from . import curve, tls

    if endpoint.startswith("zmq:"):
        curve.client_settings(endpoint)
    elif tls.verifies_peers(endpoint):
        tls.client_options(endpoint)
