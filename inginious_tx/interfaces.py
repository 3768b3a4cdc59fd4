"""Every plugin point and role of inginious-tx, as zope interfaces.

Transports move messages; handlers (one interface per role) react to them;
scheduling policies order waiting jobs; agent backends run jobs.  Each piece
sees only the interfaces here, so any of them can be replaced by a plugin.

Handler roles name their methods after the ``msgtype`` of the message they
handle (``client_hello(peer, message)``), so that :mod:`inginious_tx.dispatch`
can build the message-class -> method table from the interface alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Collection, Dict, List, Optional

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # the messages and transport packages import this module
    from ._reactor import CommonReactor
    from .messages import BackendJobId, BackendNewJob, MessageError
    from .transport import Limits

# ---------------------------------------------------------------------------
# Transports
# ---------------------------------------------------------------------------


class IPeer(Interface):
    """The other end of a conversation: a connection, or a ZeroMQ identity.

    Peers compare equal (and hash equal) when they are the same remote end
    on the same listener, so they can be used as dictionary keys.
    """

    address = Attribute(
        "bytes: the peer's address as the backend uses it in job ids "
        "(the ZeroMQ identity, or a unique name for a stream connection)."
    )
    description = Attribute("str: a human-readable name for logs, e.g. 'tcp:127.0.0.1:50312'.")

    def send(message: Any) -> None:
        """Send one message to this peer.

        Never raises for a peer that went away: the message is dropped (and
        logged at debug level).  Raises :class:`inginious_tx.messages.MessageError`
        only if the message cannot be encoded.
        """

    def disconnect(reason: str) -> None:
        """Forget this peer; close its connection if it has one.

        ``reason`` (str) is logged.  Idempotent.
        """

    def accepted() -> None:
        """The role has accepted this peer's hello (ClientHello / AgentHello).

        Until then the transport treats the peer as a stranger: a small frame
        limit (``Limits.max_hello_frame``), a deadline to say hello
        (``Limits.hello_timeout``), and (stream listeners) a place counted
        against ``Limits.max_pending``.  Called by the backend core once the
        hello is accepted; idempotent and cheap.
        """


class IMessageSink(Interface):
    """What a transport delivers to: arrivals, messages and departures of peers."""

    def peer_connected(peer: IPeer) -> None:
        """A new peer can be talked to (a stream connection was made, or a
        connecting transport is ready to send).  For a ZeroMQ listener this
        fires on the first message of a new session (a routing id on a new
        connection), just before it."""

    def message_received(peer: IPeer, message: Any) -> None:
        """A decoded, validated message arrived from ``peer``."""

    def peer_disconnected(peer: IPeer, reason: str) -> None:
        """``peer`` is gone for certain (its stream connection closed).

        ZeroMQ listeners call this only when they know a session is over
        (its routing id is used by a new connection, a send found it
        unconnected, or it never said hello in time): heartbeats decide the rest."""


class IRejectionObserver(Interface):
    """Optional, for sinks and handlers: hear of frames that did not decode.

    A transport that keeps the peer after a bad frame (ZeroMQ: one socket
    serves every peer; stream: a peer whose hello was accepted, the framing
    being intact) tells a sink that provides this, after logging, so
    that the role can answer it (e.g. the backend answers a malformed job
    with a ``crash`` that says what was wrong, instead of silence).
    """

    def message_rejected(peer: IPeer, error: MessageError, payload: bytes) -> None:
        """``payload`` (bytes) from ``peer`` raised ``error`` (a MessageError)."""


class IListener(Interface):
    """A listening endpoint, as returned by :meth:`ITransport.listen`."""

    description = Attribute("str: what is being listened on, for logs")

    def stop() -> Deferred[None]:
        """Stop listening and drop every peer; returns a Deferred."""


class IConnection(Interface):
    """The connecting side's link to a server, as returned by :meth:`ITransport.connect`.

    It keeps reconnecting (with backoff for stream transports; ZeroMQ does it
    by itself) until :meth:`stop` is called.  Every time a (new) link is up,
    the sink's ``peer_connected`` is called with :attr:`peer`.
    """

    peer = Attribute("IPeer: the server; send through it")

    def reconnect() -> None:
        """Drop the current link and make a new one (e.g. after silence)."""

    def stop() -> Deferred[None]:
        """Disconnect for good; returns a Deferred that fires once what was
        sent has been written out (bounded: a transport may give up after a
        grace period, or at once when it knows nobody is listening)."""


class ITransport(Interface):
    """A transport plugin: knows some endpoint strings, listens and connects.

    Registered under the ``inginious_tx.transports`` entry point group; the
    first transport whose :meth:`handles` accepts an endpoint string is used.
    """

    name = Attribute("str: the plugin's name, e.g. 'zmq' or 'stream'")

    def handles(endpoint: str) -> bool:
        """True if this transport understands the endpoint string."""

    def listen(reactor: CommonReactor, endpoint: str, sink: IMessageSink, limits: Limits) -> Deferred[IListener]:
        """Listen on ``endpoint``; deliver to ``sink`` (an :class:`IMessageSink`).

        ``limits`` is a :class:`inginious_tx.transport.Limits`.
        Returns a Deferred firing with an :class:`IListener`.  ``reactor``
        gives the timers and what the endpoint needs: TCP, processes and file
        descriptors are in ``CommonReactor``; UNIX or SSL endpoints adapt it.
        """

    def connect(reactor: CommonReactor, endpoint: str, sink: IMessageSink, limits: Limits) -> IConnection:
        """Connect to ``endpoint``; returns an :class:`IConnection` at once."""


class IEndpointCheck(Interface):
    """A transport that can check an endpoint string before it is used (optional, beside :class:`ITransport`).

    Commands check their endpoint options when they parse them, so that a
    bad string is a usage error naming the option, not a failure once running.
    """

    def check(endpoint: str, listening: bool) -> None:
        """Raise ValueError saying what is wrong with ``endpoint`` (to listen on, or to connect to)."""


# ---------------------------------------------------------------------------
# Handler roles (methods are named after the msgtype they handle)
# ---------------------------------------------------------------------------


class IPeerObserver(Interface):
    """Arrivals and departures, for every role."""

    def peer_connected(peer: IPeer) -> None:
        """See :meth:`IMessageSink.peer_connected`."""

    def peer_disconnected(peer: IPeer, reason: str) -> None:
        """See :meth:`IMessageSink.peer_disconnected`."""


class IBackendClientHandler(IPeerObserver):
    """What the backend handles from clients."""

    def client_hello(peer: IPeer, message: Any) -> None:
        """Register ``peer`` as a client."""

    def client_new_job(peer: IPeer, message: Any) -> None:
        """Queue a job."""

    def client_kill_job(peer: IPeer, message: Any) -> None:
        """Kill a waiting or running job."""

    def client_get_queue(peer: IPeer, message: Any) -> None:
        """Answer with a queue snapshot."""

    def ping(peer: IPeer, message: Any) -> None:
        """Answer with Pong."""


class IBackendAgentHandler(IPeerObserver):
    """What the backend handles from agents."""

    def agent_hello(peer: IPeer, message: Any) -> None:
        """Register (or re-register) an agent."""

    def agent_job_started(peer: IPeer, message: Any) -> None:
        """Tell the job's client."""

    def agent_job_done(peer: IPeer, message: Any) -> None:
        """Answer the job's client, free the slot."""

    def agent_job_ssh_debug(peer: IPeer, message: Any) -> None:
        """Forward SSH details to the client."""

    def pong(peer: IPeer, message: Any) -> None:
        """The agent is alive."""


