"""A bounded history of a backend, sampled once a second, for the status page.

:class:`StatusRecorder` watches a :class:`~inginious_tx.backend.core.Backend`
in two ways: as a job observer (:class:`~inginious_tx.interfaces.IJobObserver`)
it keeps the number of jobs waiting per environment, started per environment
and queued again, up to date at O(1) per event, so that nothing has to walk
100,000 waiting jobs; and a ``LoopingCall`` on the injected clock takes one
sample a second (queue depth per environment, jobs finished by result type,
the queue-wait and run-time histograms, busy slots per agent, totals) into a
:class:`History` of fixed-size ring buffers.

Everything is bounded: the history keeps ``seconds`` samples; environments
and agents get a series each up to :data:`MAX_ENVIRONMENT_SERIES` and
:data:`MAX_AGENT_SERIES` (the rest is added to an ``(other)`` series), and a
series that stayed empty for a whole history is forgotten.  Environments are
named by clients, so what is shown of them (:meth:`StatusRecorder.waiting_shown`:
samples, status pages, metrics) is bounded too: the offered ones, and up to
:data:`MAX_UNOFFERED_SHOWN` others (the first ones jobs waited for), the
rest counted in :data:`OTHER_ENVIRONMENT`.  Reading the
history (:meth:`History.view`) cuts it into at most :data:`POINTS` points, so
what a page costs does not grow with the number of samples.
"""

from __future__ import annotations

import math
import re
from array import array
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IJobObserver
from .adapter import DOCKER, label
from .core import TIME_BUCKETS, Backend

__all__ = [
    "History",
    "Series",
    "SeriesGroup",
    "StatusRecorder",
    "percentile",
    "HISTORY_SECONDS",
    "MAX_ENVIRONMENT_SERIES",
    "MAX_AGENT_SERIES",
    "OTHER",
    "OTHER_ENVIRONMENT",
    "MAX_UNOFFERED_SHOWN",
    "POINTS",
    "ACTIVE_SECONDS",
    "qualified",
    "environment_of",
    "known_environments",
    "display_label",
    "fold_environments",
]

#: Samples kept by default: one hour at one a second.
HISTORY_SECONDS = 3600
#: Most environments with a queue-depth series of their own.
MAX_ENVIRONMENT_SERIES = 64
#: Most agents with a busy-slots series of their own.
MAX_AGENT_SERIES = 2048
#: Name of the series that holds what exceeds those limits.
OTHER = "(other)"
#: The environment that stands for every environment not shown by name.
OTHER_ENVIRONMENT: Tuple[str, str] = (OTHER, OTHER)
#: Most environments that no agent offers shown by name (the others are
#: counted in :data:`OTHER_ENVIRONMENT`): clients choose them.
MAX_UNOFFERED_SHOWN = 64
#: Most environments with a ``jobs_started`` count of their own.
MAX_STARTED_ENVIRONMENTS = 1024
#: Most points in a view of the history (whatever its window).
POINTS = 120
#: Percentiles drawn for queue wait and run time.
PERCENTILES: Tuple[Tuple[str, float], ...] = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
#: Marks "no such agent at that time" in a busy-slots series.
ABSENT = 0xFFFF
_NB = len(TIME_BUCKETS) + 1

#: A client heard from within this many seconds (or with a job) is "active".
ACTIVE_SECONDS = 60.0

Sample = Dict[str, Any]
Environment = Tuple[str, str]
_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def qualified(environment: Environment) -> str:
    """``type/name`` for every type (``docker/default``), as people are shown it.

    (:func:`~inginious_tx.backend.adapter.label` keeps 0.6's bare name for the
    ``docker`` type: it stays the ``environment`` of metrics and status.json's
    ``queue``, for compatibility.)
    """
    return f"{environment[0]}/{environment[1]}"


def environment_of(text: str, known: Dict[str, Environment]) -> Environment:
    """The ``(type, name)`` behind a label: from ``known`` (label -> environment) if
    there; else, best effort, ``type/name`` when it starts with a word and a
    slash, else a ``docker`` name (a label alone cannot tell a docker name with
    a slash from another type: :class:`StatusRecorder` keeps the exact pairs)."""
    env = known.get(text)
    if env is not None:
        return env
    kind, slash, name = text.partition("/")
    if slash and _TYPE.fullmatch(kind) and kind != DOCKER:
        return (kind, name)
    return (DOCKER, text)


