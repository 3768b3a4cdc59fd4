"""Status pages and Prometheus metrics of the backend.

Unit tests drive a :class:`Backend` with a fake clock and fake peers; the
integration test runs a ``BackendService`` and a ``StatusService`` on real
sockets, fake agents and a fake client over TCP, and reads ``/status.json``,
``/`` and ``/metrics`` over real HTTP with ``twisted.web.client.Agent``.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Dict, Tuple

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from test_backend_integration import NetAgent, NetClient
from twisted.application.service import IService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from inginious_tx.backend.core import TIME_BUCKETS, Backend, BackendSettings
from inginious_tx.backend.metrics import backend_registry
from inginious_tx.backend.policies import PriorityPolicy
from inginious_tx.backend.service import BackendService
from inginious_tx.backend.status import StatusService, render_html, status_endpoint, status_snapshot
from inginious_tx.backend.testing import FakePeer, agent_hello, job_done, new_job
from inginious_tx.messages import BackendNewJob, ClientHello, ClientKillJob

HOSTILE = '<script>alert("x")</script>'


def samples(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: Dict, name: str, **labels: str) -> float:
    """The one sample ``name`` whose labels include ``labels`` (series may carry more labels)."""
    exact = parsed.get((name, tuple(sorted(labels.items()))))
    if exact is not None:
        return exact
    hits = [v for (n, have), v in parsed.items() if n == name and set(labels.items()) <= set(have)]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


# -- unit: endpoints, snapshot, metrics ------------------------------------------------


@pytest.mark.parametrize(
    "given, expected",
    [
        ("8080", "tcp:8080:interface=127.0.0.1"),
        ("tcp:0", "tcp:0:interface=127.0.0.1"),
        (" tcp:8080 ", "tcp:8080:interface=127.0.0.1"),
        ("tcp:8080:interface=0.0.0.0", "tcp:8080:interface=0.0.0.0"),
        ("unix:/run/itx/status.sock", "unix:/run/itx/status.sock"),
    ],
)
def test_status_endpoints_listen_on_localhost_unless_told(given: str, expected: str) -> None:
    assert status_endpoint(given) == expected


def driven_backend() -> Tuple[Clock, Backend, FakePeer, FakePeer]:
    clock = Clock()
    clock.advance(1000)
    backend = Backend(clock, PriorityPolicy(), BackendSettings())
    client, agent = FakePeer(b"c", "client-peer"), FakePeer(b"a", "agent-peer")
    backend.client_handler.client_hello(client, ClientHello("the-client"))
    return clock, backend, client, agent


def test_stats_and_metrics_follow_jobs_through_the_backend() -> None:
    clock, backend, client, agent = driven_backend()
    h = backend.client_handler
    # two jobs wait 3 s for an agent; one more waits for an environment nobody offers
    h.client_new_job(client, new_job("a"))
    h.client_new_job(client, new_job("b"))
    h.client_new_job(client, new_job("lonely", environment="nobody"))
    h.client_new_job(client, new_job("a"))  # duplicate id: refused
    clock.advance(3)
    backend.agent_handler.agent_hello(agent, agent_hello("agent-1", 2, ["default"]))
    sent = agent.of_type(BackendNewJob)
    assert [m.job_id[1] for m in sent] == ["a", "b"]
    clock.advance(0.2)
    backend.agent_handler.agent_job_done(agent, job_done(sent[0].job_id, "success"))
    clock.advance(0.3)
    backend.agent_handler.agent_job_done(agent, job_done(sent[1].job_id, "made-up-result"))
    h.client_new_job(client, new_job("c"))  # runs at once (no wait), stays running
    h.client_kill_job(client, ClientKillJob("lonely"))  # killed while waiting: no run time
    h.client_new_job(client, new_job("w", environment="nobody"))
    stats = backend.stats
    assert (stats.submitted, stats.accepted, stats.refused) == (6, 5, 1)
    assert stats.finished == {"success": 1, "other": 1, "killed": 1}

    parsed = samples(_exposition(backend))
    assert value(parsed, "inginious_jobs_submitted_total") == 6
    assert value(parsed, "inginious_jobs_refused_total") == 1
    assert value(parsed, "inginious_jobs_finished_total", result="success") == 1
    assert value(parsed, "inginious_jobs_finished_total", result="other") == 1
    assert value(parsed, "inginious_jobs_finished_total", result="killed") == 1
    assert value(parsed, "inginious_agents_connected") == 1
    assert value(parsed, "inginious_agent_slots") == 2
    assert value(parsed, "inginious_clients_connected") == 1
    assert value(parsed, "inginious_jobs_running") == 1
    assert value(parsed, "inginious_jobs_waiting", environment="default") == 0
    assert value(parsed, "inginious_jobs_waiting", environment="nobody") == 1
    # queue wait: a and b waited 3 s, c 0 s; buckets are cumulative
    assert value(parsed, "inginious_job_queue_wait_seconds_count") == 3
    assert value(parsed, "inginious_job_queue_wait_seconds_sum") == pytest.approx(6.0)
    assert value(parsed, "inginious_job_queue_wait_seconds_bucket", le="0.01") == 1
    assert value(parsed, "inginious_job_queue_wait_seconds_bucket", le="2.5") == 1
    assert value(parsed, "inginious_job_queue_wait_seconds_bucket", le="5.0") == 3
    assert value(parsed, "inginious_job_queue_wait_seconds_bucket", le="+Inf") == 3
    # run time: a ran 0.2 s, b 0.5 s
    assert value(parsed, "inginious_job_run_seconds_count") == 2
    assert value(parsed, "inginious_job_run_seconds_sum") == pytest.approx(0.7)
    assert value(parsed, "inginious_job_run_seconds_bucket", le="0.1") == 0
    assert value(parsed, "inginious_job_run_seconds_bucket", le="0.25") == 1
    assert value(parsed, "inginious_job_run_seconds_bucket", le="0.5") == 2
    assert len([k for k in parsed if k[0] == "inginious_job_run_seconds_bucket"]) == len(TIME_BUCKETS) + 1


def _exposition(backend: Backend) -> str:
    from prometheus_client.exposition import generate_latest

    return generate_latest(backend_registry(backend)).decode()


def test_a_client_that_leaves_counts_its_jobs_as_dropped() -> None:
    clock, backend, client, agent = driven_backend()
    backend.agent_handler.agent_hello(agent, agent_hello("agent-1", 1, ["default"]))
    backend.client_handler.client_new_job(client, new_job("runs"))
    backend.client_handler.client_new_job(client, new_job("waits"))
    backend.client_handler.peer_disconnected(client, "closed")
    assert backend.stats.finished == {"dropped": 1}
    [running] = agent.of_type(BackendNewJob)
    backend.agent_handler.agent_job_done(agent, job_done(running.job_id, "killed"))
    assert backend.stats.finished == {"dropped": 2}


def test_each_backend_has_its_own_registry() -> None:
    # the global default registry would refuse the second backend's metrics
    _, one, _, _ = driven_backend()
    _, two, client, _ = driven_backend()
    two.client_handler.client_new_job(client, new_job("x"))
    r1, r2 = backend_registry(one), backend_registry(two)
    assert isinstance(r1, CollectorRegistry) and r1 is not r2
    assert r1.get_sample_value("inginious_jobs_submitted_total") == 0
    assert r2.get_sample_value("inginious_jobs_submitted_total") == 1


def test_snapshot_lists_agents_running_jobs_and_queues() -> None:
    clock, backend, client, agent = driven_backend()
    backend.agent_handler.agent_hello(agent, agent_hello(HOSTILE, 1, ["py", "c"]))
    backend.client_handler.client_new_job(client, new_job("r", environment="py", course_id="crs", task_id="t1"))
    backend.client_handler.client_new_job(client, new_job("w", environment="py"))
    backend.client_handler.client_new_job(client, new_job("x", environment="<b>odd</b>"))
    clock.advance(2.5)
    snap = status_snapshot(backend, clock.seconds())
    json.dumps(snap)  # all JSON-able
    assert snap["agents"] == [
        {
            "name": HOSTILE,
            "address": "agent-peer",
            "dialect": "0.6",
            "slots": 1,
            "busy_slots": 1,
            "environments": ["c", "py"],
            "environment_ids": ["docker/c", "docker/py"],
        }
    ]
    assert snap["queue"] == {"<b>odd</b>": 1, "c": 0, "py": 1}
    [row] = snap["running"]
    assert row["job_id"] == "r" and row["client"] == "the-client" and row["agent"] == HOSTILE
    assert (row["course_id"], row["task_id"], row["environment"]) == ("crs", "t1", "py")
    assert row["started_at"] == 1000 and row["running_for"] == 2.5
    totals = snap["totals"]
    assert (totals["waiting"], totals["running"], totals["slots"], totals["busy_slots"]) == (2, 1, 1, 1)
    page = render_html(snap)
    assert "<script>" not in page and "<b>odd" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page and "&lt;b&gt;odd&lt;/b&gt;" in page


# -- integration: real sockets, real HTTP ---------------------------------------------------


def fetch(url: str, accept: str = "") -> Deferred:
    """``GET url``: a Deferred firing with (status code, {header: value}, body)."""
    return ensureDeferred(_get(url, accept))


class _Body(Protocol):
    """Collects a response's body.  (``readBody`` warns that the HTTP client's body transport
    cannot ``abortConnection``: a deprecation of its own that this test has no use for.)"""

    def __init__(self) -> None:
        self.chunks: list = []
        self.done: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        from twisted.web.client import PotentialDataLoss, ResponseDone

        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


async def _get(url: str, accept: str = "") -> Tuple[int, Dict[str, str], bytes]:
    from twisted.internet import reactor

    headers = Headers({b"accept": [accept.encode()]}) if accept else None
    response = await Agent(reactor).request(b"GET", url.encode("ascii"), headers)
    collect = _Body()
    response.deliverBody(collect)
    body = await collect.done
    wanted = ("content-type", "content-security-policy")
    headers = {name: response.headers.getRawHeaders(name.encode(), [b""])[0].decode() for name in wanted}
    return response.code, headers, body


async def running_backend(reactor: Any, closers: list, within: Any) -> Tuple[BackendService, str, str]:
    """A backend on loopback TCP (stopped by ``closers``), with its client and agent endpoints."""
    backend_service = BackendService(
        reactor,
        ["tcp:0:interface=127.0.0.1"],
        ["tcp:0:interface=127.0.0.1"],
        settings=BackendSettings(ping_interval=0.05),
        shutdown_grace=0,
    )
    backend_service.startService()
    closers.append(backend_service.stopService)
    c_ep, a_ep = [listener.connect_endpoint for listener in await within(backend_service.ready)]
    return backend_service, c_ep, a_ep


@pytest_twisted.ensureDeferred
async def test_status_pages_over_http(closers: list, until: Any, within: Any) -> None:
    from twisted.internet import reactor

    backend_service, c_ep, a_ep = await running_backend(reactor, closers, within)
    status = StatusService(reactor, backend_service.backend, "tcp:0")
    verifyObject(IService, status)
    status.startService()
    closers.append(status.stopService)
    port = await within(status.ready)
    assert port.getHost().host == "127.0.0.1"
    base = f"http://127.0.0.1:{port.getHost().port}"

    worker = NetAgent(a_ep, "worker", slots=3)
    holder = NetAgent(a_ep, HOSTILE, slots=1, envs=("evil",), answer=False)
    for a in (worker, holder):
        closers.append(a.connection.stop)
    client = NetClient(c_ep, "client")
    closers.append(client.connection.stop)
    await until(lambda: set(client.environments) == {"default", "evil"}, what="both agents")
    for i in range(3):
        client.send(new_job(f"ok-{i}", course_id="demo", task_id="pass"))
    client.send(new_job("held", environment="evil", course_id="demo", task_id="loop"))
    client.send(new_job("stuck", environment="nobody"))
    await until(lambda: len(client.results) == 3 and holder.jobs, what="3 results, 1 held job")

    code, headers, body = await within(fetch(base + "/status.json"))
    assert code == 200 and headers["content-type"].startswith("application/json")
    snap = json.loads(body)
    agents = {a["name"]: a for a in snap["agents"]}
    assert agents["worker"]["slots"] == 3 and agents["worker"]["busy_slots"] == 0
    assert agents[HOSTILE]["slots"] == 1 and agents[HOSTILE]["busy_slots"] == 1
    assert agents[HOSTILE]["environments"] == ["evil"]
    assert snap["queue"] == {"default": 0, "evil": 0, "nobody": 1}
    [held] = snap["running"]
    assert (held["job_id"], held["agent"], held["course_id"], held["task_id"]) == ("held", HOSTILE, "demo", "loop")
    assert held["client"] == "client" and held["started_at"] > 0
    assert snap["totals"]["submitted"] == 5 and snap["totals"]["finished"] == {"success": 3}
    assert (snap["totals"]["waiting"], snap["totals"]["running"], snap["totals"]["agents"]) == (1, 1, 2)

    code, headers, body = await within(fetch(base + "/"))
    page = body.decode()
    assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert "worker" in page and "demo/loop" in page
    assert "<script>" not in page and "&lt;script&gt;" in page

    code, headers, body = await within(fetch(base + "/metrics"))
    assert code == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    parsed = samples(body.decode())
    assert value(parsed, "inginious_jobs_finished_total", result="success") == 3
    assert value(parsed, "inginious_jobs_submitted_total") == 5
    assert value(parsed, "inginious_agents_connected") == 2
    assert value(parsed, "inginious_jobs_running") == 1
    assert value(parsed, "inginious_jobs_waiting", environment="nobody") == 1
    assert value(parsed, "inginious_job_queue_wait_seconds_count") == 4
    assert value(parsed, "inginious_job_run_seconds_count") == 3

    # OpenMetrics for scrapers that ask for it; unknown pages are 404
    openmetrics = "application/openmetrics-text; version=1.0.0"
    code, headers, body = await within(fetch(base + "/metrics", openmetrics))
    assert code == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    code, _, _ = await within(fetch(base + "/nothing-here"))
    assert code == 404

    await status.stopService()
    with pytest.raises(ConnectionRefusedError):
        await within(fetch(base + "/status.json"))


@pytest_twisted.ensureDeferred
async def test_a_status_endpoint_that_cannot_listen_fails_ready(within: Any, log_events: Any) -> None:
    from twisted.internet import reactor

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        _, clock_backend, _, _ = driven_backend()
        status = StatusService(reactor, clock_backend, f"tcp:{taken.getsockname()[1]}")
        status.startService()
        with pytest.raises(CannotListenError):
            await within(status.ready)
        assert log_events.has("status pages cannot listen")
        await status.stopService()
    finally:
        taken.close()


def test_a_status_failure_nobody_waits_for_is_not_kept_unconsumed(log_events: Any) -> None:
    # twistd logs a failed Deferred nobody consumed a second time, when it is collected.
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    _, clock_backend, _, _ = driven_backend()
    status = StatusService(reactor, clock_backend, "tcp:99999")  # no such port: cannot listen
    status.startService()
    assert log_events.has("status pages cannot listen")
    kept = [v for v in vars(status).values() if isinstance(v, Deferred) and v.called and isinstance(v.result, Failure)]
    assert kept == []
    errors: list = []
    status.ready.addErrback(errors.append)
    assert len(errors) == 1
    status.stopService()
