"""The backend's status over HTTP (``--status ENDPOINT``), with twisted.web.

Three pages, all read from the backend on the reactor thread when asked:

- ``/status.json``: agents (name, slots, busy slots, environments), jobs
  waiting per environment, running jobs, totals (:func:`status_snapshot`);
- ``/``: the same as a small HTML page for people (everything that comes
  from peers is escaped);
- ``/metrics``: Prometheus metrics (:mod:`inginious_tx.backend.metrics`).

There is no authentication: the endpoint listens on 127.0.0.1 unless an
interface is named (:func:`status_endpoint`).
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any, Callable, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from .. import __version__
from .adapter import label
from .core import Backend
from .service import stop_reactor

__all__ = ["StatusService", "status_endpoint", "status_snapshot", "status_resource", "render_html"]


def status_endpoint(description: str) -> str:
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


def status_snapshot(backend: Backend, now: Optional[float] = None) -> Dict[str, Any]:
    """What ``/status.json`` shows: plain JSON-able data.

    Times are seconds since the epoch (the reactor's time).  ``queue`` has an
    entry for every offered environment and every environment a job waits for.
    """
    if now is None:
        now = time.time()
    agents = backend.agents
    running: List[Dict[str, Any]] = []
    agent_rows = []
    for agent in agents:
        agent_rows.append(
            {
                "name": agent.name,
                "address": agent.peer.description,
                "slots": agent.slots,
                "busy_slots": len(agent.running),
                "environments": sorted(label(env) for env in agent.environments),
            }
        )
        for job in agent.running.values():
            running.append(
                {
                    "job_id": job.key[1],
                    "client": job.client.name if job.client is not None else None,
                    "agent": agent.name,
                    "course_id": job.course_id,
                    "task_id": job.task_id,
                    "environment": label(job.environment),
                    "started_at": job.started_at,
                    "running_for": max(0.0, now - job.started_at),
                }
            )
    running.sort(key=lambda row: row["started_at"])
    queue = dict.fromkeys(backend.environments, 0)
    queue.update(backend.waiting_per_environment())
    stats = backend.stats
    return {
        "version": __version__,
        "time": now,
        "policy": getattr(backend.policy, "name", type(backend.policy).__name__),
        "agents": agent_rows,
        "queue": dict(sorted(queue.items())),
        "running": running,
        "totals": {
            "agents": len(agents),
            "clients": len(backend.clients),
            "slots": sum(a.slots for a in agents),
            "busy_slots": sum(len(a.running) for a in agents),
            "waiting": backend.waiting_count,
            "running": backend.running_count,
            "submitted": stats.submitted,
            "refused": stats.refused,
            "finished": dict(sorted(stats.finished.items())),
        },
    }


def _table(headers: List[str], rows: List[List[Any]], empty: str) -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(snapshot: Dict[str, Any]) -> str:
    """The status page for people; every value is escaped."""
    totals = snapshot["totals"]
    finished = ", ".join(f"{k}: {v}" for k, v in totals["finished"].items()) or "none"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot["time"]))
    agents = _table(
        ["agent", "address", "busy / slots", "environments"],
        [
            [a["name"], a["address"], f"{a['busy_slots']} / {a['slots']}", ", ".join(a["environments"])]
            for a in snapshot["agents"]
        ],
        "No agent is connected.",
    )
    queue = _table(["environment", "waiting"], [[k, v] for k, v in snapshot["queue"].items()], "No environment.")
    running = _table(
        ["job", "client", "agent", "task", "environment", "running for"],
        [
            [
                r["job_id"],
                r["client"] or "(gone)",
                r["agent"],
                f"{r['course_id']}/{r['task_id']}",
                r["environment"],
                f"{r['running_for']:.1f} s",
            ]
            for r in snapshot["running"]
        ],
        "No job is running.",
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>inginious-tx backend</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}</style></head>
<body><h1>inginious-tx backend</h1>
<p>{escape(when)}, policy {escape(str(snapshot["policy"]))}, version {escape(str(snapshot["version"]))}.
{totals["agents"]} agents, {totals["busy_slots"]} / {totals["slots"]} slots busy, {totals["clients"]} clients,
{totals["waiting"]} jobs waiting, {totals["running"]} running; {totals["submitted"]} submitted,
{totals["refused"]} refused; finished: {escape(finished)}.
<a href="status.json">status.json</a>, <a href="metrics">metrics</a>.</p>
<h2>Agents</h2>{agents}
<h2>Waiting jobs</h2>{queue}
<h2>Running jobs</h2>{running}
</body></html>
"""


class _Page(Resource):
    isLeaf = True
    # each page defines it
    render_GET: Callable[[Any], bytes]

    def __init__(self, backend: Backend, clock: Any) -> None:
        super().__init__()
        self._backend = backend
        self._clock = clock

    def _snapshot(self) -> Dict[str, Any]:
        return status_snapshot(self._backend, self._clock.seconds())

    def render_HEAD(self, request: Any) -> bytes:
        return self.render_GET(request)


class _JsonPage(_Page):
    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._snapshot(), indent=1).encode("utf-8")


