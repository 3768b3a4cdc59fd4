"""CurveZMQ for the ZeroMQ transport: encrypted links that only listed peers may open.

Keys are pyzmq certificate files (``zmq.auth.create_certificates``): ``NAME.key``
holds a public key, ``NAME.key_secret`` the public and the secret key.  They
are given as query parameters of the endpoint string (values are
percent-decoded; a ``zmq:ipc://`` path therefore cannot contain ``?``):

Listening (backend)::

    zmq:tcp://127.0.0.1:2001?curve-secret=server.key_secret&curve-allowed=agents/

``curve-secret``: the server's key pair.  ``curve-allowed``: a folder of
``*.key`` files; only a peer whose public key is one of them completes the
handshake (ZeroMQ asks a ZAP handler, see :class:`ZapHandler`).  Both are
required together.

Connecting (agent, client)::

    zmq:tcp://backend.example.org:2001?curve-secret=agent1.key_secret&curve-server=server.key

``curve-secret``: our key pair; ``curve-server``: the server's public key
(a peer that does not hold the matching secret key cannot complete the
handshake).  Both are required together.

The allowed keys are read when the listener starts; restart it (or the
backend) to take a change into account.
"""

from __future__ import annotations

import glob
import itertools
import os
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote

import zmq
import zmq.auth
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zmq.utils import z85
from zope.interface import implementer

from .._reactor import CommonReactor

__all__ = [
    "CurveServer",
    "CurveClient",
    "split_endpoint",
    "server_settings",
    "client_settings",
    "allowed_keys",
    "ZapHandler",
    "secure_listener",
    "guard_listener",
    "user_key",
    "secure_connection",
]

log = Logger()

SECRET, ALLOWED, SERVER = "curve-secret", "curve-allowed", "curve-server"
_KNOWN = (SECRET, ALLOWED, SERVER)
#: A refused key is logged at most once per this many seconds (a refused peer retries ten times a second).
REFUSAL_LOG_INTERVAL = 60.0
_domains = itertools.count(1)
#: Where ZeroMQ sends its authentication requests (RFC 27: ZAP).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"


@dataclass(frozen=True)
class CurveServer:
    """What a listener needs: its key pair and the public keys allowed in."""

    public: bytes
    secret: bytes
    #: z85 public key -> the file it was read from
    allowed: Dict[bytes, str]
    allowed_dir: str


@dataclass(frozen=True)
class CurveClient:
    """What a connection needs: its key pair and the server's public key."""

    public: bytes
    secret: bytes
    server: bytes


def split_endpoint(endpoint: str) -> Tuple[str, Dict[str, str]]:
    """``zmq:ADDRESS?k=v&...`` -> (``zmq:ADDRESS``, {k: v}); unknown or repeated keys are errors."""
    base, sep, query = endpoint.partition("?")
    params: Dict[str, str] = {}
    if not sep:
        return base, params
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        key = unquote(key)
        if key not in _KNOWN or not eq or not value:
            raise ValueError(
                f"{endpoint!r}: bad parameter {item!r} (accepted: {SECRET}=FILE, {ALLOWED}=DIR, {SERVER}=FILE)"
            )
        if key in params:
            raise ValueError(f"{endpoint!r}: parameter {key!r} given twice")
        params[key] = unquote(value)
    return base, params


def _check_key(key: Optional[bytes], path: str, what: str) -> bytes:
    if key is None or len(key) != 40:
        raise ValueError(f"{path!r} holds no {what} (expected a pyzmq certificate file)")
    try:
        z85.decode(key)
    except Exception:
        raise ValueError(f"{path!r}: the {what} is not valid Z85") from None
    return key


def _load(path: str, need_secret: bool) -> Tuple[bytes, Optional[bytes]]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the CurveZMQ key file {path!r}: {e}") from None
    public = _check_key(public, path, "public key")
    if need_secret:
        secret = _check_key(secret, path, "secret key (give the .key_secret file)")
    return public, secret


def _allowed(folder: str) -> Dict[bytes, str]:
    if not os.path.isdir(folder):
        raise ValueError(f"{ALLOWED}={folder!r} is not a folder (of NAME.key public key files)")
    keys: Dict[bytes, str] = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*.key"))):
        keys[_load(path, need_secret=False)[0]] = path
    if not keys:
        raise ValueError(f"{ALLOWED}={folder!r} holds no public key file (NAME.key): no peer could connect")
    return keys


#: What each role's own parameter is for, and the value it names.
_FOR = {SERVER: "connecting", ALLOWED: "listening"}
_VALUE = {SERVER: "FILE", ALLOWED: "DIR"}


