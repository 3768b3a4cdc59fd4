"""The job lifecycle: :class:`Backend`, from a client's job to its one answer.

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
agents: the free-slot index (:mod:`.slots`) keeps, for every environment, an
insertion-ordered set of the agents that offer it with a free slot, and an
agent with a free slot never coexists with a waiting job it could run (that
invariant is what lets a new job skip the policy entirely when a slot is
free).  Only heartbeats (once per ``ping_interval``), queue snapshots and
environment changes walk the agents or the jobs.  The hot path builds each
outgoing message once and logs nothing; anomalies are logged.

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

Observers (:class:`~inginious_tx.interfaces.IJobObserver`) hear every
transition; :meth:`Backend.load_by_course` and :meth:`Backend.load_by_client`
read counts kept as jobs move (:mod:`.load`).
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ..dispatch import Dispatcher
from ..interfaces import (
    IBackendAgentHandler,
    IBackendClientHandler,
    IJobObserver,
    IPeer,
    IRejectionObserver,
    ISchedulingPolicy,
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
from .job import DONE, RUNNING, WAITING, Job
from .load import RUNNING_COUNT, WAITING_COUNT, LoadCounts
from .peers import AgentState, ClientState
from .settings import BackendSettings
from .sizes import packed_size, rejected_job
from .slots import SlotIndex
from .stats import BackendStats

__all__ = ["Backend"]

_PING = Ping()
_PONG = Pong()
_UNKNOWN = Unknown()


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
        #: bytes of inputdata of every job in the table
        self._held = 0
        self._slots = SlotIndex()
        #: the index's environment -> free agents map, read on the hot path
        self._free = self._slots.free
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
        self._by_course = LoadCounts()
        self._by_client = LoadCounts()
        self._observers: List[IJobObserver] = []

    # -- observers and load ------------------------------------------------------

    def add_observer(self, observer: IJobObserver) -> None:
        """Tell ``observer`` (an :class:`IJobObserver`) of every job transition from now on."""
        if observer not in self._observers:
            self._observers.append(observer)

    def remove_observer(self, observer: IJobObserver) -> None:
        """Stop telling ``observer``; unknown observers are ignored."""
        if observer in self._observers:
            self._observers.remove(observer)

    def load_by_course(self) -> Dict[str, Tuple[int, int]]:
        """``course_id -> (waiting, running)`` for every course with jobs (O(courses))."""
        return self._by_course.snapshot()

    def load_by_client(self) -> Dict[str, Tuple[int, int]]:
        """``client name -> (waiting, running)`` for every client name with jobs (O(clients))."""
        return self._by_client.snapshot()

    def _count(self, job: Job, index: int, delta: int) -> None:
        self._by_course.add(job.course_id, index, delta)
        self._by_client.add(job.client_name, index, delta)

    def _notify(self, event: str, *args: Any) -> None:
        """Call ``event`` on every observer; one that raises is logged and skipped."""
        for observer in list(self._observers):
            try:
                getattr(observer, event)(*args)
            except Exception:
                self.log.failure("job observer {observer!r} failed in {event}", observer=observer, event=event)

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
    def held_bytes(self) -> int:
        """Bytes of inputdata the backend holds for jobs not answered yet."""
        return self._held

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
        return self._slots.free_agents(environment)

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

    def client_job_rejected(self, peer: IPeer, job_id: Any, error: Exception) -> None:
        """A registered client's job that did not decode is answered, not ignored.

        ``job_id`` is what the decoder could read of the job's id (None when
        unreadable: nothing can be answered).  Other bad frames were logged by
        the transport and need no answer.
        """
        client = self._clients.get(peer)
        if client is None:
            peer.send(_UNKNOWN)
            return
        if type(job_id) is not str or job_id in client.jobs:
            return  # nothing to answer, or a duplicate id whose first job must stay untouched
        self.stats.submitted += 1  # submitted, never accepted: counted as refused
        self._refuse(client, job_id, f"invalid job: {error}")

    def _refuse(self, client: ClientState, job_id: str, reason: str) -> None:
        """Answer a job that was never accepted ``("crash", reason)``."""
        client.peer.send(_result(job_id, "crash", reason))
        if self._observers:
            self._notify("job_refused", client.name, job_id, reason)

    def client_hello(self, peer: IPeer, message: ClientHello) -> None:
        client = self._clients.get(peer)
        if client is None:
            client = self._clients[peer] = ClientState(peer, message.name, self._tick)
            self.log.info("client {name!r} registered from {peer}", name=message.name, peer=peer.description)
            _accepted(peer)
        else:
            client.name = message.name
            client.last_tick = self._tick
        peer.send(self._containers)

    def client_new_job(self, peer: IPeer, message: ClientNewJob, size: int) -> None:
        """Queue (or run at once, or refuse) a job.

        ``size`` is the byte size of its inputdata, measured by the edge that
        decoded the message (the core never encodes).
        """
        client = self._clients.get(peer)
        if client is None:
            peer.send(_UNKNOWN)
            return
        client.last_tick = self._tick
        self.stats.submitted += 1
        job_id = message.job_id
        if self._stopping:
            self._refuse(client, job_id, "backend shutting down")
            return
        limit = self.settings.max_inputdata
        if limit is not None:
            if size > limit:
                self.log.warn(
                    "client {name!r}: job {job_id!r} refused, inputdata of {size} bytes > {limit}",
                    name=client.name,
                    job_id=job_id,
                    size=size,
                    limit=limit,
                )
                self._refuse(client, job_id, f"inputdata too large: {size} bytes > limit {limit}")
                return
        key = (peer.address, job_id)
        if job_id in client.jobs or key in self._jobs:
            self.log.warn(
                "client {name!r} reused job id {job_id!r} of a job it still has: refused",
                name=client.name,
                job_id=job_id,
            )
            self._refuse(client, job_id, f"duplicate job id {job_id!r}: a job with this id is already queued")
            return
        refusal = self._over_bytes(client, size)
        if refusal is not None:
            self._refuse(client, job_id, refusal)
            return
        free = self._free.get(message.environment)
        if not free:
            refusal = self._over_cap(client)
            if refusal is not None:
                self._refuse(client, job_id, refusal)
                return
        job = Job(key, client, message, self._clock.seconds(), next(self._sequence), size)
        self.stats.accepted += 1
        self._jobs[key] = job
        self._held += size
        client.held += size
        client.jobs[job_id] = job
        if self._observers:
            self._notify("job_queued", job)
        if free:
            self._run(job, next(iter(free)))
        else:
            self._wait(job)

    def _over_bytes(self, client: ClientState, size: int) -> Optional[str]:
        """Why holding ``size`` more bytes of ``client``'s inputdata is refused, if it is."""
        settings = self.settings
        limit = settings.max_queued_bytes
        if limit is not None and self._held + size > limit:
            self._refused += 1
            return (
                f"backend full: jobs not answered yet hold {self._held} bytes of input data, "
                f"{size} more would exceed {limit}; retry later"
            )
        limit = settings.max_queued_bytes_per_client
        if limit is not None and client.held + size > limit:
            self._refused += 1
            return (
                f"backend full for this client: its jobs not answered yet hold {client.held} bytes of input data, "
                f"{size} more would exceed {limit}; retry later"
            )
        return None

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
                self._held -= job.size
                self.stats.ended("dropped")
                if self._observers:
                    self._notify("job_finished", job, "dropped", None)
            else:
                running += 1
                job.client = None
                job.kill_requested = True
                job.agent.peer.send(BackendKillJob(job.key))  # type: ignore[union-attr]
        client.jobs.clear()
        client.held = 0
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
        self._slots.add(agent)
        _accepted(peer)
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
        self._slots.remove(agent)
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
            self._finish(job, None, agent.name)
        elif job.kill_requested:
            self._finish(
                job, _result(job.key[1], "killed", f"the job was killed (its agent was lost: {reason})"), agent.name
            )
        elif job.retries >= self.settings.max_retries:
            self._finish(
                job,
                _result(
                    job.key[1],
                    "crash",
                    f"agent lost while running the job ({agent.name}: {reason}); "
                    f"gave up after {job.retries + 1} attempts",
                ),
                agent.name,
            )
        else:
            job.retries += 1
            self._count(job, RUNNING_COUNT, -1)
            job.state = WAITING
            if self._observers:
                self._notify("job_requeued", job, agent.name, reason)
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
                "queue full: refused {n} jobs in the last {interval} s ({waiting} waiting, {held} bytes held)",
                n=self._refused,
                interval=self.settings.ping_interval,
                waiting=self._n_waiting,
                held=self._held,
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
                if quiet >= silence:
                    self._drop_client(client, f"no message for {quiet:.0f} s")
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
        self._count(job, WAITING_COUNT, 1)
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
        self._count(job, WAITING_COUNT, -1)
        if job.client is not None:
            job.client.waiting -= 1

    def _run(self, job: Job, agent: AgentState) -> None:
        """Send ``job`` to ``agent``, taken from the free lists of its environment."""
        self._slots.take(agent, job.environment)
        self._send(job, agent)

    def _send(self, job: Job, agent: AgentState) -> None:
        """Hand ``job`` to ``agent`` (the free lists are the caller's business)."""
        job.state = RUNNING
        job.agent = agent
        job.started_at = now = self._clock.seconds()
        if not job.retries:
            self.stats.waited(now - job.submitted_at)
        self._count(job, RUNNING_COUNT, 1)
        agent.running[job.key] = job
        if self._observers:
            self._notify("job_started", job, agent.name)
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
        self._slots.released(agent)

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
            self._count(job, WAITING_COUNT, -1)
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

    def _finish(self, job: Job, answer: Optional[BackendJobDone], agent_name: Optional[str] = None) -> None:
        """The one end of every job: forget it and answer its client.

        ``agent_name`` is for observers, when the job's agent is already gone.
        """
        if job.state == RUNNING:
            self.stats.ran(self._clock.seconds() - job.started_at)
            self._count(job, RUNNING_COUNT, -1)
        kind = answer.result[0] if answer is not None else "dropped"
        self.stats.ended(kind)
        if self._observers:
            self._notify("job_finished", job, kind, job.agent.name if job.agent is not None else agent_name)
        job.state = DONE
        job.agent = None
        del self._jobs[job.key]
        self._held -= job.size
        client = job.client
        if client is not None:
            client.held -= job.size
            del client.jobs[job.key[1]]
            if answer is not None:
                client.peer.send(answer)

    def _refresh_environments(self, before: Tuple[str, ...]) -> None:
        """Tell every client if the set of offered environments changed."""
        now = self._slots.environments()
        if now == before:
            return
        self._containers = message = BackendUpdateContainers(now)
        self.log.info("available environments: {envs}", envs=list(now))
        for client in self._clients.values():
            client.peer.send(message)


