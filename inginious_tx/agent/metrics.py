"""The agent's Prometheus metrics over HTTP (``twistd inginious-agent --metrics ENDPOINT``).

Off by default.  ``/metrics`` says, per environment of the agent, what its
containers prepared ahead (:mod:`.container_pool`) do:

=========================================================  =========  =================================
name                                                       type       what
=========================================================  =========  =================================
``inginious_agent_pool_ready``                             gauge      containers waiting for a job now
``inginious_agent_pool_creating``                          gauge      containers being made now
``inginious_agent_pool_target``                            gauge      containers wanted (by demand)
``inginious_agent_pool_hits_total``                        counter    jobs that took a ready container
``inginious_agent_pool_misses_total``                      counter    jobs that found none ready
``inginious_agent_pool_made_total``                        counter    containers made ahead
``inginious_agent_pool_creation_failures_total``           counter    creations that failed
``inginious_agent_pool_dead_total``                        counter    ready containers found dead
``inginious_agent_pool_ready_seconds``                     histogram  job arrival to its container
                                                                      running, ``outcome`` hit or miss
=========================================================  =========  =================================

Every series has an ``environment`` and a ``pool`` label (``grading`` for
grading containers, ``student`` for run_student's).  The ``environment`` label only takes the names of the agent's own
environments (a pool has keys only for the environments the agent serves),
so the series are bounded by its configuration.  Everything is read from
the pools when a scrape asks, on the reactor thread.

The page is hardened as the backend's status pages are (``inginious_tx._http``):
127.0.0.1 unless an interface is named, at most ``--metrics-max-connections``
open at once, idle ones closed after ``--metrics-idle-timeout`` seconds, no
authentication.  It needs ``prometheus-client`` (the ``metrics`` extra).
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Iterable, Iterator, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from .._http import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    CappedFactory,
    MetricsPage,
    NotFoundRoot,
    capped_site,
    local_endpoint,
    where,
)
from .._reactor import CommonReactor
from .._ready import ReadyResult
from .container_pool import READY_BUCKETS, IPooledBackend, KeyStats, ReadyHistogram

__all__ = ["PoolCollector", "agent_registry", "AgentMetricsService", "PREFIX"]

#: Prefix of every metric name.
PREFIX = "inginious_agent_pool_"


def environment_of(key: Hashable) -> str:
    """The environment a pool key stands for (its ``environment`` attribute, else the key itself)."""
    return str(getattr(key, "environment", key))


def _sum_histograms(histograms: Iterable[ReadyHistogram]) -> ReadyHistogram:
    out = ReadyHistogram()
    for h in histograms:
        out.counts = [a + b for a, b in zip(out.counts, h.counts, strict=True)]
        out.total += h.total
    return out


class PoolCollector:
    """Reads ``backend``'s pools at scrape time, summed per environment and role (all the keys of one).

    The ``pool`` label tells grading containers from run_student's (``grading``, ``student``).
    """

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def _per_environment(self) -> Dict[Tuple[str, str], List[KeyStats]]:
        out: Dict[Tuple[str, str], List[KeyStats]] = {}
        if not IPooledBackend.providedBy(self._backend):
            return out
        for pool in self._backend.container_pools():
            for key, stats in pool.stats().items():
                out.setdefault((environment_of(key), getattr(pool, "role", "grading")), []).append(stats)
        return out

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        envs = sorted(self._per_environment().items())
        gauges = (
            ("ready", "Containers prepared ahead and waiting for a job.", "ready"),
            ("creating", "Containers being prepared ahead now.", "creating"),
            ("target", "Containers the pool wants ready or being made, by recent demand.", "target"),
        )
        for name, doc, attr in gauges:
            g = GaugeMetricFamily(PREFIX + name, doc, labels=["environment", "pool"])
            for (env, role), stats in envs:
                g.add_metric([env, role], sum(getattr(s, attr) for s in stats))
            yield g
        counters = (
            ("hits", "Jobs that took a container prepared ahead.", "hits"),
            ("misses", "Jobs that found no container ready (their own was made).", "misses"),
            ("made", "Containers prepared ahead.", "made"),
            ("creation_failures", "Containers that could not be prepared ahead.", "failures"),
            ("dead", "Containers found dead when a job came for them (discarded).", "dead"),
        )
        for name, doc, attr in counters:
            c = CounterMetricFamily(PREFIX + name, doc, labels=["environment", "pool"])
            for (env, role), stats in envs:
                c.add_metric([env, role], sum(getattr(s, attr) for s in stats))
            yield c
        h = HistogramMetricFamily(
            PREFIX + "ready_seconds",
            "Seconds from a job's arrival to its container running its command, by whether it was prepared ahead.",
            labels=["environment", "pool", "outcome"],
        )
        for (env, role), stats in envs:
            for outcome, attr in (("hit", "ready_hit"), ("miss", "ready_miss")):
                hist = _sum_histograms(getattr(s, attr) for s in stats)
                h.add_metric([env, role, outcome], _cumulative(hist), hist.total)
        yield h


def _cumulative(hist: ReadyHistogram) -> List[Tuple[str, float]]:
    out: List[Tuple[str, float]] = []
    count = 0
    for bound, n in zip((*READY_BUCKETS, float("inf")), hist.counts, strict=True):
        count += n
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), count))
    return out


def agent_registry(backend: Any) -> Any:
    """A ``CollectorRegistry`` of its own (never the process-wide one) with ``backend``'s pool metrics."""
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(backend))
    return registry