def _checked(endpoint: str, needs: str, refuses: str, role: str) -> Tuple[str, Dict[str, str]]:
    """Split ``endpoint``; with CurveZMQ parameters, they must hold our secret and
    ``needs`` (the role's own parameter), never ``refuses`` (the other role's)."""
    base, params = split_endpoint(endpoint)
    if params:
        if refuses in params:
            raise ValueError(f"{endpoint!r}: {refuses} is for {_FOR[refuses]} endpoints ({role}s take {needs})")
        if SECRET not in params or needs not in params:
            raise ValueError(f"{endpoint!r}: a CurveZMQ {role} needs both {SECRET}=FILE and {needs}={_VALUE[needs]}")
    return base, params


def server_settings(endpoint: str) -> Tuple[str, Optional[CurveServer]]:
    """The endpoint without its query, and the listener's CurveZMQ settings if it has any."""
    base, params = _checked(endpoint, ALLOWED, SERVER, "listener")
    if not params:
        return base, None
    public, secret = _load(params[SECRET], need_secret=True)
    return base, CurveServer(public, secret, _allowed(params[ALLOWED]), params[ALLOWED])  # type: ignore[arg-type]


def client_settings(endpoint: str) -> Tuple[str, Optional[CurveClient]]:
    """The endpoint without its query, and the connection's CurveZMQ settings if it has any."""
    base, params = _checked(endpoint, SERVER, ALLOWED, "connection")
    if not params:
        return base, None
    public, secret = _load(params[SECRET], need_secret=True)
    server, _ = _load(params[SERVER], need_secret=False)
    return base, CurveClient(public, secret, server)  # type: ignore[arg-type]


def allowed_keys(endpoint: str) -> Dict[bytes, str]:
    """Public key -> file, for every peer key a listening ``endpoint`` lets in ({} without CurveZMQ)."""
    if not isinstance(endpoint, str) or not endpoint.startswith("zmq:"):
        return {}
    _, params = split_endpoint(endpoint)
    return _allowed(params[ALLOWED]) if ALLOWED in params else {}


class _Domain:
    """The ZAP decisions for one listener: who gets in, and the session identity it is given.

    ``keys`` is None for a listener without CurveZMQ (every NULL handshake is
    let in), else the allowed public keys (z85).
    """

    def __init__(self, handler: ZapHandler, keys: Optional[Dict[bytes, str]], description: str) -> None:
        self._handler = handler
        self.keys = frozenset(keys) if keys is not None else None
        self.description = description

    def decide(self, mechanism: bytes, credentials: List[bytes]) -> Tuple[bool, bytes]:
        """(allowed, User-Id) for one handshake."""
        # Every connection gets a token of its own: a session is bound to its
        # connection, so a later connection that reuses a routing id (or a
        # key) is a new session, never the old one (see zmq.py).
        token = secrets.token_hex(16).encode()
        if self.keys is None:
            return mechanism == b"NULL", b"null:" + token
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return False, b""
        key = z85.encode(credentials[0])
        if key in self.keys:
            return True, b"curve:" + key + b":" + token
        self._handler._refused(self.description, key)
        return False, b""


@implementer(IReadDescriptor)
class _ZapReader:
    def __init__(self, handler: ZapHandler) -> None:
        self._handler = handler
        socket = handler.socket
        assert socket is not None  # made by a handler that has just started
        self.fd = socket.fileno()

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self._handler._read()

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "ZAP"


