"""TLS with client certificates for the stream transport (``ssl:`` endpoints).

Twisted's ``ssl:`` endpoint strings authenticate the server only: any client
that completes the handshake is served.  One more parameter, ``caCertsFile``
(a PEM file of one or more CA certificates), turns on mutual authentication:

Listening (backend)::

    ssl:2001:privateKey=server.key:certKey=server.pem:caCertsFile=agents-ca.pem

Only a peer presenting a certificate signed by a CA of ``caCertsFile`` (a
client certificate is *required*) completes the handshake; any other is
disconnected before a single message of it is read.  Other parameters:
``interface`` (default ``127.0.0.1``, see
:func:`~inginious_tx.transport.stream.listening_endpoint`), ``backlog``,
``extraCertChain`` (intermediate CA certificates sent with ours).

Connecting (agent, client)::

    ssl:host=backend.example.org:port=2001:caCertsFile=server-ca.pem:certKey=agent.pem:privateKey=agent.key

The server's certificate must be signed by a CA of ``caCertsFile`` and
name ``hostname`` (default: ``host``, which may be an IP address listed in
the certificate's subjectAltName); ``certKey``/``privateKey`` is our own
certificate.  Other parameters: ``timeout`` (seconds), ``hostname``.

Without ``caCertsFile`` the string goes to Twisted unchanged (a listener then
accepts anyone, and a connection trusts the server only with ``caCertsDir``:
both are logged as warnings).
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.endpoints import (
    HostnameEndpoint,
    SSL4ServerEndpoint,
    clientFromString,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._reactor import CommonReactor

__all__ = [
    "CA_PARAMETER",
    "split_endpoint",
    "verifies_peers",
    "server_endpoint",
    "client_endpoint",
    "client_options",
    "authorities",
    "load_certificates",
    "tls_failure",
]

log = Logger()

#: The parameter that names the CA file peers' certificates must be signed by.
CA_PARAMETER = "caCertsFile"

_SERVER_KEYS = frozenset({"port", "interface", "backlog", "privateKey", "certKey", "extraCertChain", CA_PARAMETER})
_CLIENT_KEYS = frozenset({"host", "port", "hostname", "timeout", "privateKey", "certKey", CA_PARAMETER})


def split_endpoint(description: str) -> Tuple[List[str], Dict[str, str]]:
    """``description`` as Twisted reads it: positional fields and ``key=value`` fields.

    A backslash escapes the next character; after ``key=``, an ``=`` is
    part of the value.  ``ssl:2001:privateKey=a\\:b`` gives
    ``(["ssl", "2001"], {"privateKey": "a:b"})``.
    """
    args: List[str] = []
    kwargs: Dict[str, str] = {}
    field: List[str] = []
    key: Optional[str] = None
    chars = iter(description)
    for c in chars:
        if c == "\\":
            field.append(next(chars, ""))
        elif c == ":":
            _add(args, kwargs, key, "".join(field))
            field, key = [], None
        elif c == "=" and key is None:
            key, field = "".join(field), []
        else:
            field.append(c)
    _add(args, kwargs, key, "".join(field))
    return args, kwargs


def _add(args: List[str], kwargs: Dict[str, str], key: Optional[str], value: str) -> None:
    if key is None:
        args.append(value)
    elif key in kwargs:
        raise ValueError(f"parameter {key!r} given twice")
    else:
        kwargs[key] = value


def verifies_peers(description: str) -> bool:
    """True for an ``ssl:`` string with ``caCertsFile`` (handled here, not by Twisted)."""
    if not isinstance(description, str) or not description.startswith("ssl:"):
        return False
    return CA_PARAMETER in split_endpoint(description)[1]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path!r}: {e.strerror or e}") from None


def _pem_certificates(path: str) -> List[Any]:
    """Every certificate of the PEM file ``path`` (``cryptography`` objects)."""
    from cryptography import x509

    data = _read(path, "certificate file")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ValueError(f"{path!r} holds no valid PEM certificate: {e}") from None


def load_certificates(path: str) -> List[Any]:
    """Every certificate of the PEM file ``path``, as Twisted ``Certificate`` objects."""
    from cryptography.hazmat.primitives.serialization import Encoding
    from twisted.internet.ssl import Certificate

    return [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in _pem_certificates(path)]


def _own_certificate(cert_path: Optional[str], key_path: Optional[str]) -> Any:
    """Our certificate and its key (``certKey`` defaults to ``privateKey``: both may be in one file)."""
    from twisted.internet.ssl import PrivateCertificate

    if key_path is None:
        raise ValueError("privateKey=FILE is required with certKey")
    cert_pem = _read(cert_path or key_path, "certificate")
    key_pem = cert_pem if cert_path in (None, key_path) else _read(key_path, "private key")
    try:
        return PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as e:
        raise ValueError(f"cannot load the certificate {cert_path or key_path!r} with key {key_path!r}: {e}") from None


def _modern_pyopenssl() -> bool:
    """pyOpenSSL 24.3 and later take ``cryptography`` keys and certificates (and deprecate its own)."""
    import OpenSSL

    try:
        major, minor = (int(part) for part in OpenSSL.__version__.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (24, 3)


def _for_context(obj: Any) -> Any:
    """A pyOpenSSL ``X509`` or ``PKey`` as the object pyOpenSSL's context wants: the
    ``cryptography`` one where supported, so that no deprecated call is made."""
    if not _modern_pyopenssl():
        return obj
    convert = getattr(obj, "to_cryptography", None) or obj.to_cryptography_key
    return convert()


def _own_options(own: Any) -> Dict[str, Any]:
    """``privateKey`` and ``certificate`` options of Twisted's ``CertificateOptions`` for ``own``."""
    return {"privateKey": _for_context(own.privateKey.original), "certificate": _for_context(own.original)}


