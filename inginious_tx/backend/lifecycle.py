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

Dialects.  Each registered peer keeps the adapter of the dialect of its
hello (:mod:`.dialect06`, :mod:`.dialect09`), which builds every message it
is sent; a message in the other dialect from a registered peer is a logged
protocol error.  Jobs cross dialects when their client and their agent
differ (PROTOCOL-0.9.md section 4): the agent's adapter translates.  0.9
job ids are one namespace for the whole backend (a duplicate is refused)
and any 0.9 client may kill a 0.9 job.

Observers (:class:`~inginious_tx.interfaces.IJobObserver`) hear every
transition; :meth:`Backend.load_by_course` and :meth:`Backend.load_by_client`
read counts kept as jobs move (:mod:`.load`).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Union

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..interfaces import IJobObserver, IPeer, ISchedulingPolicy
from ..messages import v06, v09
from .adapter import DOCKER, DialectAdapter, Environment, label
from .dialect06 import AgentHandler06, ClientHandler06, Dialect06
from .dialect09 import AgentHandler09, ClientHandler09, Dialect09
from .edge import EdgeSink
from .job import DONE, RUNNING, WAITING, Job
from .load import RUNNING_COUNT, SHRINK_FLOOR, WAITING_COUNT, LoadCounts
from .peers import AgentState, ClientState
from .settings import BackendSettings
from .slots import SlotIndex
from .snapshot import QueueSnapshot
from .stats import BackendStats

__all__ = ["Backend"]


#: Message class name -> handler method, for each role (the same in both dialects).
_CLIENT_ROUTES = (
    ("ClientHello", "client_hello"),
    ("ClientNewJob", "client_new_job"),
    ("ClientKillJob", "client_kill_job"),
    ("ClientGetQueue", "client_get_queue"),
    ("Ping", "ping"),
)
_AGENT_ROUTES = (
    ("AgentHello", "agent_hello"),
    ("AgentJobStarted", "agent_job_started"),
    ("AgentJobDone", "agent_job_done"),
    ("AgentJobSSHDebug", "agent_job_ssh_debug"),
    ("Pong", "pong"),
)


def _routes(routes: Tuple[Tuple[str, str], ...], handler06: Any, handler09: Any) -> Dict[type, Any]:
    """Each dialect's message classes -> the bound method of that dialect's handler."""
    return {
        getattr(module, name): getattr(handler, method)
        for module, handler in ((v06, handler06), (v09, handler09))
        for name, method in routes
    }


def _bump(table: Dict[Any, List[int]], key: Any, index: int, delta: int) -> None:
    """Add ``delta`` to ``table[key][index]``; an entry back at (0, 0) is removed."""
    counts = table.get(key)
    if counts is None:
        counts = table[key] = [0, 0]
    counts[index] += delta
    if not counts[0] and not counts[1]:
        del table[key]


#: The settings of a backend that is given none.
_DEFAULTS = BackendSettings()


