"""The eighteen message types of the INGInious 0.9 protocol (0.7 to 0.9.x).

Each class is named as on the wire (``"@type"`` is the class name); fields are
encoded in the order the ``__init__`` assigns them, which is the order of
``PROTOCOL-0.9.md`` §2: do not reorder.  Job ids are plain strings in 0.9.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

from ._meta import MessageMeta

#: A job id in 0.9: one global namespace of strings (frontends use UUIDs).
JobId = str
#: A result or a per-problem feedback: (result type, text).
SPResult = Tuple[str, str]

# -- client -> backend -------------------------------------------------------


class ClientHello(metaclass=MessageMeta, dialect="0.9"):
    """A client registers with the backend; it must come first."""

    def __init__(self, name: str):
        self.name = name


class ClientNewJob(metaclass=MessageMeta, dialect="0.9"):
    """A client submits a job.

    The environment is the pair ``(environment_type, environment)``; limits
    and options are in ``environment_parameters`` (``{"limits": {"time",
    "hard_time", "memory"}, "run_cmd", "network_grading", ...}``).
    ``inputdata["@state"]`` is given back when the job is killed.
    """

    def __init__(
        self,
        job_id: JobId,
        priority: int,
        course_id: str,
        task_id: str,
        task_problems: Dict[str, Any],
        inputdata: Dict[str, Any],
        environment_type: str,
        environment: str,
        environment_parameters: Dict[str, Any],
        debug: Union[str, bool],
        launcher: str,
    ):
        self.job_id = job_id
        self.priority = priority
        self.course_id = course_id
        self.task_id = task_id
        self.task_problems = task_problems
        self.inputdata = inputdata
        self.environment_type = environment_type
        self.environment = environment
        self.environment_parameters = environment_parameters
        self.debug = debug
        self.launcher = launcher


class ClientKillJob(metaclass=MessageMeta, dialect="0.9"):
    """A client asks for a job to be stopped (any 0.9 client may ask)."""

    def __init__(self, job_id: JobId):
        self.job_id = job_id


class ClientGetQueue(metaclass=MessageMeta, dialect="0.9"):
    """A client asks for a snapshot of the running and waiting jobs."""

    def __init__(self) -> None:
        pass


# -- backend -> client -------------------------------------------------------


class BackendUpdateEnvironments(metaclass=MessageMeta, dialect="0.9"):
    """The environments that at least one live agent offers: type -> names."""

    def __init__(self, available_environments: Dict[str, List[str]]):
        self.available_environments = available_environments


class BackendJobStarted(metaclass=MessageMeta, dialect="0.9"):
    """An agent began running the client's job."""

    def __init__(self, job_id: JobId):
        self.job_id = job_id


class BackendJobDone(metaclass=MessageMeta, dialect="0.9"):
    """The one and only answer to a client's job."""

    def __init__(
        self,
        job_id: JobId,
        result: SPResult,
        grade: float,
        problems: Dict[str, SPResult],
        tests: Dict[str, Any],
        custom: Dict[str, Any],
        state: str,
        archive: Optional[bytes],
        stdout: Optional[str],
        stderr: Optional[str],
    ):
        self.job_id = job_id
        self.result = result
        self.grade = grade
        self.problems = problems
        self.tests = tests
        self.custom = custom
        self.state = state
        self.archive = archive
        self.stdout = stdout
        self.stderr = stderr


class BackendJobSSHDebug(metaclass=MessageMeta, dialect="0.9"):
    """Where to reach a job started with ``debug="ssh"``."""

    def __init__(self, job_id: JobId, host: str, port: int, user: str, password: str):
        self.job_id = job_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password


class BackendGetQueue(metaclass=MessageMeta, dialect="0.9"):
    """A queue snapshot.

    Running: ``(job_id, is_this_clients_job, agent_name, "course/task",
    launcher, started_at, max_time)``.  Waiting, in the order they will run:
    ``(job_id, is_this_clients_job, "course/task", launcher, max_time)``.
    ``started_at`` is UNIX seconds; ``max_time`` is the time limit in
    seconds, -1 when unknown.
    """

    def __init__(
        self,
        jobs_running: List[Tuple[JobId, bool, str, str, str, int, int]],
        jobs_waiting: List[Tuple[JobId, bool, str, str, int]],
    ):
        self.jobs_running = jobs_running
        self.jobs_waiting = jobs_waiting


