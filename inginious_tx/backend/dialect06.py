"""The INGInious 0.6 dialect at the backend's edge: 0.6 messages in, core calls out, and back.

Incoming: :class:`ClientHandler06` and :class:`AgentHandler06` provide the
backend's role interfaces (methods named after the 0.6 msgtypes) and turn
each message into one call of the core.  Outgoing: :class:`Dialect06`
builds the 0.6 message for what the core says.  A 0.9 job going to a 0.6
agent is translated here (PROTOCOL-0.9.md section 4): its limits come from
``environment_parameters`` with the 0.9 docker agent's defaults, and the
agent knows it by the 0.6 pair ``(client address, job id)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from zope.interface import implementer

from ..interfaces import IBackendAgentHandler, IBackendClientHandler, IPeer, IRejectionObserver
from ..messages import v06
from .adapter import DOCKER, DialectAdapter, Encoded, Relays, cached_rows, optional_int, queue_bytes, relay, waiting_row
from .handlers import AgentHandlerBase, ClientHandlerBase
from .sizes import packed_size

if TYPE_CHECKING:
    from .lifecycle import Backend

__all__ = ["Dialect06", "ClientHandler06", "AgentHandler06"]

_BackendJobDone = v06.BackendJobDone
_BackendNewJob = v06.BackendNewJob
_BackendJobStarted = v06.BackendJobStarted
# Builders that skip re-checking fields checked when decoded (see adapter.relay):
# a 0.6 client's job id, an agent's result of either dialect, a 0.6 job's fields
# (its agent-side id is the core's (address, job id) pair, checked below).
_relays = Relays(v06)
_new_job = relay(_BackendNewJob, {**v06.ClientNewJob.field_types, "job_id": _BackendNewJob.field_types["job_id"]})
#: The 0.9 docker agent's defaults (PROTOCOL-0.9.md section 3).
_DEFAULT_TIME, _DEFAULT_MEMORY = 30, 200


class Dialect06(DialectAdapter):
    """Builds the 0.6 messages the core sends."""

    name = "0.6"
    ping = v06.Ping()
    pong = v06.Pong()
    unknown = v06.Unknown()

    def environments(self, offered: Dict[str, Tuple[str, ...]]) -> Any:
        # 0.6 peers know only docker environments, by name.
        return v06.BackendUpdateContainers(offered.get(DOCKER, ()))

    def job_started(self, job: Any) -> Any:
        return _relays.started(job.job_id)

    def job_done(self, job: Any, m: Any) -> Any:
        return _relays.done(job.job_id, m)

    def job_result(self, job_id: str, kind: str, text: str, inputdata: Any) -> Any:
        return _BackendJobDone(job_id, (kind, text), 0.0, {}, {}, {}, "", None, "", "")

    def ssh_debug(self, job: Any, host: str, port: int, user: str, password: str) -> Any:
        return v06.BackendJobSSHDebug(job.job_id, host, port, password)  # 0.6 has no user

    def waiting_row(self, job: Any) -> Tuple[bytes, int]:
        return waiting_row(job.job_id, f"{job.course_id}/{job.task_id}", job.launcher, job.time_limit)

    def waiting_rows(self, jobs: List[Any]) -> Tuple[List[bytes], List[int]]:
        """Every job's encoded row (made once in its life) and its "yours" offset."""
        return cached_rows(jobs, "row06", "rel06", self.waiting_row)

    def queue(self, client: Any, running: List[Tuple[Any, str]], section: bytes, n: int, own: List[int]) -> Any:
        rows = []
        for job, agent_name in running:
            started = int(job.started_at)
            rows.append(
                (
                    job.job_id,
                    job.client is client,
                    agent_name,
                    f"{job.course_id}/{job.task_id}",
                    job.launcher,
                    started,
                    started + job.time_limit if job.time_limit > 0 else -1,
                )
            )
        return Encoded(
            "backend_get_queue", "0.6", queue_bytes(rows, section, n, own, "type", "backend_get_queue")
        )

    def agent_job_id(self, job: Any) -> Any:
        return job.key

    def new_job(self, job: Any) -> Any:
        m = job.message
        if job.origin is self:
            key = job.key
            return (_new_job if type(key[0]) is bytes else _BackendNewJob)(
                key,
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
        # A 0.9 job (its environment is of type docker: 0.6 agents offer nothing else).
        parameters = m.environment_parameters
        limits = parameters.get("limits")
        if type(limits) is not dict:
            limits = {}
        time = optional_int(limits.get("time")) or _DEFAULT_TIME
        hard = optional_int(limits.get("hard_time")) or 3 * time
        memory = optional_int(limits.get("memory")) or _DEFAULT_MEMORY
        run_cmd = parameters.get("run_cmd")
        return _BackendNewJob(
            job.key,
            m.course_id,
            m.task_id,
            m.inputdata,
            m.environment,
            parameters.get("network_grading") is True,
            time,
            hard,
            memory,
            m.debug,
            run_cmd if type(run_cmd) is str and run_cmd else None,
        )

    def kill_job(self, job: Any) -> Any:
        return v06.BackendKillJob(job.key)


@implementer(IBackendClientHandler, IRejectionObserver)
class ClientHandler06(ClientHandlerBase):
    """0.6 client messages -> core calls (methods named by msgtype).

    Sizes are measured here (:func:`~.sizes.packed_size`), and a rejected
    frame's job id is taken from the decode error, so that the core neither
    encodes nor decodes.
    """

    def __init__(self, backend: Backend, dialect: Dialect06) -> None:
        super().__init__(backend, dialect)
        self.peer_connected = backend.client_connected
        self.peer_disconnected = backend.client_disconnected

    def client_new_job(self, peer: IPeer, m: v06.ClientNewJob) -> None:
        self._submit(peer, self._dialect, m, (DOCKER, m.environment), m.time_limit, packed_size(m.inputdata))


@implementer(IBackendAgentHandler)
class AgentHandler06(AgentHandlerBase):
    """0.6 agent messages -> core calls (methods named by msgtype)."""

    def __init__(self, backend: Backend, dialect: Dialect06) -> None:
        super().__init__(backend, dialect)
        self.peer_connected = backend.agent_connected
        self.peer_disconnected = backend.agent_disconnected

    def agent_hello(self, peer: IPeer, message: v06.AgentHello) -> None:
        environments = frozenset((DOCKER, name) for name in message.available_containers)
        self._backend.agent_hello(peer, self._dialect, message.friendly_name, message.available_job_slots, environments)

    def agent_job_ssh_debug(self, peer: IPeer, m: v06.AgentJobSSHDebug) -> None:
        self._backend.agent_job_ssh_debug(peer, self._dialect, m, m.host, m.port, "worker", m.password)