class IAgentHandler(IPeerObserver):
    """What an agent handles from the backend."""

    def backend_new_job(peer: IPeer, message: Any) -> None:
        """Run a job."""

    def backend_kill_job(peer: IPeer, message: Any) -> None:
        """Kill a job."""

    def ping(peer: IPeer, message: Any) -> None:
        """Answer with Pong."""


class IClientHandler(IPeerObserver):
    """What a client handles from the backend."""

    def backend_update_containers(peer: IPeer, message: Any) -> None:
        """The available environments changed."""

    def backend_job_started(peer: IPeer, message: Any) -> None:
        """A job started."""

    def backend_job_done(peer: IPeer, message: Any) -> None:
        """A job's result."""

    def backend_job_ssh_debug(peer: IPeer, message: Any) -> None:
        """SSH details of a debug job."""

    def backend_get_queue(peer: IPeer, message: Any) -> None:
        """A queue snapshot."""

    def pong(peer: IPeer, message: Any) -> None:
        """Heartbeat answer."""

    def unknown(peer: IPeer, message: Any) -> None:
        """The backend does not know us: say hello again."""


# ---------------------------------------------------------------------------
# Scheduling policies
# ---------------------------------------------------------------------------


class IWaitingJob(Interface):
    """What a policy may read of a waiting job (the backend owns the object)."""

    key = Attribute("hashable: unique id of the job in the backend, (client address, client job id)")
    environment = Attribute("(type, name): a pair of str; a 0.6 environment NAME is ('docker', NAME)")
    course_id = Attribute("str")
    task_id = Attribute("str")
    priority = Attribute("int: lower runs first")
    time_limit = Attribute("int: seconds")
    submitted_at = Attribute("float: reactor time of submission")
    sequence = Attribute("int: arrival order, strictly increasing")
    launcher = Attribute("str: who submitted the job, as the client named it (a frontend, a user...)")
    retries = Attribute("int: how many times the job was queued again after losing its agent")