def _check_keys(kind: str, kwargs: Dict[str, str], allowed: frozenset) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"{kind} ssl: endpoint with {CA_PARAMETER}: unknown parameter(s) {', '.join(unknown)} "
            f"(accepted: {', '.join(sorted(allowed))})"
        )


def _int(kwargs: Dict[str, str], key: str, default: int) -> int:
    try:
        return int(kwargs.get(key, default))
    except ValueError:
        raise ValueError(f"{key}={kwargs[key]!r} is not a whole number") from None


def server_endpoint(reactor: CommonReactor, description: str) -> IStreamServerEndpoint:
    """The listening endpoint for ``description`` (any Twisted endpoint string)."""
    if not verifies_peers(description):
        if description.startswith("ssl:"):
            log.warn(
                "{endpoint} has no {param}: any client that completes the TLS handshake is served",
                endpoint=description,
                param=CA_PARAMETER,
            )
        return serverFromString(reactor, description)
    from twisted.internet.ssl import CertificateOptions, trustRootFromCertificates

    args, kwargs = split_endpoint(description)
    _check_keys("listening", kwargs, _SERVER_KEYS)
    if len(args) > 2 or ("port" in kwargs) == (len(args) == 2):
        raise ValueError(f"{description!r}: give the port once (ssl:PORT:... or ssl:port=PORT:...)")
    port = _int(kwargs if "port" in kwargs else {"port": args[1]}, "port", 0)
    if "privateKey" not in kwargs:
        raise ValueError(f"{description!r}: privateKey=FILE (and certKey=FILE) is required")
    own = _own_certificate(kwargs.get("certKey"), kwargs["privateKey"])
    chain = None
    if "extraCertChain" in kwargs:
        chain = [_for_context(c.original) for c in load_certificates(kwargs["extraCertChain"])]
    cas = load_certificates(kwargs[CA_PARAMETER])
    options = CertificateOptions(
        **_own_options(own),
        extraCertChain=chain,
        trustRoot=trustRootFromCertificates(cas),
    )
    return SSL4ServerEndpoint(
        reactor, port, options, backlog=_int(kwargs, "backlog", 50), interface=kwargs.get("interface", "")
    )


def client_endpoint(reactor: CommonReactor, description: str) -> IStreamClientEndpoint:
    """The connecting endpoint for ``description`` (any Twisted endpoint string)."""
    if not verifies_peers(description):
        if description.startswith("ssl:") and "caCertsDir" not in split_endpoint(description)[1]:
            log.warn(
                "{endpoint} has no {param} (nor caCertsDir): the server's certificate is not verified",
                endpoint=description,
                param=CA_PARAMETER,
            )
        return clientFromString(reactor, description)
    host, port, timeout, options = client_options(description)
    return wrapClientTLS(options, HostnameEndpoint(reactor, host, port, timeout=timeout))


def client_options(description: str) -> Tuple[str, int, int, Any]:
    """Host, port, timeout and TLS options of a connecting ``ssl:`` string with ``caCertsFile``.

    Reads the certificate and key files now (ValueError if one is unusable).
    """
    from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates

    args, kwargs = split_endpoint(description)
    _check_keys("connecting", kwargs, _CLIENT_KEYS)
    positional = args[1:]
    for key in ("host", "port"):
        if key not in kwargs and positional:
            kwargs[key] = positional.pop(0)
    if positional or "host" not in kwargs or "port" not in kwargs:
        raise ValueError(f"{description!r}: expected ssl:host=HOST:port=PORT:... (or ssl:HOST:PORT:...)")
    own = None
    if "certKey" in kwargs or "privateKey" in kwargs:
        own = _own_certificate(kwargs.get("certKey"), kwargs.get("privateKey"))
    trust = trustRootFromCertificates(load_certificates(kwargs[CA_PARAMETER]))
    options = optionsForClientTLS(
        kwargs.get("hostname", kwargs["host"]),
        trustRoot=trust,
        extraCertificateOptions=_own_options(own) if own is not None else None,
    )
    return kwargs["host"], _int(kwargs, "port", 0), _int(kwargs, "timeout", 30), options


def authorities(description: str) -> Dict[str, str]:
    """SHA-256 fingerprint -> subject of each CA a listening ``description`` trusts for its peers.

    Empty for anything but an ``ssl:`` string with ``caCertsFile``.
    """
    if not verifies_peers(description):
        return {}
    from cryptography.hazmat.primitives.serialization import Encoding

    return {
        hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(): cert.subject.rfc4514_string()
        for cert in _pem_certificates(split_endpoint(description)[1][CA_PARAMETER])
    }


def tls_failure(reason: Any) -> Optional[str]:
    """The TLS error in a connection-lost ``reason``, if that is why it ended (a refused peer)."""
    if not isinstance(reason, Failure):
        return None
    try:
        from OpenSSL.SSL import Error
    except ImportError:  # no TLS support installed: no TLS connection either
        return None
    if reason.check(Error):
        return reason.getErrorMessage()
    return None