class AgentMetricsService(Service):
    """Serves ``/metrics`` (``registry``) on ``endpoint`` while running.

    :attr:`ready` fires with the listening port, or fails if the endpoint
    cannot listen (the ``twistd`` command then ends, see :mod:`inginious_tx._twistd`).
    """

    name = "inginious-agent-metrics"  # type: ignore[assignment]  # Twisted's Service.name is untyped
    log = Logger()

    def __init__(
        self,
        reactor: CommonReactor,
        registry: Any,
        endpoint: str,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self.registry = registry
        self.endpoint = local_endpoint(endpoint)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.factory: Optional[CappedFactory] = None
        self.port: Any = None
        self._ready = ReadyResult()
        self._attempt: Optional[Deferred] = None

    @property
    def ready(self) -> Deferred:
        """Fires with the listening port, or fails (a new Deferred at each access)."""
        return self._ready.wait()

    def startService(self) -> None:
        super().startService()
        root = NotFoundRoot()
        root.putChild(b"metrics", MetricsPage(self.registry))
        factory = self.factory = capped_site(
            root, self._reactor, name="agent metrics", option="--metrics-max-connections",
            max_connections=self.max_connections, idle_timeout=self.idle_timeout,
        )  # fmt: skip
        self._ready.reset()
        d = self._attempt = serverFromString(self._reactor, self.endpoint).listen(factory)
        d.addCallbacks(self._listening, self._failed)
        d.addBoth(self._ready.fire)

    def _listening(self, port: Any) -> Any:
        self.port = port
        self.log.info("agent metrics on http://{host}/metrics ({endpoint})", host=where(port), endpoint=self.endpoint)
        return port

    def _failed(self, failure: Any) -> Any:
        self.log.critical(
            "agent metrics cannot listen on {endpoint}: {error}",
            endpoint=self.endpoint,
            error=failure.getErrorMessage(),
        )
        return failure

    def stopService(self) -> Deferred:
        super().stopService()
        attempt, self._attempt = self._attempt, None

        def stop(_: Any) -> Any:  # also a port that came up after the stop
            port, self.port = self.port, None
            return port.stopListening() if port is not None else None

        if attempt is None:
            return succeed(None)
        return DeferredList([attempt], consumeErrors=True).addCallback(stop)
