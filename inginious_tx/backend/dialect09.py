"""The INGInious 0.9 dialect (0.7 to 0.9.x) at the backend's edge.

Incoming: :class:`ClientHandler09` and :class:`AgentHandler09` turn 0.9
messages (keyed by class, as :mod:`.edge` routes them) into core calls.
Outgoing: :class:`Dialect09` builds 0.9 messages.  What differs from 0.6
(PROTOCOL-0.9.md sections 3 and 4): environments are ``(type, name)``;
clients learn them as ``{type: [names]}``; job ids are one global namespace
of strings; the job's ``inputdata["@state"]`` comes back whenever the
backend answers a job itself and with a kill sent to an agent; queue rows
end with ``max_time``.  A 0.6 job going to a 0.9 agent gets its limits as
``environment_parameters``, no task problems, and a fresh string id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from zope.interface import implementer

from ..interfaces import IPeer, IRejectionObserver
from ..messages import v09
from .adapter import (
    DOCKER,
    DialectAdapter,
    Encoded,
    Relays,
    cached_rows,
    optional_int,
    queue_bytes,
    relay,
    state_of,
    waiting_row,
)
from .handlers import AgentHandlerBase, ClientHandlerBase
from .sizes import packed_size

if TYPE_CHECKING:
    from .lifecycle import Backend

__all__ = ["Dialect09", "ClientHandler09", "AgentHandler09", "max_time"]

_BackendJobDone = v09.BackendJobDone
_BackendNewJob = v09.BackendNewJob
_BackendJobStarted = v09.BackendJobStarted
# Builders that skip re-checking fields checked when decoded (see adapter.relay):
# a 0.9 client's job id, an agent's result of either dialect, a 0.9 job's fields.
_relays = Relays(v09)
_new_job = relay(_BackendNewJob, v09.ClientNewJob.field_types)


def max_time(parameters: Any) -> int:
    """A 0.9 job's ``max_time`` (queue rows): ``limits.time``, or -1 when absent."""
    limits = parameters.get("limits") if type(parameters) is dict else None
    value = optional_int(limits.get("time")) if type(limits) is dict else None
    return value if value is not None else -1


class Dialect09(DialectAdapter):
    """Builds the 0.9 messages the core sends."""

    name = "0.9"
    ping = v09.Ping()
    pong = v09.Pong()
    unknown = v09.Unknown()

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def environments(self, offered: Dict[str, Tuple[str, ...]]) -> Any:
        return v09.BackendUpdateEnvironments({kind: list(names) for kind, names in offered.items()})

    def job_started(self, job: Any) -> Any:
        return _relays.started(job.job_id)

    def job_done(self, job: Any, m: Any) -> Any:
        return _relays.done(job.job_id, m)

    def job_result(self, job_id: str, kind: str, text: str, inputdata: Any) -> Any:
        return _BackendJobDone(job_id, (kind, text), 0.0, {}, {}, {}, state_of(inputdata), None, "", "")

    def ssh_debug(self, job: Any, host: str, port: int, user: str, password: str) -> Any:
        return v09.BackendJobSSHDebug(job.job_id, host, port, user, password)

    def waiting_row(self, job: Any) -> Tuple[bytes, int]:
        limit = job.time_limit if job.time_limit > 0 else -1
        return waiting_row(job.job_id, f"{job.course_id}/{job.task_id}", job.launcher, limit)

    def waiting_rows(self, jobs: List[Any]) -> Tuple[List[bytes], List[int]]:
        """Every job's encoded row (made once in its life) and its "yours" offset."""
        return cached_rows(jobs, "row09", "rel09", self.waiting_row)

    def queue(self, client: Any, running: List[Tuple[Any, str]], section: bytes, n: int, own: List[int]) -> Any:
        rows = [
            (
                job.job_id,
                job.client is client,
                agent_name,
                f"{job.course_id}/{job.task_id}",
                job.launcher,
                int(job.started_at),
                job.time_limit if job.time_limit > 0 else -1,
            )
            for job, agent_name in running
        ]
        return Encoded("BackendGetQueue", "0.9", queue_bytes(rows, section, n, own, "@type", "BackendGetQueue"))

    def agent_job_id(self, job: Any) -> Any:
        if job.origin is self:
            return job.job_id
        return self._backend.global_id(job)

    def new_job(self, job: Any) -> Any:
        m = job.message
        if job.origin is self:
            return _new_job(
                job.job_id,
                m.course_id,
                m.task_id,
                m.task_problems,
                m.inputdata,
                m.environment_type,
                m.environment,
                m.environment_parameters,
                m.debug,
            )
        # A 0.6 job (PROTOCOL-0.9.md section 4, after INGInious' own task migration).
        time = m.time_limit
        parameters = {
            "limits": {
                "time": time,
                "hard_time": m.hard_time_limit if m.hard_time_limit is not None else 3 * time,
                "memory": m.mem_limit,
            },
            "run_cmd": m.run_cmd or "",
            "network_grading": bool(m.enable_network),
        }
        return _BackendNewJob(
            job.agent_id, m.course_id, m.task_id, {}, m.inputdata, DOCKER, m.environment, parameters, m.debug
        )

    def kill_job(self, job: Any) -> Any:
        return v09.BackendKillJob(job.agent_id, state_of(job.message.inputdata))


@implementer(IRejectionObserver)
class ClientHandler09(ClientHandlerBase):
    """0.9 client messages -> core calls."""

    def client_new_job(self, peer: IPeer, m: v09.ClientNewJob) -> None:
        self._submit(
            peer,
            self._dialect,
            m,
            (m.environment_type, m.environment),
            max_time(m.environment_parameters),
            packed_size(m.inputdata),
        )


class AgentHandler09(AgentHandlerBase):
    """0.9 agent messages -> core calls."""

    def agent_hello(self, peer: IPeer, message: v09.AgentHello) -> None:
        environments = frozenset(
            (kind, name) for kind, names in message.available_environments.items() for name in names
        )
        self._backend.agent_hello(peer, self._dialect, message.friendly_name, message.available_job_slots, environments)

    def agent_job_ssh_debug(self, peer: IPeer, m: v09.AgentJobSSHDebug) -> None:
        self._backend.agent_job_ssh_debug(peer, self._dialect, m, m.host, m.port, m.user, m.password)