class Backend:
    """The grading backend's core: clients, agents, jobs, slots.

    ``clock`` provides :class:`IReactorTime` (a reactor, or a
    :class:`twisted.internet.task.Clock` in tests); ``policy`` provides
    :class:`~inginious_tx.interfaces.ISchedulingPolicy`.  Call :meth:`start`
    to begin heartbeats and :meth:`shutdown` to answer every job and stop.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, policy: ISchedulingPolicy, settings: BackendSettings = _DEFAULTS):
        self._clock = clock
        self._policy = policy
        self.settings = settings
        self._clients: Dict[IPeer, ClientState] = {}
        self._agents: Dict[IPeer, AgentState] = {}
        #: every waiting or running job (including those whose client left)
        self._jobs: Dict[Tuple[bytes, str], Job] = {}
        #: the most jobs held since the tables were last rebuilt (see _shrink)
        self._jobs_peak = 0
        #: 0.9 clients' jobs by id: one namespace for the whole backend
        self._ids09: Dict[str, Job] = {}
        #: ids made for 0.6 jobs sent to 0.9 agents
        self._global_ids: Dict[str, Job] = {}
        self._n_waiting = 0
        #: bytes of inputdata of every job in the table
        self._held = 0
        self._slots = SlotIndex()
        #: the index's environment -> free agents map, read on the hot path
        self._free = self._slots.free
        #: type -> sorted names of the offered environments
        self._offered: Dict[str, Tuple[str, ...]] = {}
        #: dialect name -> the environments message clients of that dialect were last told
        self._told: Dict[str, Any] = {}
        self._sequence = itertools.count()
        self._tick = 0
        #: jobs refused (queue full) since the last heartbeat
        self._refused = 0
        self._heartbeat: Optional[LoopingCall] = None
        self._stopping = False
        #: totals for status pages and metrics
        self.stats = BackendStats()
        self._by_course = LoadCounts()
        self._by_client = LoadCounts()
        self._by_environment = LoadCounts()
        # their tables, updated inline by _count
        self._course_counts = self._by_course.counts
        self._client_counts = self._by_client.counts
        self._env_counts: Dict[Any, List[int]] = self._by_environment.counts
        self._observers: List[IJobObserver] = []
        #: bumped whenever the set of waiting jobs changes (for snapshots)
        self._queue_version = 0
        self._snapshot = QueueSnapshot(policy, clock, settings.ping_interval)
        self._d06 = Dialect06()
        self._d09 = Dialect09(self)
        #: the 0.6 handlers (the role interfaces, for tests and direct use)
        self.client_handler = ClientHandler06(self, self._d06)
        self.agent_handler = AgentHandler06(self, self._d06)
        self._client_handler09 = ClientHandler09(self, self._d09)
        self._agent_handler09 = AgentHandler09(self, self._d09)

    # -- wiring ----------------------------------------------------------------

    def client_sink(self) -> EdgeSink:
        """A transport sink for a client endpoint (both dialects)."""
        c06, c09 = self.client_handler, self._client_handler09
        return EdgeSink(
            "clients",
            _routes(_CLIENT_ROUTES, c06, c09),
            self.client_connected,
            self.client_disconnected,
            {"0.6": c06, "0.9": c09},
            self._client_unexpected,
        )

    def agent_sink(self) -> EdgeSink:
        """A transport sink for an agent endpoint (both dialects)."""
        table = _routes(_AGENT_ROUTES, self.agent_handler, self._agent_handler09)
        return EdgeSink("agents", table, self.agent_connected, self.agent_disconnected)

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
                agent = job.agent
                agent.running.pop(job.agent_id, None)
                agent.peer.send(agent.dialect.kill_job(job))
            self._finish(job, "crash", "backend shutting down")
        self._snapshot.expire(-2)

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

    def busiest(self, what: str, n: int) -> Tuple[Dict[str, Tuple[int, int]], int]:
        """The ``n`` courses (``what="courses"``) or client names (``"clients"``) with
        the most jobs, as :meth:`load_by_course` counts them, and how many have jobs
        in all: O(courses) without a copy, for pages that must stay small."""
        table = self._by_course if what == "courses" else self._by_client
        return table.top(n), len(table)

    def _shrink(self) -> None:
        """Rebuild the job tables once they hold a quarter of their peak: a dict
        keeps its size when emptied, and a client that queued 100,000 jobs and
        left must not leave their tables behind (amortised O(1) a job; the
        count tables never hold more entries than there are jobs)."""
        self._jobs = dict(self._jobs)
        self._ids09 = dict(self._ids09)
        self._global_ids = dict(self._global_ids)
        for table in (self._by_course, self._by_client, self._by_environment):
            table.counts = dict(table.counts)
        self._course_counts = self._by_course.counts
        self._client_counts = self._by_client.counts
        self._env_counts = self._by_environment.counts
        self._jobs_peak = len(self._jobs)

    def _count(self, job: Job, index: int, delta: int) -> None:
        """Move ``job``'s (waiting, running) counts by ``delta`` in each table."""
        _bump(self._course_counts, job.course_id, index, delta)
        _bump(self._client_counts, job.client_name, index, delta)
        _bump(self._env_counts, job.environment, index, delta)

    def _started(self, job: Job) -> None:
        """Move ``job``'s counts from waiting to running (each entry exists: it counts ``job``)."""
        for counts in (
            self._course_counts[job.course_id],
            self._client_counts[job.client_name],
            self._env_counts[job.environment],
        ):
            counts[0] -= 1
            counts[1] += 1

    def _notify(self, event: str, *args: Any) -> None:
        """Call ``event`` on every observer; one that raises is logged and skipped."""
        for observer in list(self._observers):
            try:
                getattr(observer, event)(*args)
            except Exception:
                self.log.failure("job observer {observer!r} failed in {event}", observer=observer, event=event)

    # -- introspection (tests, status, metrics) ------------------------------------

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
        """The offered environments, by label (a docker environment by its name, others as ``type/name``)."""
        return tuple(sorted(label(env) for env in self._slots.offering))

    @property
    def offered_environments(self) -> Dict[str, Tuple[str, ...]]:
        """The offered environments: type -> sorted names (what 0.9 clients are told)."""
        return dict(self._offered)

    def job(self, key: Tuple[bytes, str]) -> Optional[Job]:
        return self._jobs.get(key)

    def free_agents(self, environment: Union[str, Environment]) -> List[AgentState]:
        """Agents with a free slot for ``environment`` (a 0.6 name, or ``(type, name)``)."""
        env = (DOCKER, environment) if isinstance(environment, str) else environment
        return self._slots.free_agents(env)

    def waiting_per_environment(self) -> Dict[str, int]:
        """How many jobs wait for each environment, by label (O(environments))."""
        return {label(env): w for env, (w, _) in self._by_environment.snapshot().items() if w}

    # -- clients ---------------------------------------------------------------

    def _client(self, peer: IPeer, dialect: DialectAdapter) -> Optional[ClientState]:
        """The registered client ``peer`` speaking ``dialect``, or None (answered or logged)."""
        client = self._clients.get(peer)
        if client is None:
            peer.send(dialect.unknown)
            return None
        if client.dialect is not dialect:
            self._wrong_dialect(peer, client.dialect, dialect)
            return None
        client.last_tick = self._tick
        return client

    def _wrong_dialect(self, peer: IPeer, registered: DialectAdapter, sent: DialectAdapter) -> None:
        self.log.warn(
            "protocol error: {peer} registered in the {registered} dialect sent a {sent} message: ignored",
            peer=peer.description,
            registered=registered.name,
            sent=sent.name,
        )

    def _client_unexpected(self, peer: IPeer, message: Any) -> None:
        # The sink logged the protocol error; a stranger also learns that it
        # must say hello (in the dialect of what it sent).
        if peer not in self._clients:
            peer.send(self._d09.unknown if getattr(type(message), "dialect", "0.6") == "0.9" else self._d06.unknown)

    def client_job_rejected(self, peer: IPeer, dialect: DialectAdapter, job_id: Any, error: Exception) -> None:
        """A registered client's job that did not decode is answered, not ignored.

        ``job_id`` is what the decoder could read of the job's id (None when
        unreadable: nothing can be answered).  A job whose id is in use is
        not answered: the job that has it must stay untouched.
        """
        client = self._clients.get(peer)
        if client is None:
            peer.send(dialect.unknown)
            return
        if type(job_id) is not str or job_id in client.jobs:
            return
        if client.dialect is self._d09 and (job_id in self._ids09 or job_id in self._global_ids):
            return
        self.stats.submitted += 1  # submitted, never accepted: counted as refused
        self._refuse(client, job_id, f"invalid job: {error}", None)

    def _refuse(self, client: ClientState, job_id: str, reason: str, inputdata: Any) -> None:
        """Answer a job that was never accepted ``("crash", reason)``."""
        client.peer.send(client.dialect.job_result(job_id, "crash", reason, inputdata))
        if self._observers:
            self._notify("job_refused", client.name, job_id, reason)

    def client_hello(self, peer: IPeer, dialect: DialectAdapter, name: str) -> None:
        client = self._clients.get(peer)
        if client is None:
            client = self._clients[peer] = ClientState(peer, name, self._tick, dialect)
            self.log.info(
                "client {name!r} registered from {peer} ({dialect})",
                name=name,
                peer=peer.description,
                dialect=dialect.name,
            )
            _accepted(peer)
        elif client.dialect is not dialect:
            self._wrong_dialect(peer, client.dialect, dialect)
            return
        else:
            client.name = name
            client.last_tick = self._tick
        peer.send(self._environments_for(dialect))

    def _environments_for(self, dialect: DialectAdapter) -> Any:
        message = self._told.get(dialect.name)
        if message is None:
            message = self._told[dialect.name] = dialect.environments(self._offered)
        return message

    def client_new_job(
        self, peer: IPeer, dialect: DialectAdapter, message: Any, environment: Environment, time_limit: int, size: int
    ) -> None:
        """Queue (or run at once, or refuse) a job.

        ``environment`` and ``time_limit`` are what the job's dialect says
        they are; ``size`` is the byte size of its inputdata, measured by the
        edge that decoded the message (the core never encodes).
        """
        client = self._clients.get(peer)
        if client is None:
            peer.send(dialect.unknown)
            return
        if client.dialect is not dialect:
            self._wrong_dialect(peer, client.dialect, dialect)
            return
        client.last_tick = self._tick
        self.stats.submitted += 1
        job_id = message.job_id
        if self._stopping:
            self._refuse(client, job_id, "backend shutting down", message.inputdata)
            return
        limit = self.settings.max_inputdata
        if limit is not None and size > limit:
            self.log.warn(
                "client {name!r}: job {job_id!r} refused, inputdata of {size} bytes > {limit}",
                name=client.name,
                job_id=job_id,
                size=size,
                limit=limit,
            )
            self._refuse(client, job_id, f"inputdata too large: {size} bytes > limit {limit}", message.inputdata)
            return
        key = (peer.address, job_id)
        global09 = dialect is self._d09
        taken09 = global09 and (job_id in self._ids09 or job_id in self._global_ids)
        if job_id in client.jobs or key in self._jobs or taken09:
            self.log.warn(
                "client {name!r} used the job id {job_id!r} of a job that is still queued or running: refused",
                name=client.name,
                job_id=job_id,
            )
            self._refuse(
                client,
                job_id,
                f"duplicate job id {job_id!r}: a job with this id is already queued",
                message.inputdata,
            )
            return
        refusal = self._over_bytes(client, size)
        if refusal is not None:
            self._refuse(client, job_id, refusal, message.inputdata)
            return
        free = self._free.get(environment)
        if not free:
            refusal = self._over_cap(client)
            if refusal is not None:
                self._refuse(client, job_id, refusal, message.inputdata)
                return
        now, sequence = self._clock.seconds(), next(self._sequence)
        job = Job(key, client, message, dialect, environment, time_limit, now, sequence, size)
        self.stats.accepted += 1
        self._jobs[key] = job
        if len(self._jobs) > self._jobs_peak:
            self._jobs_peak = len(self._jobs)
        if global09:
            self._ids09[job_id] = job
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

    def client_kill_job(self, peer: IPeer, dialect: DialectAdapter, job_id: str) -> None:
        client = self._client(peer, dialect)
        if client is None:
            return
        # 0.9: any 0.9 client may kill any 0.9 job (a frontend runs several processes).
        job = self._ids09.get(job_id) if dialect is self._d09 else client.jobs.get(job_id)
        if job is None:
            self.log.info(
                "client {name!r} asked to kill unknown job {job_id!r}: ignored",
                name=client.name,
                job_id=job_id,
            )
            return
        if job.state == WAITING:
            self._unwait(job)
            self._finish(job, "killed", "the job was killed before it started")
        elif not job.kill_requested and job.agent is not None:
            job.kill_requested = True
            job.agent.peer.send(job.agent.dialect.kill_job(job))

    def client_get_queue(self, peer: IPeer, dialect: DialectAdapter) -> None:
        client = self._client(peer, dialect)
        if client is None:
            return

        def answer(jobs: List[Job], section: bytes, offsets: List[int], index: Dict[Any, int]) -> None:
            if self._clients.get(peer) is not client:
                return  # it left while a big snapshot was being built
            own = QueueSnapshot.own(client.jobs.values(), offsets, index) if client.waiting else []
            running = [(job, agent.name) for agent in self._agents.values() for job in agent.running.values()]
            peer.send(dialect.queue(client, running, section, len(jobs), own))

        self._snapshot.ask(dialect, self._queue_version, self._n_waiting, answer)

    def client_ping(self, peer: IPeer, dialect: DialectAdapter) -> None:
        client = self._client(peer, dialect)
        if client is not None:
            client.pinged = True
            peer.send(dialect.pong)

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
                self._forget(job)
                self.stats.ended("dropped")
                if self._observers:
                    self._notify("job_finished", job, "dropped", None)
            else:
                running += 1
                job.client = None
                if not job.kill_requested and job.agent is not None:
                    job.kill_requested = True
                    job.agent.peer.send(job.agent.dialect.kill_job(job))
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

    def _agent(self, peer: IPeer, dialect: DialectAdapter, what: str) -> Optional[AgentState]:
        """The registered agent ``peer`` speaking ``dialect`` (which is alive), or None, logged."""
        agent = self._agents.get(peer)
        if agent is None:
            self.log.warn(
                "{msgtype} from {peer}, which is not a registered agent: dropped",
                msgtype=what,
                peer=peer.description,
            )
            return None
        if agent.dialect is not dialect:
            self._wrong_dialect(peer, agent.dialect, dialect)
            return None
        agent.missed = 0
        return agent

    def agent_hello(
        self,
        peer: IPeer,
        dialect: DialectAdapter,
        name: str,
        slots: int,
        environments: FrozenSet[Environment],
    ) -> None:
        old = self._agents.get(peer)
        if old is not None:
            if old.dialect is not dialect:
                self._wrong_dialect(peer, old.dialect, dialect)
                return
            self._remove_agent(old, "it said hello again", disconnect=False, announce=False)
        if slots < 1:
            self.log.warn(
                "agent {name!r} at {peer} offers {slots} job slots: it will get no jobs",
                name=name,
                peer=peer.description,
                slots=slots,
            )
            slots = 0
        agent = AgentState(peer, name, slots, environments if slots else frozenset(), dialect)
        self._agents[peer] = agent
        self._slots.add(agent)
        _accepted(peer)
        self.log.info(
            "agent {name!r} registered from {peer} ({dialect}): {slots} slots, environments {envs}",
            name=agent.name,
            peer=peer.description,
            dialect=dialect.name,
            slots=slots,
            envs=sorted(label(env) for env in agent.environments),
        )
        self._refresh_environments()
        self._fill(agent)

    def _fill(self, agent: AgentState) -> None:
        """Give ``agent`` (listed as free) waiting jobs while it has free slots."""
        while agent.alive and len(agent.running) < agent.slots and self._n_waiting:
            job = self._next_for(agent)
            if job is None:
                return
            self._run(job, agent)

    def agent_job_started(self, peer: IPeer, dialect: DialectAdapter, message: Any) -> None:
        job = self._running_job(peer, dialect, "AgentJobStarted", message.job_id)
        if job is not None and job.client is not None:
            job.client.peer.send(job.client.dialect.job_started(job))

    def agent_job_ssh_debug(
        self, peer: IPeer, dialect: DialectAdapter, message: Any, host: str, port: int, user: str, password: str
    ) -> None:
        job = self._running_job(peer, dialect, "AgentJobSSHDebug", message.job_id)
        if job is not None and job.client is not None:
            job.client.peer.send(job.client.dialect.ssh_debug(job, host, port, user, password))

    def _running_job(self, peer: IPeer, dialect: DialectAdapter, what: str, job_id: Any) -> Optional[Job]:
        """The job a registered agent's message is about; None (logged) when it does not run it."""
        agent = self._agent(peer, dialect, what)
        if agent is None:
            return None
        job = agent.running.get(job_id)
        if job is None:
            self._stray(agent, what, job_id)
        return job

    def agent_job_done(self, peer: IPeer, dialect: DialectAdapter, message: Any) -> None:
        agent = self._agents.get(peer)
        if agent is None or agent.dialect is not dialect:
            self._agent(peer, dialect, "AgentJobDone")  # logs why
            return
        agent.missed = 0
        job = agent.running.pop(message.job_id, None)
        if job is None:
            self._stray(agent, "AgentJobDone", message.job_id)
            return
        self._finish(job, message.result[0], None, message)
        self._slot_freed(agent)

    def agent_pong(self, peer: IPeer, dialect: DialectAdapter) -> None:
        agent = self._agents.get(peer)
        if agent is not None:
            agent.missed = 0

    def agent_connected(self, peer: IPeer) -> None:
        """Nothing to do: an agent must say hello first."""

    def agent_disconnected(self, peer: IPeer, reason: str) -> None:
        agent = self._agents.get(peer)
        if agent is not None:
            self._remove_agent(agent, f"connection closed ({reason})", disconnect=False)

    def _stray(self, agent: AgentState, what: str, job_id: Any) -> None:
        if self._stopping:
            return  # answers to the kills sent at shutdown
        self.log.warn(
            "agent {name!r} sent {msgtype} for job {job_id!r}, which it is not running: dropped",
            name=agent.name,
            msgtype=what,
            job_id=job_id,
        )

    def _remove_agent(self, agent: AgentState, reason: str, disconnect: bool = True, announce: bool = True) -> None:
        """``agent`` is gone: forget it and re-queue (or answer) its jobs."""
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
            self._refresh_environments()
        for job in jobs:
            self._lost(job, agent, reason)

    def _lost(self, job: Job, agent: AgentState, reason: str) -> None:
        """``job`` was running on ``agent``, which is gone."""
        job.agent = None
        if job.client is None:
            self._finish(job, "dropped", None, agent_name=agent.name)
        elif job.kill_requested:
            self._finish(job, "killed", f"the job was killed (its agent was lost: {reason})", agent_name=agent.name)
        elif job.retries >= self.settings.max_retries:
            self._finish(
                job,
                "crash",
                f"agent lost while running the job ({agent.name}: {reason}); gave up after {job.retries + 1} attempts",
                agent_name=agent.name,
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
                agent.peer.send(agent.dialect.ping)
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
        self._snapshot.expire(self._queue_version)

    # -- job transitions ---------------------------------------------------------

    def _wait(self, job: Job) -> None:
        """Queue ``job`` (which is in the job table) with the policy."""
        try:
            self._policy.add(job)
        except Exception:
            self.log.failure("scheduling policy {policy!r} failed to queue {job!r}", policy=self._policy, job=job)
            self._finish(job, "crash", "internal error in the scheduling policy")
            return
        job.state = WAITING
        self._n_waiting += 1
        self._queue_version += 1
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
        self._queue_version += 1
        self._count(job, WAITING_COUNT, -1)
        if job.client is not None:
            job.client.waiting -= 1

    def _run(self, job: Job, agent: AgentState) -> None:
        """Send ``job`` to ``agent``, taken from the free lists of its environment."""
        self._slots.take(agent, job.environment)
        self._send(job, agent)

    def _send(self, job: Job, agent: AgentState, waited: bool = False) -> None:
        """Hand ``job`` to ``agent`` (the free lists are the caller's business).

        ``waited``: ``job`` was just taken from the queue by ``_next_for(agent, counted=False)``
        and is still counted as waiting; its counts move from waiting to running in one pass.
        """
        job.state = RUNNING
        job.agent = agent
        job.started_at = now = self._clock.seconds()
        if not job.retries:
            self.stats.waited(now - job.submitted_at)
        if waited:
            self._started(job)
        else:
            self._count(job, RUNNING_COUNT, 1)
        dialect = agent.dialect
        job.agent_id = agent_id = dialect.agent_job_id(job)
        agent.running[agent_id] = job
        if self._observers:
            self._notify("job_started", job, agent.name)
        agent.peer.send(dialect.new_job(job))

    def global_id(self, job: Job) -> str:
        """A string id, unique in the backend, for a 0.6 job going to a 0.9 agent (kept for its life)."""
        if job.global_id is None:
            new = uuid.uuid4().hex
            while new in self._ids09 or new in self._global_ids:
                new = uuid.uuid4().hex
            job.global_id = new
            self._global_ids[new] = job
        return job.global_id

    def _slot_freed(self, agent: AgentState) -> None:
        """One of ``agent``'s slots is free: run the next job, or list it as free.

        If a job follows, the agent's place in the free lists does not change:
        it was listed before (and still has a free slot) or was full (and is
        full again).
        """
        if not agent.alive:
            return
        if self._n_waiting:
            job = self._next_for(agent, counted=False)
            if job is not None:
                self._send(job, agent, waited=True)
                return
        self._slots.released(agent)

    def _next_for(self, agent: AgentState, counted: bool = True) -> Optional[Job]:
        """The policy's next job for ``agent``, no longer counted as waiting
        (unless ``counted`` is false: the caller moves its counts, see :meth:`_started`).

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
            self._queue_version += 1
            if job.client is not None:
                job.client.waiting -= 1
            if job.environment in agent.environments:
                if counted:
                    self._count(job, WAITING_COUNT, -1)
                return job
            self._count(job, WAITING_COUNT, -1)
            self.log.error(
                "scheduling policy {policy!r} returned {job!r} for an agent offering {envs}: answered crash",
                policy=self._policy,
                job=job,
                envs=sorted(label(env) for env in agent.environments),
            )
            job.state = DONE
            self._finish(job, "crash", "internal error in the scheduling policy")

    def _forget(self, job: Job) -> None:
        """Take ``job`` out of every table (not out of its client's)."""
        del self._jobs[job.key]
        if self._jobs_peak > SHRINK_FLOOR and len(self._jobs) * 4 < self._jobs_peak:
            self._shrink()
        self._held -= job.size
        if job.origin is self._d09:
            if self._ids09.get(job.job_id) is job:
                del self._ids09[job.job_id]
        if job.global_id is not None:
            self._global_ids.pop(job.global_id, None)

    def _finish(
        self,
        job: Job,
        kind: str,
        text: Optional[str],
        outcome: Any = None,
        agent_name: Optional[str] = None,
    ) -> None:
        """The one end of every job: forget it and answer its client.

        The answer is the agent's ``outcome`` if given, else a result the
        backend makes (``kind``, ``text``); ``kind`` "dropped" answers nobody.
        ``agent_name`` is for observers, when the job's agent is already gone.
        """
        if job.state == RUNNING:
            self.stats.ran(self._clock.seconds() - job.started_at)
            self._count(job, RUNNING_COUNT, -1)
        client = job.client
        if client is None:
            kind = "dropped"
        self.stats.ended(kind)
        if self._observers:
            self._notify("job_finished", job, kind, job.agent.name if job.agent is not None else agent_name)
        job.state = DONE
        job.agent = None
        self._forget(job)
        if client is not None:
            client.held -= job.size
            del client.jobs[job.job_id]
            dialect = client.dialect
            if outcome is not None:
                client.peer.send(dialect.job_done(job, outcome))
            else:
                client.peer.send(dialect.job_result(job.job_id, kind, text, job.message.inputdata))

    def _refresh_environments(self) -> None:
        """Tell every client if the environments its dialect shows changed."""
        offered: Dict[str, List[str]] = {}
        for kind, name in self._slots.offering:
            offered.setdefault(kind, []).append(name)
        now = {kind: tuple(sorted(names)) for kind, names in sorted(offered.items())}
        if now == self._offered:
            return
        before = self._told
        self._offered = now
        self._told = {}
        self.log.info("available environments: {envs}", envs=sorted(label(env) for env in self._slots.offering))
        for dialect in (self._d06, self._d09):
            old = before.get(dialect.name)
            message = self._environments_for(dialect)
            if old is not None and old == message:
                continue
            for client in self._clients.values():
                if client.dialect is dialect:
                    client.peer.send(message)


def _accepted(peer: IPeer) -> None:
    """Tell ``peer``'s transport that its hello was accepted (lifts pre-hello limits).

    Looked up leniently: a third-party transport written before
    ``IPeer.accepted`` existed keeps working, with its own limits.
    """
    accepted = getattr(peer, "accepted", None)
    if accepted is not None:
        accepted()
