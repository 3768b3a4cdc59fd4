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

from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .adapter import label
from .core import TIME_BUCKETS, Backend
from .timeseries import (
    ACTIVE_SECONDS,
    OTHER,
    OTHER_ENVIRONMENT,
    environment_of,
    fold_environments,
    known_environments,
)

if TYPE_CHECKING:
    from .timeseries import StatusRecorder

#: Labels of every per-environment series: ``environment`` as it always was (a
#: ``docker`` environment by its bare name, others as ``type/name``), then the
#: type and the name apart.
ENV_LABELS = ["environment", "environment_type", "environment_name"]


def _env_labels(env: Tuple[str, str]) -> List[str]:
    if env == OTHER_ENVIRONMENT:
        return [OTHER, OTHER, OTHER]
    return [label(env), env[0], env[1]]


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


def _counters(*rows: Tuple[str, str, float]) -> Iterator[CounterMetricFamily]:
    """One counter a row of (name without the prefix, help text, value)."""
    for name, doc, value in rows:
        yield CounterMetricFamily(PREFIX + name, doc, value)


class BackendCollector(Collector):
    """Reads a :class:`Backend` at scrape time (on the reactor thread).

    With a :class:`~inginious_tx.backend.timeseries.StatusRecorder` (what
    ``--status`` runs), the waiting counts come from its job observer instead
    of a walk over every job, and the series it alone knows are added: jobs
    started per environment, jobs queued again, agent registrations and
    removals.
    """

    def __init__(self, backend: Backend, recorder: Optional[StatusRecorder] = None) -> None:
        self._backend = backend
        self._recorder = recorder

    def collect(self) -> Iterator[Metric]:
        backend = self._backend
        stats = backend.stats
        yield from _counters(
            ("jobs_submitted", "Jobs sent by registered clients (refused ones included).", stats.submitted),
            (
                "jobs_refused",
                "Jobs answered 'crash' at once without being queued (queue full, duplicate id, shutting down).",
                stats.refused,
            ),
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
        yield GaugeMetricFamily(
            PREFIX + "clients_connected",
            "Registered clients, also those that left without a word (ZeroMQ does not tell) until "
            "--client-idle-timeout forgets them: see inginious_clients_active.",
            len(backend.clients),
        )
        peers = GaugeMetricFamily(
            PREFIX + "peers", "Registered agents and clients, by role and protocol dialect.", labels=["role", "dialect"]
        )
        by_dialect: Dict[Tuple[str, str], int] = {}
        for role, states in (("agent", agents), ("client", backend.clients)):
            for state in states:
                key = (role, str(getattr(state.dialect, "name", "unknown")))
                by_dialect[key] = by_dialect.get(key, 0) + 1
        for (role, dialect), n in sorted(by_dialect.items()):
            peers.add_metric([role, dialect], n)
        yield peers
        info = GaugeMetricFamily(
            PREFIX + "agent_info", "1 per registered agent, with its protocol dialect.", labels=["agent", "dialect"]
        )
        for name, dialect in sorted({(a.name, str(getattr(a.dialect, "name", "unknown"))) for a in agents}):
            info.add_metric([name, dialect], 1)
        yield info
        recorder = self._recorder
        known = known_environments(backend)
        if recorder is None:
            exact: Dict[Tuple[str, str], int] = {}
            for text, n in backend.waiting_per_environment().items():
                env = environment_of(text, known)
                exact[env] = exact.get(env, 0) + n
            by_env = fold_environments(exact, known.values())
        else:
            by_env = recorder.waiting_shown()
        waiting = GaugeMetricFamily(
            PREFIX + "jobs_waiting",
            "Jobs waiting, per environment: those offered, a few others, and the rest as '(other)'.",
            labels=ENV_LABELS,
        )
        for env, n in sorted(by_env.items()):
            waiting.add_metric(_env_labels(env), n)
        yield waiting
        yield GaugeMetricFamily(PREFIX + "jobs_running", "Jobs running on agents.", backend.running_count)
        offered: Dict[Tuple[str, str], int] = dict.fromkeys(known.values(), 0)
        env_slots: Dict[Tuple[str, str], int] = dict.fromkeys(known.values(), 0)
        per_agent: Dict[str, list] = {}
        for agent in agents:
            for env in agent.environments:
                offered[env] = offered.get(env, 0) + 1
                env_slots[env] = env_slots.get(env, 0) + agent.slots
            row = per_agent.setdefault(agent.name, [0, 0])
            row[0] += len(agent.running)
            row[1] += agent.slots
        family = GaugeMetricFamily(
            PREFIX + "environment_agents", "Registered agents offering each environment.", labels=ENV_LABELS
        )
        for env, n in sorted(offered.items()):
            family.add_metric(_env_labels(env), n)
        yield family
        family = GaugeMetricFamily(
            PREFIX + "environment_slots", "Job slots of the agents offering each environment.", labels=ENV_LABELS
        )
        for env, n in sorted(env_slots.items()):
            family.add_metric(_env_labels(env), n)
        yield family
        busy = GaugeMetricFamily(
            PREFIX + "agent_busy_slots", "Busy job slots of each agent (by name).", labels=["agent"]
        )
        total = GaugeMetricFamily(PREFIX + "agent_job_slots", "Job slots of each agent (by name).", labels=["agent"])
        for name, (n_busy, n_slots) in sorted(per_agent.items()):
            busy.add_metric([name], n_busy)
            total.add_metric([name], n_slots)
        yield busy
        yield total
        if recorder is None:
            return
        started = CounterMetricFamily(
            PREFIX + "jobs_started",
            "Jobs handed to an agent, per environment (since the status service started).",
            labels=ENV_LABELS,
        )
        for env, n in sorted({**dict.fromkeys(by_env, 0), **recorder.started_by_environment}.items()):
            started.add_metric(_env_labels(env), n)
        yield started
        active = GaugeMetricFamily(
            PREFIX + "clients_active",
            f"Registered clients heard from in the last {ACTIVE_SECONDS:.0f} s or with a job, by protocol dialect.",
            labels=["dialect"],
        )
        counts: Dict[str, int] = {}
        activity = recorder.client_activity()
        for client in backend.clients:
            dialect = str(getattr(client.dialect, "name", "unknown"))
            idle = activity.get(client)
            hit = bool(client.jobs) or (idle is not None and idle <= ACTIVE_SECONDS)
            counts[dialect] = counts.get(dialect, 0) + hit
        for dialect, n in sorted(counts.items()):
            active.add_metric([dialect], n)
        yield active
        yield from _counters(
            ("jobs_requeued", "Jobs queued again because their agent was lost.", recorder.requeued),
            (
                "agent_registrations",
                "Agents that registered (seen once a second by the status service).",
                recorder.agent_registrations,
            ),
            (
                "agent_removals",
                "Agents that were removed (seen once a second by the status service).",
                recorder.agent_removals,
            ),
        )


def backend_registry(backend: Backend, recorder: Optional[StatusRecorder] = None) -> CollectorRegistry:
    """A new registry holding only the metrics of ``backend`` (see :class:`BackendCollector`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackendCollector(backend, recorder))
    return registry