def display_label(environment: Environment) -> str:
    """:func:`~inginious_tx.backend.adapter.label`, and ``(other)`` for :data:`OTHER_ENVIRONMENT`."""
    return OTHER if environment == OTHER_ENVIRONMENT else label(environment)


def fold_environments(
    counts: Dict[Environment, int], offered: Iterable[Environment], named: int = MAX_UNOFFERED_SHOWN
) -> Dict[Environment, int]:
    """``counts`` with every ``offered`` environment (0 if absent) and the ``named``
    largest others; the rest summed in :data:`OTHER_ENVIRONMENT` (if any)."""
    out = dict.fromkeys(offered, 0)
    others = [(env, n) for env, n in counts.items() if env not in out]
    if len(others) > named:
        others.sort(key=lambda item: (-item[1], item[0]))
        rest = sum(n for _, n in others[named:])
        others = others[:named]
        if rest:
            out[OTHER_ENVIRONMENT] = rest
    for env, n in counts.items():
        if env in out and env != OTHER_ENVIRONMENT:
            out[env] = n
    out.update(others)
    return out


def known_environments(backend: Backend) -> Dict[str, Environment]:
    """label -> ``(type, name)`` of every environment a registered agent offers."""
    known: Dict[str, Environment] = {}
    for kind, names in backend.offered_environments.items():
        for name in names:
            known[label((kind, name))] = (kind, name)
    return known


class Series:
    """One ring buffer of numbers, written at ``tick % capacity``.

    ``total`` is the sum of the values the ring holds (absent ones left out),
    kept as values are written, so that ranking and forgetting series cost
    O(1) per series.
    """

    __slots__ = ("values", "total", "absent")

    def __init__(self, capacity: int, typecode: str = "d", absent: Optional[float] = None) -> None:
        fill = absent if absent is not None else 0
        self.values = array(typecode, [fill]) * capacity
        self.total = 0.0
        self.absent = absent

    def write(self, tick: int, value: float) -> None:
        values = self.values
        i = tick % len(values)
        old = values[i]
        if old != self.absent:
            self.total -= old
        if value != self.absent:
            self.total += value
        values[i] = value

    def last(self, ticks: int, n: int) -> Sequence[float]:
        """The ``n`` newest values in time order (``ticks``: samples taken so far)."""
        cap = len(self.values)
        n = min(n, ticks, cap)
        start = (ticks - n) % cap
        if start + n <= cap:
            return self.values[start : start + n]
        return self.values[start:] + self.values[: start + n - cap]


class SeriesGroup:
    """Named series of one quantity (per environment, per agent, per result).

    At most ``limit`` names get a series; the values of the others are summed
    into :data:`OTHER`.  A series whose ring holds nothing but zeros (or
    absences) and whose name was not given at the last sample is dropped.
    """

    def __init__(self, capacity: int, limit: int, typecode: str = "d", absent: Optional[float] = None) -> None:
        self.capacity = capacity
        self.limit = limit
        self.typecode = typecode
        self.absent = absent
        self.series: Dict[str, Series] = {}
        self._cap_value = 65534 if typecode == "H" else None

    def record(self, tick: int, values: Dict[str, float]) -> None:
        series = self.series
        missing = self.absent if self.absent is not None else 0
        other = 0.0
        for name, value in values.items():
            if self._cap_value is not None and value > self._cap_value:
                value = self._cap_value
            s = series.get(name)
            if s is None:
                if len(series) >= self.limit and name != OTHER:
                    other += value
                    continue
                s = series[name] = Series(self.capacity, self.typecode, self.absent)
            s.write(tick, value)
        if other:
            s = series.get(OTHER)
            if s is None:
                s = series[OTHER] = Series(self.capacity, self.typecode, self.absent)
            s.write(tick, other + (values.get(OTHER, 0) or 0))
        stale = []
        for name, s in series.items():
            if name in values or (name == OTHER and other):
                continue
            s.write(tick, missing)
            if s.total <= 0:
                stale.append(name)
        for name in stale:
            del series[name]

    def top(self, n: int) -> List[str]:
        """The ``n`` names with the largest sums over the history, largest first."""
        ranked = sorted(self.series.items(), key=lambda item: (-item[1].total, item[0]))
        return [name for name, _ in ranked[:n]]


