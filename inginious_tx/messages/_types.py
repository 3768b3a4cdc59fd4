"""The eighteen message types of the INGInious 0.6 protocol.

Field names, ``msgtype`` strings and field order (the order in which each
``__init__`` assigns) are part of the wire contract: do not reorder.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

from ._meta import MessageMeta

#: A job id as the backend and the agents see it: (client address, client job id).
BackendJobId = Tuple[bytes, str]
#: A job id as the client chose it.
ClientJobId = str
#: A result or a per-problem feedback: (result type, text).
SPResult = Tuple[str, str]

# -- client -> backend -------------------------------------------------------


class ClientHello(metaclass=MessageMeta, msgtype="client_hello"):
    """A client registers with the backend; it must come first."""

    def __init__(self, name: str):
        self.name = name


class ClientNewJob(metaclass=MessageMeta, msgtype="client_new_job"):
    """A client submits a job.

    ``debug`` is ``False``, ``True`` or ``"ssh"``; limits are in seconds and
    megabytes; ``run_cmd`` replaces the task's ``run`` executable when set.
    """

    def __init__(
        self,
        job_id: ClientJobId,
        priority: int,
        course_id: str,
        task_id: str,
        inputdata: Dict[str, Any],
        environment: str,
        enable_network: bool,
        time_limit: int,
        hard_time_limit: Optional[int],
        mem_limit: int,
        debug: Union[str, bool],
        launcher: str,
        run_cmd: Optional[str],
    ):
        self.job_id = job_id
        self.priority = priority
        self.course_id = course_id
        self.task_id = task_id
        self.inputdata = inputdata
        self.debug = debug
        self.environment = environment
        self.enable_network = enable_network
        self.time_limit = time_limit
        self.hard_time_limit = hard_time_limit
        self.mem_limit = mem_limit
        self.launcher = launcher
        self.run_cmd = run_cmd


class ClientKillJob(metaclass=MessageMeta, msgtype="client_kill_job"):
    """A client asks for one of its jobs to be stopped."""

    def __init__(self, job_id: ClientJobId):
        self.job_id = job_id


class ClientGetQueue(metaclass=MessageMeta, msgtype="client_get_queue"):
    """A client asks for a snapshot of the running and waiting jobs."""

    def __init__(self) -> None:
        pass


# -- backend -> client -------------------------------------------------------


class BackendUpdateContainers(metaclass=MessageMeta, msgtype="backend_update_containers"):
    """The environments that at least one live agent offers."""

    def __init__(self, available_containers: Tuple[str, ...]):
        self.available_containers = available_containers


class BackendJobStarted(metaclass=MessageMeta, msgtype="backend_job_started"):
    """An agent began running the client's job."""

    def __init__(self, job_id: ClientJobId):
        self.job_id = job_id


