"""Prometheus metrics of a backend, with the official ``prometheus-client``.

The backend keeps plain totals (:class:`~inginious_tx.backend.core.BackendStats`)
and its live state; :class:`BackendCollector` turns them into metric families
only when a scrape asks, so the job path never touches a metric object (and
takes no lock).  Each backend gets its own ``CollectorRegistry``
(:func:`backend_registry`), never the process-wide default one, so that
several backends (tests, embedding applications) do not collide.

``prometheus-client`` is the optional extra ``metrics``
(``pip install 'inginious-tx[metrics]'``).
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .core import TIME_BUCKETS, Backend

__all__ = ["BackendCollector", "backend_registry", "PREFIX"]

#: Prefix of every metric name.
PREFIX = "inginious_"


def _histogram(name: str, doc: str, buckets: list, total: float) -> HistogramMetricFamily:
    cumulative = []
    count = 0
    for bound, n in zip((*TIME_BUCKETS, float("inf")), buckets, strict=True):
        count += n
        cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), count))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=total)


class BackendCollector(Collector):
    """Reads a :class:`Backend` at scrape time (on the reactor thread)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def collect(self) -> Iterator[Metric]:
        backend = self._backend
        stats = backend.stats
        yield CounterMetricFamily(
            PREFIX + "jobs_submitted", "Jobs sent by registered clients (refused ones included).", stats.submitted
        )
        yield CounterMetricFamily(
            PREFIX + "jobs_refused",
            "Jobs answered 'crash' at once without being queued (queue full, duplicate id, shutting down).",
            stats.refused,
        )
        finished = CounterMetricFamily(
            PREFIX + "jobs_finished",
            "Queued jobs that ended, by result type ('dropped': the client left first).",
            labels=["result"],
        )
        for kind, n in sorted(stats.finished.items()):
            finished.add_metric([kind], n)
        yield finished
        yield _histogram(
            PREFIX + "job_queue_wait_seconds",
            "Time from submission to the first agent.",
            stats.wait_buckets,
            stats.wait_sum,
        )
        yield _histogram(
            PREFIX + "job_run_seconds",
            "Time from dispatch to the end of the job on its (last) agent.",
            stats.run_buckets,
            stats.run_sum,
        )
        agents = backend.agents
        yield GaugeMetricFamily(PREFIX + "agents_connected", "Registered agents.", len(agents))
        slots = sum(a.slots for a in agents)
        yield GaugeMetricFamily(PREFIX + "agent_slots", "Job slots of the registered agents.", slots)
        yield GaugeMetricFamily(PREFIX + "clients_connected", "Registered clients.", len(backend.clients))
        waiting = GaugeMetricFamily(PREFIX + "jobs_waiting", "Jobs waiting, per environment.", labels=["environment"])
        counts = dict.fromkeys(backend.environments, 0)
        counts.update(backend.waiting_per_environment())
        for env, n in sorted(counts.items()):
            waiting.add_metric([env], n)
        yield waiting
        yield GaugeMetricFamily(PREFIX + "jobs_running", "Jobs running on agents.", backend.running_count)


def backend_registry(backend: Backend) -> CollectorRegistry:
    """A new registry holding only the metrics of ``backend``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackendCollector(backend))
    return registry