def percentile(counts: Sequence[float], q: float) -> Optional[float]:
    """The ``q`` quantile of a histogram over :data:`TIME_BUCKETS` (per-bucket counts).

    Linear within a bucket, as Prometheus' ``histogram_quantile`` does; None
    without observations; the last finite bound for the overflow bucket.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    lower = 0.0
    for bound, n in zip(TIME_BUCKETS, counts, strict=False):  # the overflow bucket: below
        if n and seen + n >= rank:
            return lower + (bound - lower) * (rank - seen) / n
        seen += n
        lower = bound
    return float(TIME_BUCKETS[-1])


class History:
    """Ring buffers of the samples of one backend (see :meth:`record`)."""

    def __init__(self, seconds: int = HISTORY_SECONDS, interval: float = 1.0) -> None:
        if not interval > 0 or seconds < 2 * interval:
            raise ValueError("a history keeps at least 2 samples, taken at a positive interval")
        # one more slot than the window: a window's histogram is a difference
        self.capacity = cap = int(math.ceil(seconds / interval)) + 1
        self.interval = interval
        self.ticks = 0
        self.times = Series(cap)
        self.queue = SeriesGroup(cap, MAX_ENVIRONMENT_SERIES)
        self.finished = SeriesGroup(cap, 32)
        self.busy = SeriesGroup(cap, MAX_AGENT_SERIES, "H", ABSENT)
        #: agent name -> its slots at the last sample it was seen
        self.slots: Dict[str, int] = {}
        self.totals = {name: Series(cap) for name in ("waiting", "running", "busy_slots", "slots", "agents")}
        #: lifetime histogram bucket counts at each sample, flat: tick slot * _NB + bucket
        self.wait_hist = array("d", [0.0]) * (cap * _NB)
        self.run_hist = array("d", [0.0]) * (cap * _NB)

    def record(self, sample: Sample) -> None:
        """Store one sample (the dict :meth:`StatusRecorder.sample` builds)."""
        tick = self.ticks
        slot = tick % self.capacity
        self.times.write(tick, sample["time"])
        self.queue.record(tick, sample["queue"])
        self.finished.record(tick, sample["finished"])
        agents = sample["agents"]
        self.busy.record(tick, {name: busy for name, (busy, _) in agents.items()})
        for name, (_, slots) in agents.items():
            self.slots[name] = slots
        if len(self.slots) > len(self.busy.series) + len(agents):
            self.slots = {n: s for n, s in self.slots.items() if n in self.busy.series or n in agents}
        for name, series in self.totals.items():
            series.write(tick, sample["totals"][name])
        self.wait_hist[slot * _NB : (slot + 1) * _NB] = array("d", sample["wait_buckets"])
        self.run_hist[slot * _NB : (slot + 1) * _NB] = array("d", sample["run_buckets"])
        self.ticks = tick + 1

    # -- reading -------------------------------------------------------------------

    def view(self, seconds: float, points: int = POINTS, queues: int = 8, agents: int = 30) -> Dict[str, Any]:
        """The last ``seconds`` of history cut into at most ``points`` points.

        Each point covers ``step`` seconds (the newest point ends with the
        newest sample; points before the first sample are None).  Queue depths and busy slots are the largest value
        within a point (None where an agent was absent throughout), finished
        jobs a rate per second (over the point's span: rates times ``step``
        add up to the counts), percentiles those of the jobs that left the
        queue / stopped running within the point (None if none did).  Only the
        ``queues`` deepest environments and the ``agents`` busiest agents are
        listed (``waiting`` is the total over all environments, ``slots``
        each listed agent's slots).  JSON-able.
        """
        samples = max(2, min(int(round(seconds / self.interval)), self.capacity - 1))
        step = max(1, math.ceil(samples / points))
        n_points = max(1, samples // step)
        n = n_points * step
        have = min(self.ticks, n)  # samples available (the rest of the window is before the first)
        ticks = self.ticks

        def cut(values: Sequence[float], how: Callable[[Sequence[float]], Optional[float]]) -> List[Optional[float]]:
            out: List[Optional[float]] = [None] * n_points
            # newest point ends with the newest sample; older points may lack samples
            end = len(values)
            for p in range(n_points - 1, -1, -1):
                start = max(0, end - step)
                if end <= start:
                    break
                out[p] = how(values[start:end])
                end = start
            return out

        def peak(chunk: Sequence[float]) -> Optional[float]:
            return max(chunk)

        def rate(chunk: Sequence[float]) -> Optional[float]:
            # over the point's whole span, so that rates times ``step`` add up to the counts
            return sum(chunk) / (step * self.interval)

        def present_peak(chunk: Sequence[float]) -> Optional[float]:
            present = [v for v in chunk if v != ABSENT]
            return max(present) if present else None

        def group(g: SeriesGroup, names: Iterable[str], how: Callable) -> Dict[str, List[Optional[float]]]:
            return {name: cut(g.series[name].last(ticks, have), how) for name in names if name in g.series}

        queue_names = [name for name in self.queue.top(queues + 1) if name != OTHER][:queues]
        queue = group(self.queue, queue_names, peak)
        waiting_total = cut(self.totals["waiting"].last(ticks, have), peak)
        finished = group(self.finished, sorted(self.finished.series), rate)
        agent_names = [name for name in self.busy.top(agents + 1) if name != OTHER][:agents]
        busy = group(self.busy, agent_names, present_peak)
        wait: Dict[str, List[Optional[float]]] = {name: [None] * n_points for name, _ in PERCENTILES}
        run: Dict[str, List[Optional[float]]] = {name: [None] * n_points for name, _ in PERCENTILES}
        for hist, out in ((self.wait_hist, wait), (self.run_hist, run)):
            end_tick = ticks - 1
            for p in range(n_points - 1, -1, -1):
                start_tick = end_tick - step
                if end_tick < 0:
                    break
                counts = self._hist_at(hist, end_tick)
                before = self._hist_at(hist, start_tick) if start_tick >= 0 else [0.0] * _NB
                diff = [a - b for a, b in zip(counts, before, strict=True)]
                for name, q in PERCENTILES:
                    out[name][p] = percentile(diff, q)
                end_tick = start_tick
        # the same percentiles over the whole window (what the legends show)
        over: Dict[str, Dict[str, Optional[float]]] = {}
        for key, hist in (("wait", self.wait_hist), ("run", self.run_hist)):
            if ticks:
                first = ticks - 1 - n
                before = self._hist_at(hist, first) if first >= 0 else [0.0] * _NB
                diff = [a - b for a, b in zip(self._hist_at(hist, ticks - 1), before, strict=True)]
            else:
                diff = [0.0] * _NB
            over[key] = {name: percentile(diff, q) for name, q in PERCENTILES}
        times = self.times.last(ticks, have)
        now = times[-1] if len(times) else None
        return {
            "now": now,
            "seconds": n * self.interval,
            "step": step * self.interval,
            "points": n_points,
            "queue": queue,
            "waiting": waiting_total,
            "finished": finished,
            "wait": wait,
            "run": run,
            "wait_window": over["wait"],
            "run_window": over["run"],
            "busy": busy,
            "slots": {name: self.slots.get(name, 0) for name in busy},
            "agents_tracked": len(self.busy.series),
            "totals": {
                name: cut(self.totals[name].last(ticks, have), peak) for name in ("busy_slots", "slots", "running")
            },
        }

    def _hist_at(self, hist: array, tick: int) -> Sequence[float]:
        slot = tick % self.capacity
        return hist[slot * _NB : (slot + 1) * _NB]


@implementer(IJobObserver)
class StatusRecorder:
    """Watches a backend for the status pages: job observer, sampler, history.

    ``clock`` provides :class:`IReactorTime` (the reactor, or a ``Clock`` in
    tests).  :meth:`start` registers the observer and samples every
    ``interval`` seconds; :meth:`stop` undoes both.  Listeners added with
    :meth:`add_listener` get each sample (the event stream of the page).
    """

    log = Logger()

    def __init__(
        self, backend: Backend, clock: IReactorTime, seconds: int = HISTORY_SECONDS, interval: float = 1.0
    ) -> None:
        self._backend = backend
        self._clock = clock
        self.interval = interval
        self.history = History(seconds, interval)
        self._loop: Optional[LoopingCall] = None
        self._listeners: List[Callable[[Sample], None]] = []
        #: the newest sample (None before the first)
        self.latest: Optional[Sample] = None
        #: jobs waiting per ``(type, name)``, kept by the job events
        self._waiting_env: Dict[Environment, int] = {}
        #: the environments shown by name besides the offered ones (insertion-ordered set,
        #: at most MAX_UNOFFERED_SHOWN): those jobs waited for first, until none waits
        self._named: Dict[Environment, None] = {}
        #: the most entries ``_waiting_env`` had since it was last rebuilt (to give memory back)
        self._waiting_peak = 0
        #: jobs handed to an agent, per ``(type, name)``, since the recorder started
        self.started_by_environment: Dict[Environment, int] = {}
        #: client state -> [its ``last_tick`` when last seen changing, when that was]
        self._heard: Dict[Any, List[float]] = {}
        #: jobs queued again because their agent was lost
        self.requeued = 0
        #: agents registered and removed (seen at samples: an agent that comes
        #: and goes within one interval is not seen)
        self.agent_registrations = 0
        self.agent_removals = 0
        self._agents_seen: Set[Any] = set()
        self._finished_before: Dict[str, int] = {}
        self._observing = False

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Observe the backend and begin sampling (the first sample at once)."""
        if self._loop is not None:
            return
        self._observe()
        self._finished_before = dict(self._backend.stats.finished)
        self._agents_seen = set(self._backend.agents)
        self._loop = LoopingCall(self.sample)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True).addErrback(lambda f: self.log.failure("status sampling stopped", f))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._observing:
            self._backend.remove_observer(self)
            self._observing = False

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def started(self) -> Dict[str, int]:
        """Jobs handed to an agent per environment label, since the recorder started."""
        out: Dict[str, int] = {}
        for env, n in self.started_by_environment.items():
            out[label(env)] = out.get(label(env), 0) + n
        return out

    def _observe(self) -> None:
        """Count what waits now (once, O(jobs)), then follow the job events."""
        known = known_environments(self._backend)
        self._waiting_env = {}
        self._named = {}
        for text, n in self._backend.waiting_per_environment().items():
            env = environment_of(text, known)
            self._waiting_env[env] = self._waiting_env.get(env, 0) + n
            if len(self._named) < MAX_UNOFFERED_SHOWN:
                self._named[env] = None
        self._waiting_peak = len(self._waiting_env)
        self._backend.add_observer(self)
        self._observing = True

    # -- IJobObserver ----------------------------------------------------------------
    # Counts only, no reference to a job: a job waits from job_queued or
    # job_requeued until job_started, or until job_finished with no agent
    # (it ended before running: killed, dropped, refused by the policy).

    def _waits(self, env: Environment, delta: int) -> None:
        waiting = self._waiting_env
        n = waiting.get(env, 0) + delta
        if n > 0:
            if env not in waiting:
                if len(self._named) < MAX_UNOFFERED_SHOWN:
                    self._named[env] = None
                if len(waiting) >= self._waiting_peak:
                    self._waiting_peak = len(waiting) + 1
            waiting[env] = n
        elif waiting.pop(env, None) is not None:
            self._named.pop(env, None)
            # a dict keeps its size when emptied: rebuild it once it holds a quarter of its peak
            if self._waiting_peak > 1024 and len(waiting) * 4 < self._waiting_peak:
                self._waiting_env = dict(waiting)
                self._waiting_peak = len(waiting)

    def job_queued(self, job: Any) -> None:
        self._waits(tuple(job.environment), 1)

    def job_refused(self, client_name: str, job_id: str, reason: str) -> None:
        pass

    def job_started(self, job: Any, agent_name: str) -> None:
        env = tuple(job.environment)
        self._waits(env, -1)
        started = self.started_by_environment
        if env not in started and len(started) >= MAX_STARTED_ENVIRONMENTS:
            env = OTHER_ENVIRONMENT  # agents offered that many: bounded all the same
        started[env] = started.get(env, 0) + 1

    def job_requeued(self, job: Any, agent_name: str, reason: str) -> None:
        self.requeued += 1
        self._waits(tuple(job.environment), 1)

    def job_finished(self, job: Any, kind: str, agent_name: Optional[str]) -> None:
        if agent_name is None:
            self._waits(tuple(job.environment), -1)

    # -- reading ---------------------------------------------------------------------

    def waiting_per_environment(self) -> Dict[str, int]:
        """Jobs waiting per environment label (O(environments), unlike the backend's own)."""
        if not self._observing:
            return self._backend.waiting_per_environment()
        out: Dict[str, int] = {}
        for env, n in self._waiting_env.items():
            out[label(env)] = out.get(label(env), 0) + n
        return out

    def waiting_by_environment(self) -> Dict[Environment, int]:
        """Jobs waiting per ``(type, name)``."""
        if not self._observing:
            known = known_environments(self._backend)
            out: Dict[Environment, int] = {}
            for text, n in self._backend.waiting_per_environment().items():
                env = environment_of(text, known)
                out[env] = out.get(env, 0) + n
            return out
        return dict(self._waiting_env)

    def waiting_shown(self) -> Dict[Environment, int]:
        """Jobs waiting per environment shown by name: every offered one (0
        included), up to :data:`MAX_UNOFFERED_SHOWN` others, and
        :data:`OTHER_ENVIRONMENT` for the rest (if any wait).  O(shown), whatever
        the number of environments clients made up."""
        offered = known_environments(self._backend).values()
        if not self._observing:
            return fold_environments(self.waiting_by_environment(), offered)
        waiting = self._waiting_env
        out = {env: waiting.get(env, 0) for env in offered}
        for env in self._named:
            out[env] = waiting.get(env, 0)
        rest = self._backend.waiting_count - sum(out.values())
        if rest > 0:
            out[OTHER_ENVIRONMENT] = rest
        return out

    def unshown_environments(self) -> int:
        """How many environments jobs wait for are counted in :data:`OTHER_ENVIRONMENT`."""
        if not self._observing:
            return 0
        waiting = self._waiting_env
        offered = known_environments(self._backend).values()
        shown = sum(1 for env in offered if env in waiting and env not in self._named) + len(self._named)
        return max(0, len(waiting) - shown)

    def client_activity(self, now: Optional[float] = None) -> Dict[Any, float]:
        """Registered client state -> seconds since it was last heard from, as far as
        the samples tell (to about a sample interval plus the backend's ping interval;
        a client already registered when the recorder started counts as heard then)."""
        if now is None:
            now = self._clock.seconds()
        return {client: max(0.0, now - heard[1]) for client, heard in self._heard.items()}

    def _listen_to_clients(self, now: float) -> None:
        """Note which clients sent something since the last sample (their
        ``last_tick`` moved): O(clients) a sample."""
        heard = self._heard
        clients = self._backend.clients
        for client in clients:
            seen = heard.get(client)
            if seen is None:
                heard[client] = [client.last_tick, now]
            elif seen[0] != client.last_tick:
                seen[0] = client.last_tick
                seen[1] = now
        if len(heard) > len(clients):
            present = set(clients)
            for client in [c for c in heard if c not in present]:
                del heard[client]

    def add_listener(self, listener: Callable[[Sample], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Sample], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- sampling --------------------------------------------------------------------

    def sample(self) -> Sample:
        """Take one sample now, store it and hand it to the listeners."""
        backend = self._backend
        stats = backend.stats
        agents = backend.agents
        per_agent: Dict[str, Tuple[int, int]] = {}
        busy_slots = slots = 0
        for agent in agents:
            busy, n = len(agent.running), agent.slots
            busy_slots += busy
            slots += n
            had = per_agent.get(agent.name)
            per_agent[agent.name] = (busy, n) if had is None else (had[0] + busy, had[1] + n)
        seen = set(agents)
        self.agent_registrations += len(seen - self._agents_seen)
        self.agent_removals += len(self._agents_seen - seen)
        self._agents_seen = seen
        queue: Dict[str, int] = {}
        for env, n in self.waiting_shown().items():
            text = display_label(env)
            queue[text] = queue.get(text, 0) + n
        finished = {}
        now_finished = stats.finished
        for kind, n in now_finished.items():
            delta = n - self._finished_before.get(kind, 0)
            if delta:
                finished[kind] = delta
        self._finished_before = dict(now_finished)
        sample: Sample = {
            "time": self._clock.seconds(),
            "queue": queue,
            "finished": finished,
            "agents": per_agent,
            "totals": {
                "waiting": backend.waiting_count,
                "running": backend.running_count,
                "busy_slots": busy_slots,
                "slots": slots,
                "agents": len(agents),
            },
            "wait_buckets": list(stats.wait_buckets),
            "run_buckets": list(stats.run_buckets),
        }
        self._listen_to_clients(sample["time"])
        self.history.record(sample)
        self.latest = sample
        for listener in list(self._listeners):
            try:
                listener(sample)
            except Exception:
                self.log.failure("status listener {listener!r} failed", listener=listener)
        return sample