class _HtmlPage(_Page):
    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        # besides escaping: no script may run on this page, whatever a peer sent
        request.setHeader(b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return render_html(self._snapshot()).encode("utf-8")


class _MetricsPage(Resource):
    """``prometheus_client``'s exposition, rendered on the reactor thread.

    (``prometheus_client.twisted.MetricsResource`` would collect in a worker
    thread, racing the reactor over the backend's state.)
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


class _Root(Resource):
    """The site root: its children, and an escaped 404 for anything else."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        return notFound()


def status_resource(backend: Backend, clock: Any, registry: Any = None) -> Resource:
    """The resource tree: ``/``, ``/status.json`` and ``/metrics``.

    ``registry``: the ``CollectorRegistry`` to expose (default: a new one for
    ``backend``, see :func:`~inginious_tx.backend.metrics.backend_registry`).
    """
    if registry is None:
        from .metrics import backend_registry

        registry = backend_registry(backend)
    root = _Root()
    root.putChild(b"", _HtmlPage(backend, clock))
    root.putChild(b"status.json", _JsonPage(backend, clock))
    root.putChild(b"metrics", _MetricsPage(registry))
    return root


class _QuietSite(Site):
    """A Site without access log: scrapes every few seconds would flood the backend's log."""

    def log(self, request: Any) -> None:
        pass


class StatusService(Service):
    """Serves :func:`status_resource` on an endpoint string while running.

    ``endpoint`` goes through :func:`status_endpoint`.  :attr:`ready` fires
    with the listening port (``port.getHost().port`` is the real port number
    with ``tcp:0``), or fails if the endpoint cannot listen; with ``fatal``,
    that failure also stops the reactor (what ``twistd`` wants).
    """

    name = "inginious-status"  # type: ignore[assignment]  # Twisted's Service.name is an untyped None
    log = Logger()

    def __init__(
        self, reactor: Any, backend: Backend, endpoint: str, registry: Any = None, fatal: bool = False
    ) -> None:
        self._reactor = reactor
        self._fatal = fatal
        self.backend = backend
        self.endpoint = status_endpoint(endpoint)
        self.registry = registry
        self.port: Any = None
        self.ready: Deferred = Deferred()

    def startService(self) -> None:
        super().startService()
        site = _QuietSite(status_resource(self.backend, self._reactor, self.registry))
        site.displayTracebacks = False
        site.noisy = False
        ready = self.ready
        if ready.called:
            ready = self.ready = Deferred()
        d = serverFromString(self._reactor, self.endpoint).listen(site)
        d.addCallbacks(self._listening, self._failed)
        d.chainDeferred(ready)

    def _listening(self, port: Any) -> Any:
        self.port = port
        self.log.info("status pages on http://{host}/ ({endpoint})", host=_where(port), endpoint=self.endpoint)
        return port

    def _failed(self, failure: Any) -> Any:
        self.log.critical(
            "status pages cannot listen on {endpoint}: {error}", endpoint=self.endpoint, error=failure.getErrorMessage()
        )
        if self._fatal:
            self._reactor.callWhenRunning(stop_reactor, self._reactor)
        return failure

    def stopService(self) -> Deferred:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return port.stopListening()


def _where(port: Any) -> str:
    host = port.getHost()
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    return str(getattr(host, "name", host))