@implementer(IBackendClientHandler, IRejectionObserver)
class _ClientHandler:
    """The client side of a :class:`Backend` (methods named by msgtype).

    This is the edge where client messages enter: sizes are measured here
    (:func:`~.sizes.packed_size`), and a rejected frame's job id is taken from
    the decode error, so that the core neither encodes nor decodes.
    """

    def __init__(self, backend: Backend) -> None:
        self._submit = backend.client_new_job
        self._rejected = backend.client_job_rejected
        self.client_hello = backend.client_hello
        self.client_kill_job = backend.client_kill_job
        self.client_get_queue = backend.client_get_queue
        self.ping = backend.client_ping
        self.peer_connected = backend.client_connected
        self.peer_disconnected = backend.client_disconnected

    def client_new_job(self, peer: IPeer, message: ClientNewJob) -> None:
        self._submit(peer, message, packed_size(message.inputdata))

    def message_rejected(self, peer: IPeer, error: Exception, payload: bytes) -> None:
        msgtype, job_id = rejected_job(error, payload)
        if msgtype in ("client_new_job", "ClientNewJob"):
            self._rejected(peer, job_id, error)


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


def _accepted(peer: IPeer) -> None:
    """Tell ``peer``'s transport that its hello was accepted (lifts pre-hello limits).

    Looked up leniently: a third-party transport written before
    ``IPeer.accepted`` existed keeps working, with its own limits.
    """
    accepted = getattr(peer, "accepted", None)
    if accepted is not None:
        accepted()
