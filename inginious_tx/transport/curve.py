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
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import unquote

import zmq
import zmq.auth
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zmq.utils import z85
from zope.interface import implementer

__all__ = [
    "CurveServer",
    "CurveClient",
    "split_endpoint",
    "server_settings",
    "client_settings",
    "allowed_keys",
    "ZapHandler",
    "secure_listener",
    "secure_connection",
]

log = Logger()

SECRET, ALLOWED, SERVER = "curve-secret", "curve-allowed", "curve-server"
_KNOWN = (SECRET, ALLOWED, SERVER)
#: A refused key is logged at most once per this many seconds (a refused peer retries ten times a second).
REFUSAL_LOG_INTERVAL = 60.0
_domains = itertools.count(1)


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


def server_settings(endpoint: str) -> Tuple[str, Optional[CurveServer]]:
    """The endpoint without its query, and the listener's CurveZMQ settings if it has any."""
    base, params = split_endpoint(endpoint)
    if not params:
        return base, None
    if SERVER in params:
        raise ValueError(f"{endpoint!r}: {SERVER} is for connecting endpoints (listeners take {ALLOWED})")
    if SECRET not in params or ALLOWED not in params:
        raise ValueError(f"{endpoint!r}: a CurveZMQ listener needs both {SECRET}=FILE and {ALLOWED}=DIR")
    public, secret = _load(params[SECRET], need_secret=True)
    return base, CurveServer(public, secret, _allowed(params[ALLOWED]), params[ALLOWED])  # type: ignore[arg-type]


def client_settings(endpoint: str) -> Tuple[str, Optional[CurveClient]]:
    """The endpoint without its query, and the connection's CurveZMQ settings if it has any."""
    base, params = split_endpoint(endpoint)
    if not params:
        return base, None
    if ALLOWED in params:
        raise ValueError(f"{endpoint!r}: {ALLOWED} is for listening endpoints (connections take {SERVER})")
    if SECRET not in params or SERVER not in params:
        raise ValueError(f"{endpoint!r}: a CurveZMQ connection needs both {SECRET}=FILE and {SERVER}=FILE")
    public, secret = _load(params[SECRET], need_secret=True)
    server, _ = _load(params[SERVER], need_secret=False)
    return base, CurveClient(public, secret, server)  # type: ignore[arg-type]


def allowed_keys(endpoint: str) -> Dict[bytes, str]:
    """Public key -> file, for every peer key a listening ``endpoint`` lets in ({} without CurveZMQ)."""
    if not isinstance(endpoint, str) or not endpoint.startswith("zmq:"):
        return {}
    _, params = split_endpoint(endpoint)
    return _allowed(params[ALLOWED]) if ALLOWED in params else {}


class _AllowedKeys:
    """The ZAP decision for one listener (a pyzmq credentials provider)."""

    def __init__(self, handler: ZapHandler, settings: CurveServer, description: str) -> None:
        self._handler = handler
        self.keys = frozenset(settings.allowed)
        self.description = description

    def callback(self, domain: str, key: bytes) -> bool:
        # Never raises: the REP socket must answer every request.
        try:
            if key in self.keys:
                return True
            self._handler._refused(self.description, key)
        except Exception:
            log.failure("ZAP check failed on {listener}", listener=self.description)
        return False


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
    """The ZAP handler of one ZeroMQ context, run on the reactor.

    pyzmq's :class:`zmq.auth.Authenticator` makes the decisions (each
    listener is a ZAP domain with its own allowed keys); this class only
    feeds it the requests from its socket, without a thread.  It exists while
    at least one CurveZMQ listener of the context does.
    """

    def __init__(self, reactor: Any, context: zmq.Context) -> None:
        from zmq.auth import Authenticator

        self._reactor = reactor
        self._context = context
        self._auth = Authenticator(context)
        try:
            self._auth.start()
        except zmq.ZMQError as e:
            self._auth.stop()
            raise ValueError(f"cannot start the ZAP handler (is another one bound in this context?): {e}") from None
        self.socket: Optional[zmq.Socket] = self._auth.zap_socket
        self._reader = _ZapReader(self)
        reactor.addReader(self._reader)
        self._domains: Dict[str, _AllowedKeys] = {}
        self._last_logged: Dict[Tuple[str, bytes], float] = {}
        self._address = "?"
        #: Handshakes refused so far (tests, metrics).
        self.refused = 0

    def add(self, domain: str, provider: _AllowedKeys) -> None:
        self._domains[domain] = provider
        self._auth.configure_curve_callback(domain, provider)

    def remove(self, domain: str) -> None:
        self._domains.pop(domain, None)
        self._auth.credentials_providers.pop(domain, None)
        if not self._domains:
            self.stop()

    def stop(self) -> None:
        if _handlers.get(self._context) is self:
            del _handlers[self._context]
        if self.socket is not None:
            self._reactor.removeReader(self._reader)
            self._auth.stop()
            self.socket = None

    def _read(self) -> None:
        sock = self.socket
        while sock is not None and self.socket is sock:
            try:
                request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._address = request[3].decode("utf-8", "replace") if len(request) > 3 else "?"
            d = ensureDeferred(self._auth.handle_zap_message(request))
            d.addErrback(lambda f: log.failure("ZAP request failed", f))

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


def secure_listener(
    reactor: Any, context: zmq.Context, socket: zmq.Socket, settings: CurveServer, description: str
) -> Callable[[], None]:
    """Make ``socket`` (not bound yet) a CurveZMQ server that lets only allowed keys in.

    Returns what to call once the socket is closed.
    """
    handler = _handlers.get(context)
    if handler is None:
        handler = _handlers[context] = ZapHandler(reactor, context)
    domain = f"inginious-tx-{next(_domains)}"
    handler.add(domain, _AllowedKeys(handler, settings, description))
    socket.set(zmq.ZAP_DOMAIN, domain.encode())
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


def secure_connection(socket: zmq.Socket, settings: CurveClient) -> None:
    """Make ``socket`` (not connected yet) a CurveZMQ client of the server key in ``settings``."""
    socket.set(zmq.CURVE_SERVERKEY, settings.server)
    socket.set(zmq.CURVE_PUBLICKEY, settings.public)
    socket.set(zmq.CURVE_SECRETKEY, settings.secret)
