"""Why a backend endpoint cannot be reached, found at once: one plain connection attempt.

The client's own link keeps retrying quietly (ZeroMQ reconnects by itself,
stream links back off), which suits a long-lived client but left the
command waiting its whole ``--connect-timeout`` for a cause known at once
(nothing listens there).  :func:`unreachable` makes one stream connection
to the same host and port (or Unix socket) and closes it as soon as it is
made: a refusal is reported with its cause, anything else (it connects, or
takes its time) says nothing and the command waits as before.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol

from .._reactor import CommonReactor
from ..transport.tls import split_endpoint

__all__ = ["unreachable", "plain_endpoint"]

def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def plain_endpoint(endpoint: str) -> Optional[str]:
    """The plain stream endpoint reaching the same place as ``endpoint`` (None if there is none to try)."""
    if endpoint.startswith("zmq:tcp://"):
        address = endpoint[len("zmq:tcp://") :].split("?", 1)[0]
        host, sep, port = address.rpartition(":")
        host = host.strip("[]")
        return f"tcp:host={_escape(host)}:port={port}" if sep and host and port.isdigit() else None
    if endpoint.startswith("zmq:ipc://"):
        path = endpoint[len("zmq:ipc://") :].split("?", 1)[0]
        return f"unix:path={_escape(path)}" if path else None
    if endpoint.startswith(("tcp:", "tcp6:", "ssl:")):
        try:
            args, kwargs = split_endpoint(endpoint)
        except ValueError:
            return None
        rest = args[1:]
        name = kwargs.get("host") or (rest.pop(0) if rest else "")
        number = kwargs.get("port") or (rest.pop(0) if rest else "")
        return f"tcp:host={_escape(name)}:port={number}" if name and number else None
    if endpoint.startswith("unix:"):
        return endpoint
    return None


class _Quiet(Protocol):
    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.abortConnection()  # only the attempt mattered: say nothing to the backend


def unreachable(reactor: CommonReactor, endpoint: str, timeout: float) -> Deferred[Optional[str]]:
    """Fires with why ``endpoint`` refuses connections ("connection refused"...), or None if it may be reachable."""
    target = plain_endpoint(endpoint)
    if target is None:
        return succeed(None)
    try:
        attempt = clientFromString(reactor, f"{target}:timeout={max(1, int(timeout))}")
    except (ValueError, TypeError, KeyError):
        return succeed(None)
    d: Deferred[Any] = attempt.connect(Factory.forProtocol(_Quiet))

    def why(failure: Any) -> Optional[str]:
        if failure.check(error.ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if failure.check(error.DNSLookupError):
            return f"unknown host ({failure.getErrorMessage()})"
        if failure.check(error.NoRouteError):
            return "no route to host"
        text = failure.getErrorMessage()
        if failure.check(error.ConnectError) and ("No such file" in text or "Connection refused" in text):
            return "no such socket (nothing listens there)" if "No such file" in text else "connection refused"
        return None

    return d.addCallbacks(lambda _: None, why)
