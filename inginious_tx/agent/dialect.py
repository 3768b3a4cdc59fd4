"""The agent's edge between the wire dialect and its 0.6 model.

:class:`~inginious_tx.agent.core.Agent` and every
:class:`~inginious_tx.interfaces.IAgentBackend` work with 0.6 messages
(``BackendNewJob`` with limits as fields, job ids ``(address, id)``).  Towards
an INGInious 0.9 backend, :class:`Edge09` sits between the transport and the
agent: it turns each 0.9 message into the 0.6 one the agent expects, and each
message the agent sends into 0.9, so that agent backends (third-party ones
included) need not know which dialect is spoken.

What 0.9 adds is handled here: environments are announced under one
environment type (``docker`` for the docker kind, see
:func:`environment_type_for`); a job of another type is answered ``crash``; a
job's ``@state`` comes back with a ``killed`` or ``crash`` result; a kill for a
job this agent does not hold is answered ``killed`` at once (as the 0.9
agents do).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from zope.interface import implementer

from .._edge import DialectEdge
from ..interfaces import IMessageSink, IPeer
from ..messages import DIALECTS, v06, v09
from ..messages.convert import limits_from_parameters

__all__ = ["Edge06", "Edge09", "edge_for", "environment_type_for", "JOB_ADDRESS_09"]

#: The address part of the 0.6-style id an agent gives a 0.9 job internally.
JOB_ADDRESS_09 = b"inginious-0.9"


def environment_type_for(kind: str) -> str:
    """The 0.9 environment type an agent of ``kind`` announces.

    ``docker`` for the docker kind (what INGInious' own docker agent
    announces, so that the stock frontends' ``docker`` tasks run there);
    any other kind announces its own name (``local``, ``mock``, ...).
    """
    return kind or "docker"


def _job_state(inputdata: Any) -> str:
    state = inputdata.get("@state", "") if isinstance(inputdata, dict) else ""
    return state if type(state) is str else ""


@implementer(IMessageSink)
class Edge06(DialectEdge):
    """The 0.6 edge: messages pass unchanged; a 0.9 message is a logged protocol error."""

    dialect = "0.6"
    speaker = "an agent"

    def hint(self, other: str) -> str:
        return " (is it an INGInious 0.7+ backend? start the agent with --dialect 0.9)"

    def message_received(self, peer: IPeer, message: Any) -> None:
        if self.speaks(peer, message):
            self._inner.message_received(peer, message)


@implementer(IPeer)
class _Peer09:
    """The backend as the agent sees it: takes 0.6 messages, sends 0.9 ones."""

    def __init__(self, peer: IPeer, edge: Edge09) -> None:
        self._peer = peer
        self._edge = edge

    @property
    def address(self) -> bytes:
        address: bytes = self._peer.address
        return address

    @property
    def description(self) -> str:
        description: str = self._peer.description
        return description

    def send(self, message: Any) -> None:
        translated = self._edge.outgoing(message)
        if translated is not None:
            self._peer.send(translated)

    def disconnect(self, reason: str) -> None:
        self._peer.disconnect(reason)

    def __getattr__(self, name: str) -> Any:
        # accepted() and whatever else a transport's peer offers
        return getattr(self._peer, name)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, _Peer09):
            return bool(self._peer == other._peer)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._peer)


@implementer(IMessageSink)
class Edge09(DialectEdge):
    """The 0.9 edge in front of an agent (see the module docstring).

    ``inner`` is the agent's 0.6 sink (its dispatcher); ``holds(job_id)``
    says whether the agent runs a job (0.6-style id); ``environment_type``
    is the type every environment is announced under.
    """

    dialect = "0.9"
    speaker = "an agent"

    def __init__(self, inner: Any, holds: Callable[[Any], bool], environment_type: str) -> None:
        super().__init__(inner)
        self._holds = holds
        self.environment_type = environment_type
        self._peers: Dict[IPeer, _Peer09] = {}
        #: ``@state`` of every job handed to the agent and not answered yet.
        self._states: Dict[str, str] = {}
        #: Whether to keep each job's ``task_problems`` for :meth:`take_problems`
        #: (set by the agent when its backend grades from them: the mcq kind).
        self.keep_problems = False
        self._problems: Dict[Any, Dict[str, Any]] = {}

    def take_problems(self, job_id: Any) -> Optional[Dict[str, Any]]:
        """The ``task_problems`` of the job ``job_id`` (0.6-style id), once; None if not kept."""
        return self._problems.pop(job_id, None)

    def hint(self, other: str) -> str:
        return " (is it an INGInious 0.6 backend? start the agent with --dialect 0.6)"

    def wrap(self, peer: IPeer) -> _Peer09:
        wrapped = self._peers.get(peer)
        if wrapped is None:
            wrapped = self._peers[peer] = _Peer09(peer, self)
        return wrapped

    # -- from the transport --------------------------------------------------

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        wrapped = self._peers.pop(peer, None) or _Peer09(peer, self)
        self._inner.peer_disconnected(wrapped, reason)

    def message_received(self, peer: IPeer, message: Any) -> None:
        if not self.speaks(peer, message):
            return
        wrapped = self.wrap(peer)
        handler = getattr(self, "_in_" + message.msgtype, None)
        if handler is None:
            # Backend-to-client or agent-to-backend messages: let the
            # dispatcher log them as unexpected, in 0.9 terms.
            self._inner.message_received(wrapped, message)
            return
        handler(wrapped, message)

    def _in_Ping(self, peer: _Peer09, message: Any) -> None:
        self._inner.message_received(peer, v06.Ping())

    def _in_BackendNewJob(self, peer: _Peer09, message: Any) -> None:
        state = _job_state(message.inputdata)
        if message.environment_type != self.environment_type:
            self.log.warn(
                "refusing job {job_id}: environment type {etype!r} is not offered (this agent offers {mine!r})",
                job_id=message.job_id,
                etype=message.environment_type,
                mine=self.environment_type,
            )
            peer._peer.send(
                _done(
                    message.job_id,
                    "crash",
                    f"environment {message.environment_type}/{message.environment} is not offered by this agent "
                    f"(it offers type {self.environment_type!r})",
                    state,
                )
            )
            return
        limits = limits_from_parameters(message.environment_parameters)
        job = v06.BackendNewJob(
            (JOB_ADDRESS_09, message.job_id),
            message.course_id,
            message.task_id,
            message.inputdata,
            message.environment,
            limits.enable_network,
            limits.time_limit,
            limits.hard_time_limit,
            limits.mem_limit,
            message.debug,
            limits.run_cmd,
        )
        if not self._holds(job.job_id):
            self._states[message.job_id] = state
        if self.keep_problems:
            # taken back at once by the agent (Agent.backend_new_job), whatever it decides
            self._problems[job.job_id] = message.task_problems
        self._inner.message_received(peer, job)

    def _in_BackendKillJob(self, peer: _Peer09, message: Any) -> None:
        job_id = (JOB_ADDRESS_09, message.job_id)
        if not self._holds(job_id):
            # What the 0.9 agents do: the backend waits for an answer.
            self.log.info("kill for job {job_id}, which is not running here: answered killed", job_id=message.job_id)
            peer._peer.send(_done(message.job_id, "killed", "the job was not running on this agent", message.state))
            return
        if message.state and not self._states.get(message.job_id):
            self._states[message.job_id] = message.state
        self._inner.message_received(peer, v06.BackendKillJob(job_id))

    # -- from the agent --------------------------------------------------------

    def outgoing(self, message: Any) -> Optional[Any]:
        """The 0.9 form of a 0.6 message the agent sends (None: nothing to send)."""
        convert = getattr(self, "_out_" + type(message).__name__, None)
        if convert is None or message.dialect != "0.6":
            self.log.error("cannot send {msgtype} in the 0.9 dialect: dropped", msgtype=type(message).msgtype)
            return None
        result: Any = convert(message)
        return result

    def _job_id(self, job_id: Any) -> str:
        text: str = job_id[1]
        return text

    def _out_Pong(self, message: Any) -> Any:
        return v09.Pong()

    def _out_AgentHello(self, message: Any) -> Any:
        runtime = "runc" if self.environment_type == "docker" else self.environment_type
        environments = {
            name: {"runtime": runtime, **info} if isinstance(info, dict) else {"runtime": runtime}
            for name, info in message.available_containers.items()
        }
        return v09.AgentHello(message.friendly_name, message.available_job_slots, {self.environment_type: environments})

    def _out_AgentJobStarted(self, message: Any) -> Any:
        return v09.AgentJobStarted(self._job_id(message.job_id))

    def _out_AgentJobSSHDebug(self, message: Any) -> Any:
        return v09.AgentJobSSHDebug(
            self._job_id(message.job_id), message.host, message.port, "worker", message.password
        )

    def _out_AgentJobDone(self, message: Any) -> Any:
        job_id = self._job_id(message.job_id)
        previous = self._states.pop(job_id, "")
        state = message.state
        if not state and message.result[0] in ("killed", "crash"):
            state = previous  # the student's state survives a kill or a crash
        return v09.AgentJobDone(
            job_id,
            message.result,
            message.grade,
            message.problems,
            message.tests,
            message.custom,
            state,
            message.archive,
            message.stdout,
            message.stderr,
        )


def _done(job_id: str, result: str, text: str, state: str) -> Any:
    return v09.AgentJobDone(job_id, (result, text), 0.0, {}, {}, {}, state, None, None, None)


def edge_for(dialect: str, inner: Any, holds: Callable[[Any], bool], environment_type: str) -> Any:
    """The sink an agent speaking ``dialect`` gives its transport."""
    if dialect == "0.6":
        return Edge06(inner)
    if dialect == "0.9":
        return Edge09(inner, holds, environment_type)
    raise ValueError(f"unknown dialect {dialect!r} (known: {', '.join(DIALECTS)})")