class ZapHandler:
    """The ZAP handler (ZeroMQ RFC 27) of one ZeroMQ context, run on the reactor.

    Every listener of the context is a ZAP domain.  ZeroMQ asks this handler
    about each new connection of a listener, CurveZMQ or not, and tags every
    message of that connection with the User-Id answered here: a token of
    its own (with, for CurveZMQ, the peer's public key), which is what
    :mod:`inginious_tx.transport.zmq` binds sessions to.  It exists while at
    least one listener of the context does.
    """

    def __init__(self, reactor: CommonReactor, context: zmq.Context) -> None:
        self._reactor = reactor
        self._context = context
        socket = context.socket(zmq.REP)
        socket.linger = 0
        try:
            socket.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            socket.close()
            raise ValueError(f"cannot start the ZAP handler (is another one bound in this context?): {e}") from None
        self.socket: Optional[zmq.Socket] = socket
        self._reader = _ZapReader(self)
        reactor.addReader(self._reader)
        self._domains: Dict[bytes, _Domain] = {}
        self._last_logged: Dict[Tuple[str, bytes], float] = {}
        self._address = "?"
        #: Handshakes refused so far (tests, metrics).
        self.refused = 0

    def add(self, domain: str, provider: _Domain) -> None:
        self._domains[domain.encode()] = provider

    def remove(self, domain: str) -> None:
        self._domains.pop(domain.encode(), None)
        if not self._domains:
            self.stop()

    def stop(self) -> None:
        if _handlers.get(self._context) is self:
            del _handlers[self._context]
        if self.socket is not None:
            self._reactor.removeReader(self._reader)
            try:
                # Unbind first: closing alone frees the inproc name later,
                # and the next listener's handler could not bind it.
                self.socket.unbind(ZAP_ENDPOINT)
            except zmq.ZMQError:
                pass
            self.socket.close()
            self.socket = None

    def _read(self) -> None:
        sock = self.socket
        while sock is not None and self.socket is sock:
            try:
                request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # A REP socket must answer every request it received, whatever it holds.
            try:
                reply = self._answer(request)
            except Exception:
                log.failure("ZAP request failed")
                reply = [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"500", b"internal error", b"", b""]
            try:
                sock.send_multipart(reply, zmq.NOBLOCK)
            except zmq.ZMQError as e:
                log.warn("cannot answer a ZAP request: {error}", error=str(e))

    def _answer(self, request: List[bytes]) -> List[bytes]:
        if len(request) < 6 or request[0] != ZAP_VERSION:
            return [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"400", b"bad request", b"", b""]
        _, request_id, domain, address, _, mechanism = request[:6]
        self._address = address.decode("utf-8", "replace")
        provider = self._domains.get(domain)
        if provider is None:
            return [ZAP_VERSION, request_id, b"400", b"unknown domain", b"", b""]
        allowed, user_id = provider.decide(mechanism, request[6:])
        if allowed:
            return [ZAP_VERSION, request_id, b"200", b"OK", user_id, b""]
        return [ZAP_VERSION, request_id, b"400", b"not allowed", b"", b""]

    def _refused(self, listener: str, key: bytes) -> None:
        self.refused += 1
        now = self._reactor.seconds()
        seen = (listener, key)
        if now - self._last_logged.get(seen, -REFUSAL_LOG_INTERVAL) < REFUSAL_LOG_INTERVAL:
            return
        if len(self._last_logged) > 1024:
            self._last_logged.clear()
        self._last_logged[seen] = now
        log.warn(
            "{listener}: refused a CurveZMQ peer from {address}: its public key {key} is not allowed "
            "(refusals of this key are logged once per {interval:.0f} s)",
            listener=listener,
            address=self._address,
            key=key.decode("ascii", "replace"),
            interval=REFUSAL_LOG_INTERVAL,
        )


_handlers: Dict[zmq.Context, ZapHandler] = {}


def guard_listener(
    reactor: CommonReactor, context: zmq.Context, socket: zmq.Socket, settings: Optional[CurveServer], description: str
) -> Callable[[], None]:
    """Put ``socket`` (a ROUTER, not bound yet) under the context's ZAP handler.

    With ``settings``, it becomes a CurveZMQ server that lets only allowed
    keys in; without, every NULL handshake is let in.  Either way each
    connection's messages carry a User-Id of its own.  Returns what to call
    once the socket is closed.
    """
    handler = _handlers.get(context)
    if handler is None:
        handler = _handlers[context] = ZapHandler(reactor, context)
    domain = f"inginious-tx-{next(_domains)}"
    handler.add(domain, _Domain(handler, settings.allowed if settings is not None else None, description))
    socket.set(zmq.ZAP_DOMAIN, domain.encode())
    if settings is not None:
        socket.set(zmq.CURVE_SECRETKEY, settings.secret)
        socket.set(zmq.CURVE_PUBLICKEY, settings.public)
        socket.set(zmq.CURVE_SERVER, 1)
        log.info(
            "{listener}: CurveZMQ, {n} allowed peer keys from {folder}",
            listener=description,
            n=len(settings.allowed),
            folder=settings.allowed_dir,
        )
    return lambda: handler.remove(domain)


def secure_listener(
    reactor: CommonReactor, context: zmq.Context, socket: zmq.Socket, settings: CurveServer, description: str
) -> Callable[[], None]:
    """Make ``socket`` (not bound yet) a CurveZMQ server that lets only allowed keys in (see :func:`guard_listener`)."""
    return guard_listener(reactor, context, socket, settings, description)


def user_key(user_id: Optional[str]) -> Optional[bytes]:
    """The CurveZMQ public key (z85) in a User-Id given by :class:`ZapHandler`, if there is one."""
    # "curve:KEY:TOKEN": the key is 40 z85 characters, and ":" is one of them;
    # the token (hex) has none, so split at the last ":".
    if user_id and user_id.startswith("curve:"):
        key, sep, _ = user_id[len("curve:") :].rpartition(":")
        if sep and len(key) == 40:
            return key.encode()
    return None


def secure_connection(socket: zmq.Socket, settings: CurveClient) -> None:
    """Make ``socket`` (not connected yet) a CurveZMQ client of the server key in ``settings``."""
    socket.set(zmq.CURVE_SERVERKEY, settings.server)
    socket.set(zmq.CURVE_PUBLICKEY, settings.public)
    socket.set(zmq.CURVE_SECRETKEY, settings.secret)
