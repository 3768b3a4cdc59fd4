"""The backend's state machine, free of any transport.

:class:`Backend` keeps the registered clients and agents, the waiting and
running jobs and the free agent slots, and implements PROTOCOL.md section 4.
It sees only :class:`~inginious_tx.interfaces.IPeer` objects and decoded
messages: its two handler objects (:attr:`Backend.client_handler` and
:attr:`Backend.agent_handler`) provide the role interfaces that
:class:`~inginious_tx.dispatch.Dispatcher` turns into transport sinks, so the
same core serves ZeroMQ, TCP, Unix sockets and the in-memory test transport,
all at once.

Costs.  Submitting, dispatching, killing and finishing a job cost O(log n) in
the number of waiting jobs (the policy's heaps) and O(1) in the number of
agents: every environment keeps an insertion-ordered set of the agents that
offer it with a free slot, and an agent with a free slot never coexists with
a waiting job it could run (that invariant is what lets a new job skip the
policy entirely when a slot is free).  Only heartbeats (once per
``ping_interval``), queue snapshots and environment changes walk the agents
or the jobs.  The hot path builds each outgoing message once and logs
nothing; anomalies are logged.

Clients that vanish.  A stream connection that closes is a certain
departure: the client's waiting jobs are dropped and its running jobs killed.
ZeroMQ says nothing when a peer goes, so two rules bound what such clients
leave behind: a client that has sent ``Ping`` at least once (INGInious 0.6
clients ping every second) and then stays silent for ``client_silence_timeout``
seconds is treated as departed; and any client with no waiting or running job
that stays silent for ``client_idle_timeout`` seconds is forgotten (and
disconnected), so that the table of clients cannot grow with every ZeroMQ
identity ever seen.  A forgotten client that talks again is answered
``Unknown`` and says hello again.  Everything else is bounded by the waiting
caps and by the agents' slots.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import msgpack
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ..dispatch import Dispatcher
from ..interfaces import (
    IBackendAgentHandler,
    IBackendClientHandler,
    IPeer,
    IRejectionObserver,
    ISchedulingPolicy,
    IWaitingJob,
)
from ..messages import (
    AgentHello,
    AgentJobDone,
    AgentJobSSHDebug,
    AgentJobStarted,
    BackendGetQueue,
    BackendJobDone,
    BackendJobSSHDebug,
    BackendJobStarted,
    BackendKillJob,
    BackendNewJob,
    BackendUpdateContainers,
    ClientGetQueue,
    ClientHello,
    ClientKillJob,
    ClientNewJob,
    Ping,
    Pong,
    Unknown,
)

__all__ = [
    "Backend",
    "BackendSettings",
    "BackendStats",
    "Job",
    "ClientState",
    "AgentState",
    "WAITING",
    "RUNNING",
    "DONE",
    "TIME_BUCKETS",
]

#: Job states.
WAITING, RUNNING, DONE = "waiting", "running", "done"

_PING = Ping()
_PONG = Pong()
_UNKNOWN = Unknown()
#: How inputdata is measured against ``max_inputdata`` (as the wire encodes it).
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack  # reactor thread only


@dataclass(frozen=True)
class BackendSettings:
    """The backend's tunables; every one has a ``twistd inginious-backend`` option."""

    #: How many times a job whose agent was lost is queued again before it is
    #: answered ``("crash", ...)``.
    max_retries: int = 1
    #: Seconds between two pings to each agent (and between client checks).
    ping_interval: float = 1.0
    #: An agent that leaves this many pings in a row unanswered is dropped.
    max_missed_pongs: int = 3
    #: At most this many jobs wait in total (None: no limit); beyond, a new
    #: job is answered ``("crash", "queue full ...")`` at once.
    max_waiting: Optional[int] = 100_000
    #: At most this many jobs of one client wait (None: no limit).
    max_waiting_per_client: Optional[int] = None
    #: Largest ``inputdata`` of a job, in bytes once msgpack-encoded (None: only
    #: the transport's frame limit); a larger job is answered ``crash`` at once.
    max_inputdata: Optional[int] = 16 << 20
    #: A client that pinged us and then stays silent this long is gone.
    client_silence_timeout: float = 30.0
    #: A client with no job that stays silent this long is forgotten.
    client_idle_timeout: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not self.ping_interval > 0:
            raise ValueError("ping_interval must be > 0")
        if self.max_missed_pongs < 1:
            raise ValueError("max_missed_pongs must be >= 1")
        for name in ("max_waiting", "max_waiting_per_client", "max_inputdata"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None")
        if not self.client_silence_timeout > 0 or not self.client_idle_timeout > 0:
            raise ValueError("client timeouts must be > 0")


class ClientState:
    """A registered client and the jobs it has waiting or running."""

    __slots__ = ("peer", "name", "jobs", "waiting", "last_tick", "pinged")

    def __init__(self, peer: IPeer, name: str, tick: int) -> None:
        self.peer = peer
        self.name = name
        #: client job id -> Job, for its waiting and running jobs
        self.jobs: Dict[str, Job] = {}
        #: how many of those are waiting
        self.waiting = 0
        #: heartbeat tick of its last message
        self.last_tick = tick
        #: whether it ever sent Ping (then silence means it is gone)
        self.pinged = False

    def __repr__(self) -> str:
        return f"<client {self.name!r} at {self.peer.description}>"


class AgentState:
    """A registered agent: its slots, environments and running jobs."""

    __slots__ = ("peer", "name", "slots", "environments", "running", "missed", "alive")

    def __init__(self, peer: IPeer, name: str, slots: int, environments: frozenset) -> None:
        self.peer = peer
        self.name = name
        self.slots = slots
        self.environments = environments
        #: BackendJobId -> Job
        self.running: Dict[Tuple[bytes, str], Job] = {}
        #: pings sent since the last sign of life
        self.missed = 0
        self.alive = True

    def __repr__(self) -> str:
        return f"<agent {self.name!r} at {self.peer.description}, {len(self.running)}/{self.slots} busy>"


@implementer(IWaitingJob)
class Job:
    """One submitted job, from ``ClientNewJob`` to its one ``BackendJobDone``.

    ``client`` becomes None when the client leaves while the job runs (its
    result is then dropped).  ``retries`` counts how many times the job was
    queued again after losing its agent.
    """

    __slots__ = (
        "key",
        "client",
        "message",
        "environment",
        "course_id",
        "task_id",
        "priority",
        "time_limit",
        "submitted_at",
        "sequence",
        "launcher",
        "retries",
        "state",
        "agent",
        "started_at",
        "kill_requested",
    )

    def __init__(self, key: Tuple[bytes, str], client: ClientState, message: Any, now: float, sequence: int) -> None:
        self.key = key
        self.client: Optional[ClientState] = client
        self.message = message
        self.environment: str = message.environment
        self.course_id: str = message.course_id
        self.task_id: str = message.task_id
        self.priority: int = message.priority
        self.time_limit: int = message.time_limit
        self.submitted_at = now
        self.sequence = sequence
        self.launcher: str = message.launcher
        self.retries = 0
        self.state = WAITING
        self.agent: Optional[AgentState] = None
        self.started_at = 0.0
        self.kill_requested = False

    def __repr__(self) -> str:
        return f"<job {self.key!r} {self.state} {self.course_id}/{self.task_id}>"


#: Upper bounds, in seconds, of the buckets of the queue-wait and run-time
#: histograms of :class:`BackendStats` (a last bucket holds the rest).
TIME_BUCKETS: Tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: The result types counted by name; anything else an agent says is "other".
_RESULT_KINDS = frozenset(("success", "failed", "error", "crash", "timeout", "overflow", "killed"))


class BackendStats:
    """Running totals kept by the backend for status pages and metrics.

    Plain integers and bucket counts, so that keeping them costs the hot path
    a few additions per job and no lock; exporters (e.g.
    :mod:`inginious_tx.backend.metrics`) read them when asked.  ``submitted``
    counts every job a registered client sent; ``accepted`` those that were
    queued (the others were refused: queue full, duplicate id, shutting
    down); ``finished`` counts accepted jobs by how they ended: a result type,
    ``other`` (a result type we do not know), or ``dropped`` (its client left
    first, no answer was sent).
    """

    __slots__ = ("submitted", "accepted", "finished", "wait_buckets", "wait_sum", "run_buckets", "run_sum")

    def __init__(self) -> None:
        self.submitted = 0
        self.accepted = 0
        self.finished: Dict[str, int] = {}
        #: per bucket of TIME_BUCKETS (not cumulative), then the overflow bucket
        self.wait_buckets = [0] * (len(TIME_BUCKETS) + 1)
        self.wait_sum = 0.0
        self.run_buckets = [0] * (len(TIME_BUCKETS) + 1)
        self.run_sum = 0.0

    @property
    def refused(self) -> int:
        return self.submitted - self.accepted

    def waited(self, seconds: float) -> None:
        """A job left the queue for its first agent after ``seconds``."""
        self.wait_buckets[bisect_left(TIME_BUCKETS, seconds)] += 1
        self.wait_sum += seconds

    def ran(self, seconds: float) -> None:
        """A job stopped running (answered, killed or lost) after ``seconds``."""
        self.run_buckets[bisect_left(TIME_BUCKETS, seconds)] += 1
        self.run_sum += seconds

    def ended(self, kind: str) -> None:
        if kind not in _RESULT_KINDS and kind != "dropped":
            kind = "other"
        self.finished[kind] = self.finished.get(kind, 0) + 1


def _result(job_id: str, kind: str, text: str) -> BackendJobDone:
    """A result made by the backend itself (crash, killed)."""
    return BackendJobDone(job_id, (kind, text), 0.0, {}, {}, {}, "", None, "", "")


class Backend:
    """The grading backend's core: clients, agents, jobs, slots.

    ``clock`` provides :class:`IReactorTime` (a reactor, or a
    :class:`twisted.internet.task.Clock` in tests); ``policy`` provides
    :class:`~inginious_tx.interfaces.ISchedulingPolicy`.  Call :meth:`start`
    to begin heartbeats and :meth:`shutdown` to answer every job and stop.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, policy: ISchedulingPolicy, settings: BackendSettings = BackendSettings()):
        self._clock = clock
        self._policy = policy
        self.settings = settings
        self._clients: Dict[IPeer, ClientState] = {}
        self._agents: Dict[IPeer, AgentState] = {}
        #: every waiting or running job (including those whose client left)
        self._jobs: Dict[Tuple[bytes, str], Job] = {}
        self._n_waiting = 0
        #: environment -> agents offering it (insertion-ordered set)
        self._env_agents: Dict[str, Dict[AgentState, None]] = {}
        #: environment -> agents offering it with at least one free slot
        self._free: Dict[str, Dict[AgentState, None]] = {}
        self._containers = BackendUpdateContainers(())
        self._sequence = itertools.count()
        self._tick = 0
        #: jobs refused (queue full) since the last heartbeat
        self._refused = 0
        self._heartbeat: Optional[LoopingCall] = None
        self._stopping = False
        self.client_handler = _ClientHandler(self)
        self.agent_handler = _AgentHandler(self)
        #: totals for status pages and metrics
        self.stats = BackendStats()

    # -- wiring ----------------------------------------------------------------

    def client_sink(self) -> Dispatcher:
        """A transport sink for a client endpoint."""
        return Dispatcher(self.client_handler, IBackendClientHandler, self._client_unexpected)

    def agent_sink(self) -> Dispatcher:
        """A transport sink for an agent endpoint."""
        return Dispatcher(self.agent_handler, IBackendAgentHandler)

    def start(self) -> None:
        """Begin pinging agents (and checking on silent clients)."""
        if self._heartbeat is None and not self._stopping:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self._clock
            self._heartbeat.start(self.settings.ping_interval, now=False)

    def shutdown(self) -> None:
        """Answer every job ``("crash", "backend shutting down")`` and stop.

        Running jobs are also killed on their agents.  New jobs are refused
        the same way from now on.  Idempotent.
        """
        if self._stopping:
            return
        self._stopping = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        jobs = list(self._jobs.values())
        self.log.info(
            "backend shutting down: answering {waiting} waiting and {running} running jobs",
            waiting=self._n_waiting,
            running=len(jobs) - self._n_waiting,
        )
        for job in jobs:
            if job.state == WAITING:
                self._unwait(job)
            elif job.state == RUNNING and job.agent is not None:
                job.agent.running.pop(job.key, None)
                job.agent.peer.send(BackendKillJob(job.key))
            self._finish(job, _result(job.key[1], "crash", "backend shutting down"))

    # -- introspection (tests, metrics) ------------------------------------------

    @property
    def policy(self) -> ISchedulingPolicy:
        return self._policy

    @property
    def waiting_count(self) -> int:
        return self._n_waiting

    @property
    def running_count(self) -> int:
        return len(self._jobs) - self._n_waiting

    @property
    def clients(self) -> List[ClientState]:
        return list(self._clients.values())

    @property
    def agents(self) -> List[AgentState]:
        return list(self._agents.values())

    @property
    def environments(self) -> Tuple[str, ...]:
        """The environments clients are told about."""
        return self._containers.available_containers

    def job(self, key: Tuple[bytes, str]) -> Optional[Job]:
        return self._jobs.get(key)

    def free_agents(self, environment: str) -> List[AgentState]:
        return list(self._free.get(environment, ()))

    def waiting_per_environment(self) -> Dict[str, int]:
        """How many jobs wait for each environment (O(jobs): for status pages)."""
        counts: Dict[str, int] = {}
        for job in self._jobs.values():
            if job.state == WAITING:
                counts[job.environment] = counts.get(job.environment, 0) + 1
        return counts

    # -- clients ---------------------------------------------------------------

    def _client(self, peer: IPeer) -> Optional[ClientState]:
        """The registered client ``peer``, or None after answering Unknown."""
        client = self._clients.get(peer)
        if client is None:
            peer.send(_UNKNOWN)
            return None
        client.last_tick = self._tick
        return client

    def _client_unexpected(self, peer: IPeer, message: Any) -> None:
        # The Dispatcher logged the protocol error; a stranger also learns
        # that it must say hello.
        if peer not in self._clients:
            peer.send(_UNKNOWN)

    def client_message_rejected(self, peer: IPeer, error: Exception, payload: bytes) -> None:
        """A registered client's job that did not decode is answered, not ignored.

        Only jobs can be answered (they have an id the client waits on); the
        id is read leniently from the raw map.  Other bad frames were logged
        by the transport and need no answer.
        """
        if getattr(error, "msgtype", None) != "client_new_job":
            return
        client = self._clients.get(peer)
        if client is None:
            peer.send(_UNKNOWN)
            return
        try:
            job_id = msgpack.unpackb(payload, raw=False, strict_map_key=False).get("job_id")
        except Exception:
            return
        if type(job_id) is not str or job_id in client.jobs:
            return  # nothing to answer, or a duplicate id whose first job must stay untouched
        self.stats.submitted += 1  # submitted, never accepted: counted as refused
        peer.send(_result(job_id, "crash", f"invalid job: {error}"))

    def client_hello(self, peer: IPeer, message: ClientHello) -> None:
        client = self._clients.get(peer)
        if client is None:
            client = self._clients[peer] = ClientState(peer, message.name, self._tick)
            self.log.info("client {name!r} registered from {peer}", name=message.name, peer=peer.description)
        else:
            client.name = message.name
            client.last_tick = self._tick
        peer.send(self._containers)

    def client_new_job(self, peer: IPeer, message: ClientNewJob) -> None:
        client = self._clients.get(peer)
        if client is None:
            peer.send(_UNKNOWN)
            return
        client.last_tick = self._tick
        self.stats.submitted += 1
        job_id = message.job_id
        if self._stopping:
            peer.send(_result(job_id, "crash", "backend shutting down"))
            return
        limit = self.settings.max_inputdata
        if limit is not None:
            size = len(_packb(message.inputdata))
            if size > limit:
                self.log.warn(
                    "client {name!r}: job {job_id!r} refused, inputdata of {size} bytes > {limit}",
                    name=client.name,
                    job_id=job_id,
                    size=size,
                    limit=limit,
                )
                peer.send(_result(job_id, "crash", f"inputdata too large: {size} bytes > limit {limit}"))
                return
        key = (peer.address, job_id)
        if job_id in client.jobs or key in self._jobs:
            self.log.warn(
                "client {name!r} reused job id {job_id!r} of a job it still has: refused",
                name=client.name,
                job_id=job_id,
            )
            peer.send(_result(job_id, "crash", f"duplicate job id {job_id!r}: a job with this id is already queued"))
            return
        free = self._free.get(message.environment)
        if not free:
            refusal = self._over_cap(client)
            if refusal is not None:
                peer.send(_result(job_id, "crash", refusal))
                return
        job = Job(key, client, message, self._clock.seconds(), next(self._sequence))
        self.stats.accepted += 1
        self._jobs[key] = job
        client.jobs[job_id] = job
        if free:
            self._run(job, next(iter(free)))
        else:
            self._wait(job)

    def _over_cap(self, client: ClientState) -> Optional[str]:
        """Why one more waiting job of ``client`` is refused, if it is."""
        # Refusals are counted and logged once per heartbeat, not one by one:
        # an overloaded backend must not also flood its log.
        settings = self.settings
        if settings.max_waiting is not None and self._n_waiting >= settings.max_waiting:
            self._refused += 1
            return f"queue full: {self._n_waiting} jobs are already waiting, retry later"
        limit = settings.max_waiting_per_client
        if limit is not None and client.waiting >= limit:
            self._refused += 1
            return f"queue full: this client already has {client.waiting} jobs waiting, retry later"
        return None

    def client_kill_job(self, peer: IPeer, message: ClientKillJob) -> None:
        client = self._client(peer)
        if client is None:
            return
        job = client.jobs.get(message.job_id)
        if job is None:
            self.log.info(
                "client {name!r} asked to kill unknown job {job_id!r}: ignored",
                name=client.name,
                job_id=message.job_id,
            )
            return
        if job.state == WAITING:
            self._unwait(job)
            self._finish(job, _result(job.key[1], "killed", "the job was killed before it started"))
        else:
            job.kill_requested = True
            job.agent.peer.send(BackendKillJob(job.key))  # type: ignore[union-attr]

    def client_get_queue(self, peer: IPeer, message: ClientGetQueue) -> None:
        client = self._client(peer)
        if client is None:
            return
        running = []
        for agent in self._agents.values():
            for job in agent.running.values():
                started = int(job.started_at)
                running.append(
                    (
                        job.key[1],
                        job.client is client,
                        agent.name,
                        f"{job.course_id}/{job.task_id}",
                        job.message.launcher,
                        started,
                        started + job.time_limit if job.time_limit > 0 else -1,
                    )
                )
        waiting = [
            (
                job.key[1],
                job.client is client,
                f"{job.course_id}/{job.task_id}",
                job.message.launcher,
                job.time_limit,
            )
            for job in self._policy.ordered()
        ]
        peer.send(BackendGetQueue(running, waiting))

    def client_ping(self, peer: IPeer, message: Ping) -> None:
        client = self._client(peer)
        if client is not None:
            client.pinged = True
            peer.send(_PONG)

    def client_connected(self, peer: IPeer) -> None:
        """Nothing to do: a client must say hello first."""

    def client_disconnected(self, peer: IPeer, reason: str) -> None:
        client = self._clients.get(peer)
        if client is not None:
            self._drop_client(client, f"connection closed ({reason})")

    def _drop_client(self, client: ClientState, reason: str) -> None:
        """The client is gone: drop its waiting jobs, kill its running ones."""
        del self._clients[client.peer]
        waiting = running = 0
        for job in client.jobs.values():
            if job.state == WAITING:
                waiting += 1
                self._unwait(job)
                del self._jobs[job.key]
                self.stats.ended("dropped")
            else:
                running += 1
                job.client = None
                job.kill_requested = True
                job.agent.peer.send(BackendKillJob(job.key))  # type: ignore[union-attr]
        client.jobs.clear()
        self.log.info(
            "client {name!r} left ({reason}): {waiting} waiting jobs dropped, {running} running jobs killed",
            name=client.name,
            reason=reason,
            waiting=waiting,
            running=running,
        )

    # -- agents ----------------------------------------------------------------

    def agent_hello(self, peer: IPeer, message: AgentHello) -> None:
        before = self._containers.available_containers
        old = self._agents.get(peer)
        if old is not None:
            self._remove_agent(old, "it said hello again", disconnect=False, announce=False)
        slots = message.available_job_slots
        if slots < 1:
            self.log.warn(
                "agent {name!r} at {peer} offers {slots} job slots: it will get no jobs",
                name=message.friendly_name,
                peer=peer.description,
                slots=slots,
            )
            slots = 0
        environments = frozenset(message.available_containers) if slots else frozenset()
        agent = AgentState(peer, message.friendly_name, slots, environments)
        self._agents[peer] = agent
        for env in environments:
            self._env_agents.setdefault(env, {})[agent] = None
            self._free.setdefault(env, {})[agent] = None
        self.log.info(
            "agent {name!r} registered from {peer}: {slots} slots, environments {envs}",
            name=agent.name,
            peer=peer.description,
            slots=slots,
            envs=sorted(environments),
        )
        self._refresh_environments(before)
        self._fill(agent)

    def _fill(self, agent: AgentState) -> None:
        """Give ``agent`` (listed as free) waiting jobs while it has free slots."""
        while agent.alive and len(agent.running) < agent.slots and self._n_waiting:
            job = self._next_for(agent)
            if job is None:
                return
            self._run(job, agent)

    def agent_job_started(self, peer: IPeer, message: AgentJobStarted) -> None:
        agent = self._agent(peer, message)
        if agent is None:
            return
        job = agent.running.get(message.job_id)
        if job is None:
            self._stray(agent, message)
        elif job.client is not None:
            job.client.peer.send(BackendJobStarted(job.key[1]))

    def agent_job_ssh_debug(self, peer: IPeer, message: AgentJobSSHDebug) -> None:
        agent = self._agent(peer, message)
        if agent is None:
            return
        job = agent.running.get(message.job_id)
        if job is None:
            self._stray(agent, message)
        elif job.client is not None:
            job.client.peer.send(BackendJobSSHDebug(job.key[1], message.host, message.port, message.password))

    def agent_job_done(self, peer: IPeer, message: AgentJobDone) -> None:
        agent = self._agent(peer, message)
        if agent is None:
            return
        job = agent.running.pop(message.job_id, None)
        if job is None:
            self._stray(agent, message)
            return
        if job.client is not None:
            m = message
            self._finish(
                job,
                BackendJobDone(
                    job.key[1], m.result, m.grade, m.problems, m.tests, m.custom, m.state, m.archive, m.stdout, m.stderr
                ),
            )
        else:
            self._finish(job, None)
        self._slot_freed(agent)

    def agent_pong(self, peer: IPeer, message: Pong) -> None:
        agent = self._agents.get(peer)
        if agent is not None:
            agent.missed = 0

    def agent_connected(self, peer: IPeer) -> None:
        """Nothing to do: an agent must say hello first."""

    def agent_disconnected(self, peer: IPeer, reason: str) -> None:
        agent = self._agents.get(peer)
        if agent is not None:
            self._remove_agent(agent, f"connection closed ({reason})", disconnect=False)

    def _agent(self, peer: IPeer, message: Any) -> Optional[AgentState]:
        """The registered agent ``peer`` (which is alive), or None, logged."""
        agent = self._agents.get(peer)
        if agent is None:
            self.log.warn(
                "{msgtype} from {peer}, which is not a registered agent: dropped",
                msgtype=type(message).msgtype,
                peer=peer.description,
            )
            return None
        agent.missed = 0
        return agent

    def _stray(self, agent: AgentState, message: Any) -> None:
        if self._stopping:
            return  # answers to the kills sent at shutdown
        self.log.warn(
            "agent {name!r} sent {msgtype} for job {job_id!r}, which it is not running: dropped",
            name=agent.name,
            msgtype=type(message).msgtype,
            job_id=message.job_id,
        )

    def _remove_agent(self, agent: AgentState, reason: str, disconnect: bool = True, announce: bool = True) -> None:
        """``agent`` is gone: forget it and re-queue (or answer) its jobs."""
        before = self._containers.available_containers
        agent.alive = False
        del self._agents[agent.peer]
        for env in agent.environments:
            offering = self._env_agents[env]
            del offering[agent]
            if not offering:
                del self._env_agents[env]
            free = self._free.get(env)
            if free is not None:
                free.pop(agent, None)
                if not free:
                    del self._free[env]
        jobs = list(agent.running.values())
        agent.running.clear()
        self.log.info(
            "agent {name!r} at {peer} removed ({reason}); it was running {n} jobs",
            name=agent.name,
            peer=agent.peer.description,
            reason=reason,
            n=len(jobs),
        )
        if disconnect:
            agent.peer.disconnect(reason)
        if announce:
            self._refresh_environments(before)
        for job in jobs:
            self._lost(job, agent, reason)

    def _lost(self, job: Job, agent: AgentState, reason: str) -> None:
        """``job`` was running on ``agent``, which is gone."""
        job.agent = None
        if job.client is None:
            self._finish(job, None)
        elif job.kill_requested:
            self._finish(job, _result(job.key[1], "killed", f"the job was killed (its agent was lost: {reason})"))
        elif job.retries >= self.settings.max_retries:
            self._finish(
                job,
                _result(
                    job.key[1],
                    "crash",
                    f"agent lost while running the job ({agent.name}: {reason}); "
                    f"gave up after {job.retries + 1} attempts",
                ),
            )
        else:
            job.retries += 1
            free = self._free.get(job.environment)
            if free:
                self._run(job, next(iter(free)))
            else:
                self._wait(job)

    # -- heartbeats ------------------------------------------------------------

    def _beat(self) -> None:
        """Every ``ping_interval``: ping agents, drop the silent ones; check clients."""
        self._tick += 1
        if self._refused:
            self.log.warn(
                "queue full: refused {n} jobs in the last {interval} s ({waiting} waiting)",
                n=self._refused,
                interval=self.settings.ping_interval,
                waiting=self._n_waiting,
            )
            self._refused = 0
        limit = self.settings.max_missed_pongs
        for agent in list(self._agents.values()):
            if not agent.alive:
                continue
            if agent.missed >= limit:
                self._remove_agent(agent, f"{agent.missed} pings unanswered")
            else:
                agent.missed += 1
                agent.peer.send(_PING)
        interval = self.settings.ping_interval
        silence = self.settings.client_silence_timeout
        idle = self.settings.client_idle_timeout
        for client in list(self._clients.values()):
            quiet = (self._tick - client.last_tick) * interval
            if client.jobs:
                if client.pinged and quiet >= silence:
                    self._drop_client(client, f"no message for {quiet:.0f} s although it used to ping")
                    client.peer.disconnect("silent client")
            elif quiet >= idle:
                del self._clients[client.peer]
                self.log.info("client {name!r} forgotten after {quiet:.0f} s idle", name=client.name, quiet=quiet)
                client.peer.disconnect("idle client")

    # -- job transitions ---------------------------------------------------------

    def _wait(self, job: Job) -> None:
        """Queue ``job`` (which is in the job table) with the policy."""
        try:
            self._policy.add(job)
        except Exception:
            self.log.failure("scheduling policy {policy!r} failed to queue {job!r}", policy=self._policy, job=job)
            self._finish(job, _result(job.key[1], "crash", "internal error in the scheduling policy"))
            return
        job.state = WAITING
        self._n_waiting += 1
        if job.client is not None:
            job.client.waiting += 1

    def _unwait(self, job: Job) -> None:
        """``job`` stops waiting without running (killed, client gone)."""
        try:
            self._policy.remove(job)
        except Exception:
            # If the policy hands it out later, _next_for will ignore it.
            self.log.failure("scheduling policy {policy!r} failed to remove {job!r}", policy=self._policy, job=job)
        job.state = DONE
        self._n_waiting -= 1
        if job.client is not None:
            job.client.waiting -= 1

    def _run(self, job: Job, agent: AgentState) -> None:
        """Send ``job`` to ``agent``, taken from the free lists of its environment."""
        if len(agent.running) + 1 >= agent.slots:
            for env in agent.environments:
                free = self._free[env]
                del free[agent]
                if not free:
                    del self._free[env]
        else:
            # Round-robin among free agents: this one goes to the back.
            free = self._free[job.environment]
            del free[agent]
            free[agent] = None
        self._send(job, agent)

    def _send(self, job: Job, agent: AgentState) -> None:
        """Hand ``job`` to ``agent`` (the free lists are the caller's business)."""
        job.state = RUNNING
        job.agent = agent
        job.started_at = now = self._clock.seconds()
        if not job.retries:
            self.stats.waited(now - job.submitted_at)
        agent.running[job.key] = job
        m = job.message
        agent.peer.send(
            BackendNewJob(
                job.key,
                m.course_id,
                m.task_id,
                m.inputdata,
                m.environment,
                m.enable_network,
                m.time_limit,
                m.hard_time_limit,
                m.mem_limit,
                m.debug,
                m.run_cmd,
            )
        )

    def _slot_freed(self, agent: AgentState) -> None:
        """One of ``agent``'s slots is free: run the next job, or list it as free.

        If a job follows, the agent's place in the free lists does not change:
        it was listed before (and still has a free slot) or was full (and is
        full again).
        """
        if not agent.alive:
            return
        if self._n_waiting:
            job = self._next_for(agent)
            if job is not None:
                self._send(job, agent)
                return
        if len(agent.running) == agent.slots - 1:
            for env in agent.environments:
                free = self._free.get(env)
                if free is None:
                    self._free[env] = {agent: None}
                else:
                    free[agent] = None

    def _next_for(self, agent: AgentState) -> Optional[Job]:
        """The policy's next job for ``agent``, no longer counted as waiting.

        The policy is a plugin: what it returns is checked (one dict lookup),
        so that a broken policy costs a logged error and, at worst, a job
        answered ``crash``, never the backend's bookkeeping.
        """
        while True:
            try:
                job: Optional[Job] = self._policy.pop_next(agent.environments)
            except Exception:
                self.log.failure("scheduling policy {policy!r} failed in pop_next", policy=self._policy)
                return None
            if job is None:
                return None
            if self._jobs.get(job.key) is not job or job.state != WAITING:
                self.log.error(
                    "scheduling policy {policy!r} returned {job!r}, which is not waiting: ignored",
                    policy=self._policy,
                    job=job,
                )
                continue
            self._n_waiting -= 1
            if job.client is not None:
                job.client.waiting -= 1
            if job.environment in agent.environments:
                return job
            self.log.error(
                "scheduling policy {policy!r} returned {job!r} for an agent offering {envs}: answered crash",
                policy=self._policy,
                job=job,
                envs=sorted(agent.environments),
            )
            self._finish(job, _result(job.key[1], "crash", "internal error in the scheduling policy"))

    def _finish(self, job: Job, answer: Optional[BackendJobDone]) -> None:
        """The one end of every job: forget it and answer its client."""
        if job.state == RUNNING:
            self.stats.ran(self._clock.seconds() - job.started_at)
        self.stats.ended(answer.result[0] if answer is not None else "dropped")
        job.state = DONE
        job.agent = None
        del self._jobs[job.key]
        client = job.client
        if client is not None:
            del client.jobs[job.key[1]]
            if answer is not None:
                client.peer.send(answer)

    def _refresh_environments(self, before: Tuple[str, ...]) -> None:
        """Tell every client if the set of offered environments changed."""
        now = tuple(sorted(self._env_agents))
        if now == before:
            return
        self._containers = message = BackendUpdateContainers(now)
        self.log.info("available environments: {envs}", envs=list(now))
        for client in self._clients.values():
            client.peer.send(message)


@implementer(IBackendClientHandler, IRejectionObserver)
class _ClientHandler:
    """The client side of a :class:`Backend` (methods named by msgtype)."""

    def __init__(self, backend: Backend) -> None:
        self.client_hello = backend.client_hello
        self.client_new_job = backend.client_new_job
        self.client_kill_job = backend.client_kill_job
        self.client_get_queue = backend.client_get_queue
        self.ping = backend.client_ping
        self.message_rejected = backend.client_message_rejected
        self.peer_connected = backend.client_connected
        self.peer_disconnected = backend.client_disconnected


@implementer(IBackendAgentHandler)
class _AgentHandler:
    """The agent side of a :class:`Backend` (methods named by msgtype)."""

    def __init__(self, backend: Backend) -> None:
        self.agent_hello = backend.agent_hello
        self.agent_job_started = backend.agent_job_started
        self.agent_job_done = backend.agent_job_done
        self.agent_job_ssh_debug = backend.agent_job_ssh_debug
        self.pong = backend.agent_pong
        self.peer_connected = backend.agent_connected
        self.peer_disconnected = backend.agent_disconnected