class BackendJobDone(metaclass=MessageMeta, msgtype="backend_job_done"):
    """The one and only answer to a client's job."""

    def __init__(
        self,
        job_id: ClientJobId,
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


class BackendJobSSHDebug(metaclass=MessageMeta, msgtype="backend_job_ssh_debug"):
    """Where to reach a job started with ``debug="ssh"``."""

    def __init__(self, job_id: ClientJobId, host: str, port: int, password: str):
        self.job_id = job_id
        self.host = host
        self.port = port
        self.password = password


class BackendGetQueue(metaclass=MessageMeta, msgtype="backend_get_queue"):
    """A queue snapshot.

    Running: ``(job_id, is_this_clients_job, agent_name, "course/task",
    launcher, started_at, max_end)``.  Waiting, in the order they will run:
    ``(job_id, is_this_clients_job, "course/task", launcher, time_limit)``.
    Times are UNIX seconds; -1 means no limit.
    """

    def __init__(
        self,
        jobs_running: List[Tuple[ClientJobId, bool, str, str, str, int, int]],
        jobs_waiting: List[Tuple[ClientJobId, bool, str, str, int]],
    ):
        self.jobs_running = jobs_running
        self.jobs_waiting = jobs_waiting


# -- backend -> agent --------------------------------------------------------


class BackendNewJob(metaclass=MessageMeta, msgtype="backend_new_job"):
    """The backend hands a job to an agent."""

    def __init__(
        self,
        job_id: BackendJobId,
        course_id: str,
        task_id: str,
        inputdata: Dict[str, Any],
        environment: str,
        enable_network: bool,
        time_limit: int,
        hard_time_limit: Optional[int],
        mem_limit: int,
        debug: Union[str, bool],
        run_cmd: Optional[str],
    ):
        self.job_id = job_id
        self.course_id = course_id
        self.task_id = task_id
        self.inputdata = inputdata
        self.debug = debug
        self.environment = environment
        self.enable_network = enable_network
        self.time_limit = time_limit
        self.hard_time_limit = hard_time_limit
        self.mem_limit = mem_limit
        self.run_cmd = run_cmd


class BackendKillJob(metaclass=MessageMeta, msgtype="backend_kill_job"):
    """The backend asks an agent to stop a job it runs."""

    def __init__(self, job_id: BackendJobId):
        self.job_id = job_id


# -- agent -> backend --------------------------------------------------------


class AgentHello(metaclass=MessageMeta, msgtype="agent_hello"):
    """An agent registers its slots and environments.

    ``available_containers`` maps an environment name to
    ``{"id": image id, "created": UNIX time, "ports": [ports]}``.
    """

    def __init__(self, friendly_name: str, available_job_slots: int, available_containers: Dict[str, Dict[str, Any]]):
        self.friendly_name = friendly_name
        self.available_job_slots = available_job_slots
        self.available_containers = available_containers


class AgentJobStarted(metaclass=MessageMeta, msgtype="agent_job_started"):
    """The agent began running a job."""

    def __init__(self, job_id: BackendJobId):
        self.job_id = job_id


class AgentJobDone(metaclass=MessageMeta, msgtype="agent_job_done"):
    """The agent's one answer to a job (same fields as :class:`BackendJobDone`)."""

    def __init__(
        self,
        job_id: BackendJobId,
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


class AgentJobSSHDebug(metaclass=MessageMeta, msgtype="agent_job_ssh_debug"):
    """Where to reach a job the agent started with ``debug="ssh"``."""

    def __init__(self, job_id: BackendJobId, host: str, port: int, password: str):
        self.job_id = job_id
        self.host = host
        self.port = port
        self.password = password


# -- heartbeat ---------------------------------------------------------------


class Ping(metaclass=MessageMeta, msgtype="ping"):
    """Are you there?  Answered with :class:`Pong`."""

    def __init__(self) -> None:
        pass


class Pong(metaclass=MessageMeta, msgtype="pong"):
    """I am here."""

    def __init__(self) -> None:
        pass


class Unknown(metaclass=MessageMeta, msgtype="unknown"):
    """Sent to a peer the backend does not know (it should say hello again)."""

    def __init__(self) -> None:
        pass


#: Every message class of the dialect, in the seed's order.
MESSAGES = (
    ClientHello, ClientNewJob, ClientKillJob, ClientGetQueue,
    BackendUpdateContainers, BackendJobStarted, BackendJobDone, BackendJobSSHDebug, BackendGetQueue,
    BackendNewJob, BackendKillJob,
    AgentHello, AgentJobStarted, AgentJobDone, AgentJobSSHDebug,
    Ping, Pong, Unknown,
)  # fmt: skip

#: The names :mod:`inginious_tx.messages.v06` (and the package) re-export.
__all__ = [
    "BackendJobId", "ClientJobId", "SPResult",
    "ClientHello", "ClientNewJob", "ClientKillJob", "ClientGetQueue", "BackendUpdateContainers",
    "BackendJobStarted", "BackendJobDone", "BackendJobSSHDebug", "BackendGetQueue", "BackendNewJob",
    "BackendKillJob", "AgentHello", "AgentJobStarted", "AgentJobDone", "AgentJobSSHDebug", "Ping", "Pong",
    "Unknown",
]  # fmt: skip
