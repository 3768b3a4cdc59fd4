"""A client of an INGInious (or inginious-tx) backend, for Twisted applications.

It speaks the 0.6 dialect by default, or 0.9 (INGInious 0.7 to 0.9.x) with
``dialect="0.9"``; the API is the same (see :class:`Client`).

The client keeps one link to the backend (through whichever transport the
endpoint string names), says hello on every new link, follows the list of
environments the agents offer, and turns every submitted job into a Deferred
that fires exactly once with a :class:`~inginious_tx.client.result.ClientJobResult`.

A job is only sent once the backend has answered our hello (its first
``BackendUpdateContainers``), so a job never sits in a ZeroMQ queue towards a
backend that is not there.  If the backend cannot be reached in time, or the
link it was sent on is lost (stream closed, pongs stopped, the backend says it
does not know us any more), the job is answered locally with
``("crash", "backend unavailable: ...")``; anything the backend says later
about that job is ignored.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from .. import transport as _transport
from .._reactor import CommonReactor
from ..dispatch import Dispatcher
from ..interfaces import IClientHandler, IConnection, IPeer, ITransport
from ..messages import (
    BackendGetQueue,
    BackendJobDone,
    BackendJobSSHDebug,
    BackendJobStarted,
    BackendUpdateContainers,
    ClientNewJob,
    Pong,
    Unknown,
    get_dialect,
)
from ..messages.convert import limits_from_parameters, parameters_from_limits
from .dialect import sink_for
from .result import UNAVAILABLE, ClientJobResult, QueueSnapshot

__all__ = ["Client", "BackendUnavailable", "EnvironmentUnavailable", "connect_client"]

OnStarted = Callable[[str], Any]
OnSSHDebug = Callable[[str, str, int, str], Any]


class BackendUnavailable(Exception):
    """The backend could not be reached in time, or was lost before it answered."""


class EnvironmentUnavailable(BackendUnavailable):
    """The backend answers, but no agent offers the environment asked for."""

    def __init__(self, text: str, environment: str, available: Tuple[str, ...]) -> None:
        super().__init__(text)
        self.environment = environment
        self.available = available


@dataclass(eq=False)
class _Job:
    """A submitted job the backend has not answered yet."""

    message: ClientNewJob
    deferred: Deferred
    on_started: Optional[OnStarted]
    on_ssh_debug: Optional[OnSSHDebug]
    #: True once sent on the current link; False while held for a link.
    sent: bool = False
    #: Fires the "backend unreachable" crash while the job is held.
    timer: Optional[IDelayedCall] = None


@dataclass(eq=False)
class _QueueRequest:
    deferred: Deferred
    sent: bool = False
    timer: Optional[IDelayedCall] = None


@dataclass(eq=False)
class _Waiter:
    """Someone waiting for the backend (and perhaps an environment) to appear."""

    deferred: Deferred
    environment: Optional[str]
    timer: Optional[IDelayedCall] = None
    environment_type: str = "docker"


@implementer(IClientHandler)
class Client(Service):
    """A link to a grading backend; submit jobs, kill them, look at the queue.

    ``reactor`` is typed :class:`~inginious_tx._reactor.CommonReactor` (timers,
    TCP; UNIX or SSL when the endpoint names them); ``endpoint`` is a transport endpoint string such as
    ``zmq:tcp://127.0.0.1:2000`` or ``tcp:127.0.0.1:2000``.  ``transport`` (an
    ``ITransport``) replaces the lookup by endpoint string, e.g. with
    :class:`inginious_tx.testing.MemoryTransport` in tests.

    Heartbeat: a ``Ping`` every ``ping_interval`` seconds; a backend that says
    nothing for ``ping_interval * ping_misses`` seconds is lost and the link is
    remade.  ``connect_timeout``: how long a job (or a queue request) may wait
    for a backend that answers before it is given up as "backend unavailable".

    It is also a Twisted service: ``startService``/``stopService`` call
    :meth:`start`/:meth:`stop`.

    ``dialect``: ``"0.6"`` (the default) or ``"0.9"``, the protocol the
    backend speaks.  In 0.9 an environment is a ``(type, name)`` pair:
    ``environment_type`` is the type used when a job or a wait names none
    (``docker``, as INGInious' docker agents announce), and
    :attr:`environments` lists the names of that type.
    """

    log = Logger()

    def __init__(
        self,
        reactor: CommonReactor,
        endpoint: str,
        name: str = "inginious-tx",
        *,
        transport: Optional[ITransport] = None,
        limits: Optional[_transport.Limits] = None,
        ping_interval: float = 2.0,
        ping_misses: int = 3,
        connect_timeout: float = 30.0,
        dialect: str = "0.6",
        environment_type: str = "docker",
    ) -> None:
        if ping_interval <= 0 or ping_misses < 1 or connect_timeout < 0:
            raise ValueError("ping_interval and connect_timeout must be positive, ping_misses at least 1")
        self.dialect = get_dialect(dialect).name
        self._m = get_dialect(dialect).classes
        self.environment_type = environment_type
        self._reactor = reactor
        self.endpoint = endpoint
        self.client_name = name
        self._transport = transport
        self._limits = limits if limits is not None else _transport.Limits()
        self.ping_interval = ping_interval
        self.ping_misses = ping_misses
        self.connect_timeout = connect_timeout

        self._connection: Optional[IConnection] = None
        self._peer: Optional[IPeer] = None
        #: The backend answered our hello on the current link.
        self._ready = False
        self._last_heard = 0.0
        self._environments: Tuple[str, ...] = ()
        self._environments_by_type: Dict[str, Tuple[str, ...]] = {}
        self._jobs: Dict[str, _Job] = {}
        self._queue_requests: Deque[_QueueRequest] = deque()
        self._waiters: List[_Waiter] = []
        self._heartbeat: Optional[LoopingCall] = None
        self._stopped = False

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> Client:
        """Connect (and keep reconnecting) to the backend.

        Raises at once if no transport understands the endpoint string, or if
        the transport rejects it.  A stopped client starts again with a new
        link (the ``IService`` contract); what was pending was answered at stop.
        """
        if self._connection is not None:
            return self
        self._stopped = False
        sink = sink_for(self.dialect, self, Dispatcher(self, IClientHandler))
        if self._transport is not None:
            self._connection = self._transport.connect(self._reactor, self.endpoint, sink, self._limits)
        else:
            self._connection = _transport.connect(self._reactor, self.endpoint, sink, self._limits)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self._reactor
        self._heartbeat.start(self.ping_interval, now=False)
        return self

    def stop(self) -> Deferred:
        """Disconnect for good.  Every job still pending is answered
        ``("crash", "client stopped ...")``; queue requests and waiters fail."""
        if self._stopped:
            return succeed(None)
        self._stopped = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._peer = None
        self._ready = False
        for job in list(self._jobs.values()):
            stopped = ClientJobResult.made_up(job.message.job_id, "crash", "client stopped before the job finished")
            self._finish(job, stopped)
        self._fail_requests(lambda r: True, "client stopped")
        self._fail_waiters("client stopped")
        connection, self._connection = self._connection, None
        if connection is None:
            return succeed(None)
        return connection.stop()

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> Deferred:
        super().stopService()
        return self.stop()

    # -- what an application reads -----------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the backend has answered our hello on the current link."""
        return self._ready

    @property
    def environments(self) -> Tuple[str, ...]:
        """The environments at least one agent offers, as the backend last said
        (empty while the backend is not reachable)."""
        return self._environments

    @property
    def environments_by_type(self) -> Dict[str, Tuple[str, ...]]:
        """Every environment offered, as ``{type: names}`` (a 0.6 backend's
        are all of type ``docker``)."""
        return dict(self._environments_by_type)

    @property
    def pending(self) -> Tuple[str, ...]:
        """Ids of the jobs submitted and not answered yet."""
        return tuple(self._jobs)

    def wait_until_ready(self, timeout: Optional[float] = None) -> Deferred:
        """A Deferred firing with :attr:`environments` once the backend has
        answered our hello; fails with :class:`BackendUnavailable` after
        ``timeout`` seconds (None: wait forever)."""
        return self._wait(None, timeout)

    def wait_for_environment(
        self, environment: str, timeout: Optional[float] = None, environment_type: Optional[str] = None
    ) -> Deferred:
        """A Deferred firing with :attr:`environments` once ``environment``
        (of ``environment_type``, default the client's) is offered; fails
        with :class:`BackendUnavailable` after ``timeout`` seconds (the
        message says whether the backend answered at all)."""
        return self._wait(environment, timeout, environment_type or self.environment_type)

    # -- jobs -----------------------------------------------------------------------

    def new_job(
        self,
        course_id: str,
        task_id: str,
        inputdata: Dict[str, Any],
        environment: str = "default",
        *,
        time_limit: int = 30,
        hard_time_limit: Optional[int] = None,
        mem_limit: int = 100,
        enable_network: bool = False,
        priority: int = 0,
        launcher: str = "inginious-tx",
        run_cmd: Optional[str] = None,
        debug: Any = False,
        on_started: Optional[OnStarted] = None,
        on_ssh_debug: Optional[OnSSHDebug] = None,
        job_id: Optional[str] = None,
        environment_type: Optional[str] = None,
        environment_parameters: Optional[Dict[str, Any]] = None,
        task_problems: Optional[Dict[str, Any]] = None,
    ) -> Deferred:
        """Submit a job; returns a Deferred that fires exactly once with a
        :class:`ClientJobResult`.

        ``on_started(job_id)`` is called when an agent starts the job;
        ``on_ssh_debug(job_id, host, port, password)`` for ``debug="ssh"``.
        Cancelling the Deferred asks the backend to kill the job and forgets it.
        Raises ``ValueError`` at once for an id already pending or a field of
        the wrong type (a :class:`~inginious_tx.messages.MessageError`).

        The limits are given either as ``time_limit`` ... ``run_cmd`` or as
        0.9 ``environment_parameters`` (``{"limits": {"time", "hard_time",
        "memory"}, "run_cmd", "network_grading"}``), which then win; each is
        translated for the dialect spoken.  ``environment_type`` (default:
        the client's) and ``task_problems`` are 0.9 notions: towards a 0.6
        backend the type must be ``docker`` and the problems are not sent.
        """
        if self._stopped:
            raise RuntimeError("the client is stopped")
        if job_id is None:
            job_id = uuid.uuid4().hex
        if job_id in self._jobs:
            raise ValueError(f"job id {job_id!r} is already pending")
        message: Any
        if self.dialect == "0.9":
            if environment_parameters is None:
                environment_parameters = parameters_from_limits(
                    time_limit, hard_time_limit, mem_limit, enable_network, run_cmd
                )
            message = self._m["ClientNewJob"](
                job_id, priority, course_id, task_id, task_problems if task_problems is not None else {},
                inputdata, environment_type or self.environment_type, environment, environment_parameters,
                debug, launcher,
            )  # fmt: skip
        else:
            if environment_type not in (None, "docker"):
                raise ValueError(f"a 0.6 backend only runs docker environments, not {environment_type!r}")
            if environment_parameters is not None:
                limits = limits_from_parameters(environment_parameters)
                time_limit, hard_time_limit, mem_limit = limits.time_limit, limits.hard_time_limit, limits.mem_limit
                enable_network, run_cmd = limits.enable_network, limits.run_cmd
            message = ClientNewJob(
                job_id,
                priority,
                course_id,
                task_id,
                inputdata,
                environment,
                enable_network,
                time_limit,
                hard_time_limit,
                mem_limit,
                debug,
                launcher,
                run_cmd,
            )
        d: Deferred = Deferred(lambda _d: self._cancel_job(job_id))
        job = _Job(message, d, on_started, on_ssh_debug)
        self._jobs[job_id] = job
        if self._ready:
            self._send_job(job)
        else:
            self._hold_job(job)
        return d

    def kill_job(self, job_id: str) -> bool:
        """Ask for a pending job to be stopped; its Deferred then fires with the
        backend's answer (usually ``killed``).  A job not yet sent is answered
        ``killed`` at once.  Returns False for an id that is not pending."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        if job.sent and self._peer is not None:
            self._peer.send(self._m["ClientKillJob"](job_id))
        else:
            self._finish(job, ClientJobResult.made_up(job_id, "killed", "killed before it reached the backend"))
        return True

    def get_queue(self) -> Deferred:
        """A Deferred firing with a :class:`QueueSnapshot`; fails with
        :class:`BackendUnavailable` if the backend is lost before it answers
        (or cannot be reached within ``connect_timeout``)."""
        if self._stopped:
            return fail(BackendUnavailable("the client is stopped"))
        request = _QueueRequest(Deferred())
        self._queue_requests.append(request)
        if self._ready:
            self._send_queue_request(request)
        else:
            request.timer = self._reactor.callLater(self.connect_timeout, self._request_timed_out, request)
        return request.deferred

    # -- IClientHandler -----------------------------------------------------------

    def peer_connected(self, peer: IPeer) -> None:
        if self._stopped:
            return
        if self._peer is not None:
            # A new link replaces the old one: whatever was sent on the old
            # link is in the hands of a backend conversation that is over.
            self._lose_link("the connection was replaced by a new one")
        self.log.info("connected to the backend at {peer}", peer=peer.description)
        self._peer = peer
        self._last_heard = self._reactor.seconds()
        self._say_hello()

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        if peer is not self._peer and peer != self._peer:
            return
        self.log.info("lost the backend at {peer}: {reason}", peer=peer.description, reason=reason)
        self._lose_link(f"connection lost ({reason})")

    def backend_update_containers(self, peer: IPeer, message: BackendUpdateContainers) -> None:
        self._environments_updated(peer, {"docker": tuple(message.available_containers)})

    def backend_update_environments(self, peer: IPeer, message: Any) -> None:
        """The 0.9 ``BackendUpdateEnvironments`` (``{type: names}``)."""
        self._environments_updated(peer, {t: tuple(names) for t, names in message.available_environments.items()})

    def _environments_updated(self, peer: IPeer, by_type: Dict[str, Tuple[str, ...]]) -> None:
        if not self._heard(peer):
            return
        self._environments_by_type = by_type
        self._environments = by_type.get(self.environment_type, ())
        if not self._ready:
            self._ready = True
            self.log.info(
                "the backend at {peer} answered; environments: {envs}",
                peer=peer.description,
                envs=", ".join(self._environments) or "none",
            )
            self._flush()
        self._wake_waiters()

    def backend_job_started(self, peer: IPeer, message: BackendJobStarted) -> None:
        job = self._sent_job(peer, message.job_id, "a start notice")
        if job is not None and job.on_started is not None:
            self._call(job.on_started, message.job_id)

    def backend_job_done(self, peer: IPeer, message: BackendJobDone) -> None:
        job = self._sent_job(peer, message.job_id, "a result")
        if job is not None:
            self._finish(job, ClientJobResult.from_message(message))

    def backend_job_ssh_debug(self, peer: IPeer, message: BackendJobSSHDebug) -> None:
        job = self._sent_job(peer, message.job_id, "SSH debug details")
        if job is not None and job.on_ssh_debug is not None:
            self._call(job.on_ssh_debug, message.job_id, message.host, message.port, message.password)

    def _sent_job(self, peer: IPeer, job_id: str, what: str) -> Optional[_Job]:
        """The pending job ``job_id`` was sent on the current link and the
        current backend speaks of it; None (``what`` logged) otherwise."""
        if not self._heard(peer):
            return None
        job = self._jobs.get(job_id)
        if job is None or not job.sent:
            self.log.info("ignoring {what} for job {job_id}, not pending (late or unknown)", what=what, job_id=job_id)
            return None
        return job

    def backend_get_queue(self, peer: IPeer, message: BackendGetQueue) -> None:
        if not self._heard(peer):
            return
        # Answers carry no id: they come back in the order they were asked.
        for request in self._queue_requests:
            if request.sent:
                self._queue_requests.remove(request)
                try:
                    snapshot = QueueSnapshot.from_message(message)
                except (TypeError, ValueError) as e:
                    request.deferred.errback(ValueError(f"malformed queue snapshot: {e}"))
                else:
                    request.deferred.callback(snapshot)
                return
        self.log.debug("ignoring a queue snapshot nobody asked for")

    def pong(self, peer: IPeer, message: Pong) -> None:
        self._heard(peer)

    def unknown(self, peer: IPeer, message: Unknown) -> None:
        if not self._heard(peer):
            return
        if self._ready:
            # It knew us a moment ago: it restarted and forgot our jobs.
            self.log.warn("the backend at {peer} no longer knows this client; hello again", peer=peer.description)
            self._forget_sent("the backend forgot this client (it restarted?)")
            self._ready = False
            self._environments = ()
            self._environments_by_type = {}
        self._say_hello()

    # -- internals ------------------------------------------------------------------

    def _heard(self, peer: IPeer) -> bool:
        """Note that the current backend spoke; False for a stale link."""
        if self._peer is None or (peer is not self._peer and peer != self._peer):
            return False
        self._last_heard = self._reactor.seconds()
        return True

    def _say_hello(self) -> None:
        if self._peer is not None:
            self._peer.send(self._m["ClientHello"](self.client_name))

    def _beat(self) -> None:
        """Ping the backend; remake a link that has been silent too long."""
        if self._peer is None:
            return
        silence = self._reactor.seconds() - self._last_heard
        if silence >= self.ping_interval * self.ping_misses:
            self.log.warn(
                "the backend at {peer} said nothing for {silence:.1f} s; reconnecting",
                peer=self._peer.description,
                silence=silence,
            )
            self._lose_link(f"no answer for {silence:.0f} s")
            if self._connection is not None:
                self._connection.reconnect()
            return
        self._peer.send(self._m["Ping"]())

    def _lose_link(self, why: str) -> None:
        self._peer = None
        self._ready = False
        self._environments = ()
        self._environments_by_type = {}
        self._forget_sent(why)

    def _forget_sent(self, why: str) -> None:
        """Answer every job and request sent on the link that is over."""
        text = f"{UNAVAILABLE}: {why}"
        for job in [j for j in self._jobs.values() if j.sent]:
            self._finish(job, ClientJobResult.made_up(job.message.job_id, "crash", text))
        self._fail_requests(lambda r: r.sent, text)

    def _hold_job(self, job: _Job) -> None:
        job.sent = False
        job.timer = self._reactor.callLater(self.connect_timeout, self._job_timed_out, job)

    def _job_timed_out(self, job: _Job) -> None:
        job.timer = None
        if self._jobs.get(job.message.job_id) is job and not job.sent:
            text = f"{UNAVAILABLE}: no answer from {self.endpoint} within {self.connect_timeout:g} s"
            self._finish(job, ClientJobResult.made_up(job.message.job_id, "crash", text))

    def _send_job(self, job: _Job) -> None:
        self._send(job, job.message)

    def _send_queue_request(self, request: _QueueRequest) -> None:
        self._send(request, self._m["ClientGetQueue"]())

    def _send(self, item: Union[_Job, _QueueRequest], message: Any) -> None:
        """Send what ``item`` held for the backend: it no longer waits for one."""
        assert self._peer is not None
        if item.timer is not None and item.timer.active():
            item.timer.cancel()
        item.timer = None
        item.sent = True
        self._peer.send(message)

    def _flush(self) -> None:
        """The backend answered: send what was held for it, in order."""
        for job in [j for j in self._jobs.values() if not j.sent]:
            if self._ready:
                self._send_job(job)
        for request in [r for r in self._queue_requests if not r.sent]:
            if self._ready:
                self._send_queue_request(request)

    def _request_timed_out(self, request: _QueueRequest) -> None:
        request.timer = None
        if request in self._queue_requests and not request.sent:
            self._queue_requests.remove(request)
            request.deferred.errback(
                BackendUnavailable(f"{UNAVAILABLE}: no answer from {self.endpoint} within {self.connect_timeout:g} s")
            )

    def _fail_requests(self, which: Callable[[_QueueRequest], bool], text: str) -> None:
        for request in [r for r in self._queue_requests if which(r)]:
            self._queue_requests.remove(request)
            if request.timer is not None and request.timer.active():
                request.timer.cancel()
            request.deferred.errback(BackendUnavailable(text))

    def _finish(self, job: _Job, result: ClientJobResult) -> None:
        """Fire a job's Deferred; the job is forgotten first, so this happens once."""
        if self._jobs.get(job.message.job_id) is not job:
            return
        del self._jobs[job.message.job_id]
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        job.timer = None
        job.deferred.callback(result)

    def _cancel_job(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        if job.sent and self._peer is not None:
            self._peer.send(self._m["ClientKillJob"](job_id))

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self.log.failure("a job callback raised")

    # -- waiting for the backend / an environment -----------------------------------

    def _satisfied(self, environment: Optional[str], environment_type: Optional[str] = None) -> bool:
        if not self._ready or environment is None:
            return self._ready
        return environment in self._environments_by_type.get(environment_type or self.environment_type, ())

    def _wait(self, environment: Optional[str], timeout: Optional[float], environment_type: str = "") -> Deferred:
        environment_type = environment_type or self.environment_type
        if self._satisfied(environment, environment_type):
            return succeed(self._environments)
        if self._stopped:
            return fail(BackendUnavailable("the client is stopped"))
        waiter = _Waiter(Deferred(lambda _d: self._drop_waiter(waiter)), environment, None, environment_type)
        if timeout is not None:
            waiter.timer = self._reactor.callLater(timeout, self._waiter_timed_out, waiter, timeout)
        self._waiters.append(waiter)
        return waiter.deferred

    def _drop_waiter(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()

    def _wake_waiters(self) -> None:
        for waiter in [w for w in self._waiters if self._satisfied(w.environment, w.environment_type)]:
            self._drop_waiter(waiter)
            waiter.deferred.callback(self._environments)

    def _waiter_timed_out(self, waiter: _Waiter, timeout: float) -> None:
        waiter.timer = None
        if waiter not in self._waiters:
            return
        self._waiters.remove(waiter)
        if not self._ready:
            error = BackendUnavailable(f"backend unreachable at {self.endpoint} (no answer within {timeout:g} s)")
        else:
            wanted = waiter.environment
            if self.dialect == "0.9":
                wanted = f"{waiter.environment_type}/{waiter.environment}"
                pairs = sorted((t, n) for t, names in self._environments_by_type.items() for n in names)
                available = ", ".join(f"{t}/{n}" for t, n in pairs) or "none"
            else:
                available = ", ".join(self._environments) or "none"
            error = EnvironmentUnavailable(
                f"environment {wanted} is not offered by any agent; available: {available}",
                waiter.environment or "",
                self._environments,
            )
        waiter.deferred.errback(error)

    def _fail_waiters(self, text: str) -> None:
        for waiter in list(self._waiters):
            self._drop_waiter(waiter)
            waiter.deferred.errback(BackendUnavailable(text))


def connect_client(reactor: CommonReactor, endpoint: str, name: str = "inginious-tx", **options: Any) -> Client:
    """A started :class:`Client` (options as for :class:`Client`)."""
    return Client(reactor, endpoint, name, **options).start()
