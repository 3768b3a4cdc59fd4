"""Small HTTP pages served beside a process (the backend's status pages, the agent's metrics).

What every such endpoint needs, hardened the same way:

- :func:`local_endpoint`: a bare port listens on 127.0.0.1 unless an
  interface is named (there is no authentication);
- :class:`CappedFactory`: at most ``cap`` connections at once; a new one
  over the cap closes the oldest idle one (or is closed itself when every
  one is busy streaming), counted and logged at most every
  :data:`REFUSAL_LOG_INTERVAL` seconds, so that a flood of idle connections
  cannot take the process's file descriptors;
- :class:`QuietSite`: no access log (a scrape every few seconds would flood
  the log), an idle timeout between requests, no tracebacks in answers;
- :class:`MetricsPage`: ``prometheus_client``'s text rendered on the
  reactor thread (the collectors read live state that only the reactor
  thread may touch);
- :class:`NotFoundRoot`: a root whose unknown children are an escaped 404.
"""

from __future__ import annotations

from typing import Any, Callable, Set

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

__all__ = [
    "local_endpoint", "CappedFactory", "QuietSite", "MetricsPage", "NotFoundRoot", "capped_site", "where",
    "DEFAULT_MAX_CONNECTIONS", "DEFAULT_IDLE_TIMEOUT", "REFUSAL_LOG_INTERVAL",
]  # fmt: skip

#: Most open connections, by default (a browser opens a few, a Prometheus server one).
DEFAULT_MAX_CONNECTIONS = 64
#: Seconds an idle connection is kept open, by default (between requests; a
#: request being answered, e.g. a stream of events, is never idle).
DEFAULT_IDLE_TIMEOUT = 15.0
#: Seconds between two log lines about refused connections.
REFUSAL_LOG_INTERVAL = 10.0


def local_endpoint(description: str) -> str:
    """A server endpoint string, on 127.0.0.1 unless an interface is named.

    ``8080`` and ``tcp:8080`` become ``tcp:8080:interface=127.0.0.1``; other
    endpoint strings (``unix:/path``, ``tcp:8080:interface=0.0.0.0``...) are
    kept as they are.
    """
    text = description.strip()
    if text.isdigit():
        text = "tcp:" + text
    kind = text.split(":", 1)[0]
    if kind in ("tcp", "ssl") and "interface=" not in text:
        text += ":interface=127.0.0.1"
    return text


class QuietSite(Site):
    """A Site without access log, named ``name`` in the log (e.g. "status pages")."""

    def __init__(self, resource: IResource, name: str, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self._name = name
        self.displayTracebacks = False
        self.noisy = False

    def log(self, request: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return self._name


class _Refused(Protocol):
    """Stands in for a connection over the cap: closed as soon as made."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


class CappedFactory(WrappingFactory):
    """Serves a site on at most ``cap`` connections at once.

    A connection over the cap closes the oldest open one that is not
    streaming (``streaming(transport)`` says which are): an idle or slow
    connection makes room for a new request, so the pages keep answering
    while someone holds connections open.  Only when every one is streaming
    is the newcomer closed at once.  Both are counted and logged (at most
    every :data:`REFUSAL_LOG_INTERVAL` seconds), naming ``name`` and the
    ``option`` that sets the cap.
    """

    log = Logger()

    def __init__(
        self,
        site: Site,
        cap: int,
        clock: IReactorTime,
        streaming: Callable[[Any], bool] = lambda transport: False,
        name: str = "status pages",
        option: str = "--status-max-connections",
    ) -> None:
        super().__init__(site)
        self.cap = cap
        self._clock = clock
        self._streaming = streaming
        self._name = name
        self._option = option
        #: connections being closed to make room (still registered until they are gone)
        self._closing: Set[Any] = set()
        #: connections closed at once for being over the cap
        self.refused = 0
        #: open connections closed to make room for a new one
        self.evicted = 0
        self._logged_at = -REFUSAL_LOG_INTERVAL
        self._unlogged = [0, 0]
        self.noisy = False

    def logPrefix(self) -> str:
        return self._name

    @property
    def open(self) -> int:
        """Connections open and not being closed."""
        return len(self.protocols) - len(self._closing)

    def buildProtocol(self, addr: Any) -> Any:
        if self.open < self.cap:
            return super().buildProtocol(addr)
        victim = next(
            (p for p in self.protocols if p not in self._closing and not self._streaming(p)), None
        )  # the oldest first: ``protocols`` keeps the order they connected in
        if victim is not None:
            self._closing.add(victim)
            victim.transport.abortConnection()
            self.evicted += 1
            self._unlogged[0] += 1
            self._log_caps(addr)
            return super().buildProtocol(addr)
        self.refused += 1
        self._unlogged[1] += 1
        self._log_caps(addr)
        return _Refused()

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        self._closing.discard(p)

    def _log_caps(self, addr: Any) -> None:
        now = self._clock.seconds()
        if now - self._logged_at < REFUSAL_LOG_INTERVAL:
            return
        evicted, refused = self._unlogged
        self.log.warn(
            "{name}: {cap} connections open ({option}): closed {evicted} older connection(s) to make room and "
            "refused {refused} new one(s), the last from {addr}",
            name=self._name,
            cap=self.cap,
            option=self._option,
            evicted=evicted,
            refused=refused,
            addr=addr,
        )
        self._logged_at = now
        self._unlogged = [0, 0]


def capped_site(
    resource: IResource,
    clock: IReactorTime,
    *,
    name: str,
    option: str,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    streaming: Callable[[Any], bool] = lambda transport: False,
) -> CappedFactory:
    """The factory to listen with: ``resource`` in a :class:`QuietSite` behind a :class:`CappedFactory`."""
    site = QuietSite(resource, name, timeout=idle_timeout, reactor=clock)
    return CappedFactory(site, max_connections, clock, streaming, name, option)


class MetricsPage(Resource):
    """``prometheus_client``'s exposition of ``registry``, rendered on the reactor thread.

    (``prometheus_client.twisted.MetricsResource`` would collect in a worker
    thread, racing the reactor over the state the collectors read.)
    """

    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Any) -> bytes:
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept") or b""
        encoder, content_type = choose_encoder(accept.decode("latin-1"))
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return encoder(self._registry)

    def render_HEAD(self, request: Any) -> bytes:
        return self.render_GET(request)


class NotFoundRoot(Resource):
    """A site root: its children, and an escaped 404 for anything else."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        return notFound()


def where(port: Any) -> str:
    """``host:port`` (or the socket's path) a listening port is on, for the log."""
    host = port.getHost()
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    return str(getattr(host, "name", host))