class IBackendJob(IWaitingJob):
    """A job as the backend shows it to :class:`IJobObserver` providers."""

    job_id = Attribute("str: the job's id as its client named it")
    client_name = Attribute("str: the name its client gave in its hello when it submitted the job")
    environment_type = Attribute("str: the type of its environment ('docker' for every 0.6 job)")


class IJobObserver(Interface):
    """Hears every job's transitions in the backend (logs, time series, audits).

    Register with ``Backend.add_observer``.  Methods are called synchronously
    on the reactor thread, so they must be cheap; an observer that raises is
    logged and does not disturb the backend.  ``job`` provides
    :class:`IBackendJob` and belongs to the backend: read it, keep no
    reference beyond the call.
    """

    def job_queued(job: IBackendJob) -> None:
        """``job`` was accepted (it waits, or is about to be sent to an agent)."""

    def job_refused(client_name: str, job_id: str, reason: str) -> None:
        """A job was answered ``crash`` at submission (queue full, bounds,
        duplicate id, invalid job, shutdown); it never got a :class:`IBackendJob`."""

    def job_started(job: IBackendJob, agent_name: str) -> None:
        """``job`` was sent to the agent ``agent_name``."""

    def job_requeued(job: IBackendJob, agent_name: str, reason: str) -> None:
        """``job``'s agent ``agent_name`` was lost (``reason``); it is queued again."""

    def job_finished(job: IBackendJob, kind: str, agent_name: Optional[str]) -> None:
        """``job`` ended: ``kind`` is its result type, or ``"dropped"`` when its
        client left first; ``agent_name`` is None if it never ran or its agent is gone."""


class ISchedulingPolicy(Interface):
    """Owns the order of waiting jobs.

    The backend calls :meth:`add` when a job starts waiting, :meth:`remove`
    when it stops waiting without being picked (killed, client gone), and
    :meth:`pop_next` when an agent slot is free.  Every call should cost
    O(log n) or better in the number of waiting jobs.  Registered under the
    ``inginious_tx.policies`` entry point group, chosen by name.
    """

    name = Attribute("str: the name used with --policy")

    def add(job: IWaitingJob) -> None:
        """``job`` (an :class:`IWaitingJob`) starts waiting."""

    def remove(job: IWaitingJob) -> None:
        """``job`` stops waiting without having been picked."""

    def pop_next(environments: Collection[Any]) -> Optional[Any]:
        """The next job to run among those whose environment is in
        ``environments`` (a collection of ``(type, name)`` pairs), removed
        from the policy; ``None`` if there is none.  It is one of the objects
        given to :meth:`add` (typed ``Any``: the backend gets its own job class back)."""

    def waiting(environment: Any) -> int:
        """How many jobs wait for ``environment`` (a ``(type, name)`` pair; the
        environments are opaque keys to a policy, hence ``Any``)."""

    def ordered() -> List[Any]:
        """All waiting jobs in the order they would run (for queue snapshots;
        may cost O(n log n))."""

    def __len__() -> int:
        """Number of waiting jobs."""


# ---------------------------------------------------------------------------
# Agent backends
# ---------------------------------------------------------------------------


class IJobResult(Interface):
    """The outcome of a job, as an agent backend reports it
    (see :class:`inginious_tx.agent.JobResult`)."""


class IAgentBackend(Interface):
    """What runs jobs for an agent: mock, local subprocess, Docker, ...

    Registered under the ``inginious_tx.agent_backends`` entry point group
    and chosen by name with ``--kind``.
    """

    name = Attribute("str: the name used with --kind")

    def environments() -> Deferred[Dict[str, Dict[str, Any]]]:
        """A Deferred firing with ``{name: {"id": str, "created": int, "ports": [int]}}``."""

    def run(job: BackendNewJob) -> Deferred[Any]:
        """Run ``job`` (a :class:`inginious_tx.messages.BackendNewJob`).

        Returns a Deferred firing with a :class:`inginious_tx.agent.JobResult`.
        May fail; the agent turns a failure into a ``crash`` result.
        """

    def kill(job_id: BackendJobId) -> None:
        """Stop the job ``job_id`` (a BackendJobId); its :meth:`run` Deferred
        then fires with a ``killed`` result.  Unknown ids are ignored."""

    def close() -> Deferred[Any]:
        """Release resources at shutdown; returns a Deferred."""


class ITaskProblemsBackend(IAgentBackend):
    """An agent backend that grades from the problems a 0.9 job carries
    (``task_problems``), not from a task folder: the ``mcq`` kind.

    The agent hands it every job through :meth:`run_with_problems` instead of
    :meth:`IAgentBackend.run`.
    """

    def run_with_problems(job: BackendNewJob, task_problems: Optional[Dict[str, Any]]) -> Deferred[Any]:
        """Grade ``job`` against ``task_problems`` (None when the backend spoke
        the 0.6 dialect, which has no problems); a Deferred of a JobResult."""