# -- backend -> agent --------------------------------------------------------


class BackendNewJob(metaclass=MessageMeta, dialect="0.9"):
    """The backend hands a job to an agent."""

    def __init__(
        self,
        job_id: JobId,
        course_id: str,
        task_id: str,
        task_problems: Dict[str, Any],
        inputdata: Dict[str, Any],
        environment_type: str,
        environment: str,
        environment_parameters: Dict[str, Any],
        debug: Union[str, bool],
    ):
        self.job_id = job_id
        self.course_id = course_id
        self.task_id = task_id
        self.task_problems = task_problems
        self.inputdata = inputdata
        self.environment_type = environment_type
        self.environment = environment
        self.environment_parameters = environment_parameters
        self.debug = debug


class BackendKillJob(metaclass=MessageMeta, dialect="0.9"):
    """The backend asks an agent to stop a job; ``state`` is the job's ``@state``."""

    def __init__(self, job_id: JobId, state: str):
        self.job_id = job_id
        self.state = state


# -- agent -> backend --------------------------------------------------------


class AgentHello(metaclass=MessageMeta, dialect="0.9"):
    """An agent registers its slots and environments.

    ``available_environments`` maps an environment type to a map of names
    to ``{"id", "created", "ports", "runtime"}``.
    """

    def __init__(
        self,
        friendly_name: str,
        available_job_slots: int,
        available_environments: Dict[str, Dict[str, Dict[str, Any]]],
    ):
        self.friendly_name = friendly_name
        self.available_job_slots = available_job_slots
        self.available_environments = available_environments


class AgentJobStarted(metaclass=MessageMeta, dialect="0.9"):
    """The agent began running a job."""

    def __init__(self, job_id: JobId):
        self.job_id = job_id


class AgentJobDone(metaclass=MessageMeta, dialect="0.9"):
    """The agent's one answer to a job (same fields as :class:`BackendJobDone`)."""

    def __init__(
        self,
        job_id: JobId,
        result: SPResult,
        grade: float,
        problems: Dict[str, SPResult],
        tests: Dict[str, Any],
        custom: Dict[str, Any],
        state: str,
        archive: Optional[bytes],
        stdout: Optional[str],
        stderr: Optional[str],
    ):
        self.job_id = job_id
        self.result = result
        self.grade = grade
        self.problems = problems
        self.tests = tests
        self.custom = custom
        self.state = state
        self.archive = archive
        self.stdout = stdout
        self.stderr = stderr


class AgentJobSSHDebug(metaclass=MessageMeta, dialect="0.9"):
    """Where to reach a job the agent started with ``debug="ssh"``."""

    def __init__(self, job_id: JobId, host: str, port: int, user: str, password: str):
        self.job_id = job_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password


# -- heartbeat ---------------------------------------------------------------


class Ping(metaclass=MessageMeta, dialect="0.9"):
    """Are you there?  Answered with :class:`Pong`."""

    def __init__(self) -> None:
        pass


class Pong(metaclass=MessageMeta, dialect="0.9"):
    """I am here."""

    def __init__(self) -> None:
        pass


class Unknown(metaclass=MessageMeta, dialect="0.9"):
    """Sent to a peer the backend does not know (it should say hello again)."""

    def __init__(self) -> None:
        pass


#: Every message class of the dialect, in the order of ``PROTOCOL-0.9.md``.
MESSAGES = (
    ClientHello, ClientNewJob, ClientKillJob, ClientGetQueue,
    BackendUpdateEnvironments, BackendJobStarted, BackendJobDone, BackendJobSSHDebug, BackendGetQueue,
    BackendNewJob, BackendKillJob,
    AgentHello, AgentJobStarted, AgentJobDone, AgentJobSSHDebug,
    Ping, Pong, Unknown,
)  # fmt: skip

#: The names :mod:`inginious_tx.messages.v09` re-exports.
__all__ = [
    "JobId", "SPResult",
    "ClientHello", "ClientNewJob", "ClientKillJob", "ClientGetQueue", "BackendUpdateEnvironments",
    "BackendJobStarted", "BackendJobDone", "BackendJobSSHDebug", "BackendGetQueue", "BackendNewJob",
    "BackendKillJob", "AgentHello", "AgentJobStarted", "AgentJobDone", "AgentJobSSHDebug", "Ping", "Pong",
    "Unknown",
]  # fmt: skip
