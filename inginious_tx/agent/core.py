"""The agent: one link to a backend, jobs run by an :class:`IAgentBackend`.

The :class:`Agent` owns the protocol side (hello, heartbeat, one answer per
job, slot accounting); the backend plugin owns how a job is run.  Every
``BackendNewJob`` gets exactly one ``AgentJobDone`` from here, whatever the
backend does (fails, raises, returns garbage, never answers a kill).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from .._reactor import CommonReactor
from ..dispatch import Dispatcher
from ..interfaces import IAgentBackend, IAgentHandler, IConnection, IPeer, ITaskProblemsBackend, ITransport
from ..messages import AgentHello, AgentJobStarted, BackendJobId, BackendKillJob, BackendNewJob, Ping, Pong
from ..transport import Limits
from .dialect import edge_for, environment_type_for
from .feedback import OutputLimits, cap_text
from .limits import DEFAULT_MAXIMA, JobMaxima
from .result import JobResult

__all__ = ["Agent"]


@dataclass
class _Job:
    """A job handed to the backend and not answered yet."""

    job_id: BackendJobId
    #: False once the backend has forgotten us (link lost): the job no longer
    #: holds one of the slots we announce.
    counted: bool = True
    done: bool = False
    kill_call: Optional[IDelayedCall] = None


@implementer(IAgentHandler)
class Agent(Service):
    """A grading agent: connects to ``endpoint`` and runs jobs on ``backend``.

    ``transport``: an :class:`~inginious_tx.interfaces.ITransport` to use
    instead of the one chosen from the endpoint string (tests use
    :class:`~inginious_tx.testing.MemoryTransport`).  ``silence_timeout``:
    seconds without any message from the backend after which the agent
    reconnects.  ``kill_grace``: seconds a backend has to answer a kill before
    the agent answers ``killed`` itself.  ``result_limits``: the archive,
    stdout and stderr caps applied to every result, whatever the agent
    backend already did (a larger archive makes the result an ``error``;
    stdout/stderr are cut with a marker).  ``dialect``: ``"0.6"`` or
    ``"0.9"``, what the backend speaks (see :mod:`inginious_tx.agent.dialect`);
    ``environment_type``: the 0.9 type the environments are announced under
    (default: ``docker`` for the docker kind, else the kind's name).
    ``maxima``: the operator's
    :class:`~inginious_tx.agent.limits.JobMaxima`, applied to every job
    before the backend sees it (over them a job is capped or refused).
    ``ssh_debug``: an :class:`~inginious_tx.agent.ssh.SSHDebugServer` for
    ``debug="ssh"`` jobs (started and stopped with the agent); without it
    they are refused.
    """

    log = Logger()

    def __init__(
        self,
        reactor: CommonReactor,
        backend: IAgentBackend,
        name: str,
        slots: int,
        endpoint: str,
        *,
        transport: Optional[ITransport] = None,
        limits: Optional[Limits] = None,
        silence_timeout: float = 10.0,
        kill_grace: float = 30.0,
        hello_retry: float = 5.0,
        stop_grace: float = 10.0,
        result_limits: Optional[OutputLimits] = None,
        dialect: str = "0.6",
        environment_type: Optional[str] = None,
        maxima: JobMaxima = DEFAULT_MAXIMA,
        ssh_debug: Any = None,
    ) -> None:
        if slots < 1:
            raise ValueError("an agent needs at least one slot")
        edge_for(dialect, None, self._holds, "")  # an unknown dialect fails here
        self.dialect = dialect
        self.environment_type = environment_type or environment_type_for(getattr(backend, "name", ""))
        self._reactor = reactor
        self._backend = backend
        self.friendly_name = name
        self.slots = slots
        self.endpoint = endpoint
        self._transport = transport
        self._limits = limits if limits is not None else Limits()
        self._silence_timeout = silence_timeout
        self._kill_grace = kill_grace
        self._hello_retry = hello_retry
        self._stop_grace = stop_grace
        self._result_limits = result_limits if result_limits is not None else OutputLimits()
        self.maxima = maxima
        self._ssh = ssh_debug
        #: Whether the backend grades from a 0.9 job's task_problems (the mcq kind).
        self._grades_problems = ITaskProblemsBackend.providedBy(backend)
        self._sink: Any = None
        self._connection: Optional[IConnection] = None
        self._peer: Optional[IPeer] = None
        self._silence_call: Optional[IDelayedCall] = None
        self._jobs: Dict[BackendJobId, _Job] = {}
        self._busy = 0
        self._idle_waiters: List[Deferred] = []
        #: the link our last hello went on, until the backend answers anything on it
        self._unanswered: Optional[IPeer] = None
        #: the last reason the environments could not be listed (logged once per reason)
        self._hello_error: Optional[str] = None
        #: The environments announced in the last hello (None before).
        self.environments: Optional[Dict[str, Dict[str, Any]]] = None

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._ssh is not None:
            self._ssh.startService()
        sink = edge_for(self.dialect, Dispatcher(self, IAgentHandler), self._holds, self.environment_type)
        if self._grades_problems:
            sink.keep_problems = True  # only the 0.9 edge has them; harmless on the 0.6 one
        self._sink = sink
        if self._transport is not None:
            self._connection = self._transport.connect(self._reactor, self.endpoint, sink, self._limits)
        else:
            from ..transport import connect

            self._connection = connect(self._reactor, self.endpoint, sink, self._limits)
        self._arm_silence()
        self.log.info(
            "agent {name} ({kind}, {slots} slots) connecting to {endpoint} (INGInious {dialect} dialect)",
            name=self.friendly_name,
            kind=getattr(self._backend, "name", "?"),
            slots=self.slots,
            endpoint=self.endpoint,
            dialect=self.dialect,
        )

    def stopService(self) -> Deferred:
        """Kill the running jobs, send their results (bounded wait), disconnect."""
        super().stopService()
        if self._silence_call is not None and self._silence_call.active():
            self._silence_call.cancel()
        self._silence_call = None
        for job in list(self._jobs.values()):
            self._kill(job, "the agent is stopping")
        d = self._when_idle(self._stop_grace)

        def disconnect(_: Any) -> Deferred:
            conn, self._connection = self._connection, None
            self._peer = None
            return conn.stop() if conn is not None else succeed(None)

        # stop() writes the last results out before it closes the link
        d.addCallback(disconnect)
        if self._ssh is not None:
            d.addCallback(lambda _: self._ssh.stopService())
        d.addCallback(lambda _: self._backend.close())
        d.addErrback(lambda f: self.log.failure("error while stopping the agent", f))
        return d

    def _holds(self, job_id: Any) -> bool:
        """Whether a job is running here (for the dialect edge)."""
        return job_id in self._jobs

    @property
    def busy(self) -> int:
        """Jobs that hold a slot."""
        return self._busy

    # -- IAgentHandler --------------------------------------------------------

    def peer_connected(self, peer: IPeer) -> None:
        # Our hello makes the backend forget (and re-queue) whatever we run.
        self._orphan_jobs("a new link to the backend was made")
        self._peer = peer
        self._heard()
        self._say_hello(peer)

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        if peer is not self._peer:
            return
        self.log.info("lost the backend {peer}: {reason}", peer=peer.description, reason=reason)
        self._peer = None
        self._unanswered = None
        self._orphan_jobs("the link to the backend was lost")

    def ping(self, peer: IPeer, message: Ping) -> None:
        self._heard()
        self._answered(peer)
        peer.send(Pong())

    def backend_new_job(self, peer: IPeer, message: BackendNewJob) -> None:
        self._heard()
        self._answered(peer)
        job_id = message.job_id
        take = getattr(self._sink, "take_problems", None)
        problems = take(job_id) if take is not None else None  # taken at once: never left behind
        if job_id in self._jobs:
            self.log.warn("job {job_id} is already running here: refusing the duplicate", job_id=job_id)
            self._send_result(job_id, JobResult.crash(f"job {job_id[1]!r} is already running on this agent"))
            return
        refusal = self._refusal(message)
        if refusal is None:
            refusal, message = self.maxima.apply(message)  # the operator's maxima, for every backend
        if refusal is not None:
            self.log.warn("refusing job {job_id}: {why}", job_id=job_id, why=refusal)
            self._send_result(job_id, JobResult.crash(refusal))
            return
        if message.debug == "ssh":
            message = self._ssh.bounded(message)
        job = _Job(job_id)
        self._jobs[job_id] = job
        self._busy += 1
        self._send(AgentJobStarted(job_id))
        if self._grades_problems:
            d = maybeDeferred(self._backend.run_with_problems, message, problems)  # type: ignore[attr-defined]
        else:
            d = maybeDeferred(self._backend.run, message)
        if message.debug == "ssh" and not job.done:
            self._ssh.watch(message, self._backend, self._send)
        d.addCallbacks(self._job_ran, self._job_failed, callbackArgs=(job,), errbackArgs=(job,))
        d.addErrback(lambda f: self.log.failure("answering job {job_id} failed", f, job_id=job_id))

    def backend_kill_job(self, peer: IPeer, message: BackendKillJob) -> None:
        self._heard()
        self._answered(peer)
        job = self._jobs.get(message.job_id)
        if job is None:
            self.log.info("kill for job {job_id}, which is not running here: ignored", job_id=message.job_id)
            return
        self._kill(job, "asked by the backend")

    # -- jobs -----------------------------------------------------------------

    def _refusal(self, message: BackendNewJob) -> Optional[str]:
        if message.debug == "ssh":
            if self._ssh is None:
                return "ssh debug is not supported by this agent"  # not enabled: no --ssh-port
            from .debug import ISSHDebugBackend

            if not ISSHDebugBackend.providedBy(self._backend):
                return f"ssh debug is not supported by the {getattr(self._backend, 'name', '?')} agent backend"
        if self._busy >= self.slots:
            return f"agent has no free slot ({self.slots} jobs are running)"
        if self.environments is not None and message.environment not in self.environments:
            offered = ", ".join(sorted(self.environments)) or "none"
            return f"environment {message.environment!r} is not offered by this agent (offered: {offered})"
        return None

    def _job_ran(self, result: Any, job: _Job) -> None:
        if not isinstance(result, JobResult):
            self.log.error(
                "backend {kind} answered job {job_id} with {what!r}, not a JobResult",
                kind=getattr(self._backend, "name", "?"),
                job_id=job.job_id,
                what=type(result).__name__,
            )
            result = JobResult.crash(f"the agent backend returned an invalid result ({type(result).__name__})")
        self._finish(job, result)

    def _job_failed(self, failure: Failure, job: _Job) -> None:
        self.log.failure("job {job_id} failed in its backend", failure, job_id=job.job_id)
        err = failure.value
        self._finish(job, JobResult.crash(f"the agent could not run the job: {type(err).__name__}: {err}"))

    def _finish(self, job: _Job, result: JobResult) -> None:
        if job.done:
            return  # already answered (kill grace expired)
        job.done = True
        if job.kill_call is not None and job.kill_call.active():
            job.kill_call.cancel()
        if self._jobs.get(job.job_id) is job:
            del self._jobs[job.job_id]
        if job.counted:
            self._busy -= 1
        if self._ssh is not None:
            self._ssh.job_ended(job.job_id)
        self._send_result(job.job_id, result)
        if not self._jobs:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                w.callback(None)

    def _kill(self, job: _Job, why: str) -> None:
        if job.kill_call is not None:
            return  # already being killed
        self.log.info("killing job {job_id}: {why}", job_id=job.job_id, why=why)
        job.kill_call = self._reactor.callLater(self._kill_grace, self._kill_overdue, job)
        try:
            self._backend.kill(job.job_id)
        except Exception:
            self.log.failure("backend failed to kill job {job_id}", job_id=job.job_id)

    def _kill_overdue(self, job: _Job) -> None:
        self.log.error(
            "job {job_id} did not end {grace} s after it was killed: answering 'killed' anyway",
            job_id=job.job_id,
            grace=self._kill_grace,
        )
        self._finish(job, JobResult.killed("the job was killed (its end was not confirmed in time)"))

    def _orphan_jobs(self, why: str) -> None:
        """The backend has re-queued our running jobs: free their slots and kill them."""
        for job in list(self._jobs.values()):
            if job.counted:
                self.log.info("job {job_id} is orphaned: {why}", job_id=job.job_id, why=why)
                job.counted = False
                self._busy -= 1
            self._kill(job, why)

    def _when_idle(self, timeout: float) -> Deferred:
        """A Deferred that fires when no job is left, or after ``timeout``."""
        d: Deferred = Deferred()
        if not self._jobs:
            d.callback(None)
            return d
        self._idle_waiters.append(d)

        def give_up() -> None:
            if not d.called:
                self.log.warn("{n} jobs still running after {t} s", n=len(self._jobs), t=timeout)
                self._idle_waiters.remove(d)
                d.callback(None)

        call = self._reactor.callLater(timeout, give_up)

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        return d.addBoth(done)

    # -- sending --------------------------------------------------------------

    def _send(self, message: Any) -> None:
        peer = self._peer
        if peer is None:
            self.log.info("no backend link: dropping {msgtype}", msgtype=type(message).msgtype)
            return
        peer.send(message)

    def _bounded(self, job_id: BackendJobId, result: JobResult) -> JobResult:
        """``result`` within :attr:`_result_limits`."""
        limits = self._result_limits
        out, err = result.stdout, result.stderr
        if out is not None and len(out) > limits.max_stdout // 4:  # a character is at most 4 bytes
            out = cap_text(out, limits.max_stdout)
        if err is not None and len(err) > limits.max_stderr // 4:
            err = cap_text(err, limits.max_stderr)
        archive = result.archive
        if archive is not None and len(archive) > limits.max_archive:
            text = f"the job's archive is too large: {len(archive)} bytes > limit {limits.max_archive}"
            self.log.warn("job {job_id}: {text}", job_id=job_id, text=text)
            return JobResult("error", text, stdout=out, stderr=err)
        if out is not result.stdout or err is not result.stderr:
            result = replace(result, stdout=out, stderr=err)
        return result

    def _send_result(self, job_id: BackendJobId, result: JobResult) -> None:
        result = self._bounded(job_id, result)
        size = sum(len(x) for x in (result.archive, result.stdout, result.stderr, result.text) if x)
        if size > self._limits.max_frame * 0.9:
            result = JobResult.crash(f"the job's result is too large to be sent ({size} bytes)")
        try:
            self._send(result.to_message(job_id))
        except Exception as e:
            self.log.failure("cannot send the result of job {job_id}", job_id=job_id)
            self._send(JobResult.crash(f"the job's result could not be sent: {e}").to_message(job_id))

    # -- hello and heartbeat --------------------------------------------------

    def _say_hello(self, peer: IPeer) -> None:
        d = maybeDeferred(self._backend.environments)

        def hello(environments: Dict[str, Dict[str, Any]]) -> None:
            if peer is not self._peer:
                return  # a newer link will say its own hello
            self.environments = dict(environments)
            self._hello_error = None
            peer.send(AgentHello(self.friendly_name, self.slots, self.environments))
            # The protocol has no answer to a hello: the backend's first message
            # (a ping, a job) says it registered us (_answered logs it).
            self._unanswered = peer
            self.log.debug("hello sent to {peer}", peer=peer.description)

        def failed(failure: Failure) -> None:
            error = failure.getErrorMessage()
            if error != self._hello_error:  # one line per new cause, not one traceback per retry
                self._hello_error = error
                self.log.warn(
                    "cannot list the environments ({error}); not registering with the backend until they "
                    "can be listed (retrying every {t:g} s)",
                    error=error,
                    t=self._hello_retry,
                )
                if not (getattr(failure.value, "unavailable", False) or failure.check(OSError)):
                    # not a known "engine unreachable": the traceback may tell a bug (once per cause)
                    self.log.failure("the environments could not be listed", failure, level=LogLevel.debug)
            if peer is self._peer and self.running:
                self._reactor.callLater(self._hello_retry, self._retry_hello, peer)

        d.addCallback(hello)
        d.addErrback(failed)

    def _answered(self, peer: IPeer) -> None:
        """A message from the backend after our hello: it has registered us."""
        if self._unanswered is None or peer is not self._unanswered:
            return
        self._unanswered = None
        self.log.info(
            "registered with the backend {peer}: {slots} slots, environments {envs}",
            peer=peer.description,
            slots=self.slots,
            envs=sorted(self.environments or ()),
        )

    def _retry_hello(self, peer: IPeer) -> None:
        if peer is self._peer:
            self._say_hello(peer)

    def _arm_silence(self) -> None:
        if self._silence_call is not None and self._silence_call.active():
            self._silence_call.reset(self._silence_timeout)
        else:
            self._silence_call = self._reactor.callLater(self._silence_timeout, self._silent)

    def _heard(self) -> None:
        if self._connection is not None and self.running:
            self._arm_silence()

    def _silent(self) -> None:
        self._silence_call = None
        if self._connection is None or not self.running:
            return
        self.log.warn(
            "no message from the backend for {t} s{unanswered}: reconnecting to {endpoint}",
            t=self._silence_timeout,
            unanswered=" (no answer to our hello)" if self._unanswered is not None else "",
            endpoint=self.endpoint,
        )
        self._arm_silence()
        self._connection.reconnect()
