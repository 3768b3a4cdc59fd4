"""The ``local`` agent backend: runs each task as a child process of the agent.

**A sandbox for trusted code and for development, not a security boundary.**
Use the Docker backend for untrusted student code.  What it does, per job:

- *User*: when the agent is root, each running job has **a uid of its own**:
  the job in slot *i* (the lowest free one) runs as uid and gid
  ``job_uid_base + 2i`` (default base 64000) and its run_student commands
  as ``job_uid_base + 2i + 1``; ``job_uid_count`` pairs at most (default
  the larger of 64 and the agent's slots: 64000-64127); reserve that range
  (the agent logs existing users in it).  No supplementary groups,
  ``no_new_privs`` (setuid programs do not give root back).  The option
  ``user`` (``NAME``, ``UID`` or ``UID:GID``; the backend's ``--job-user``)
  instead runs *every* job as that one user (and run_student as
  ``student_user``, default ``4243:4243``): jobs then share a uid and can
  reach each other (the agent warns).  Without root, jobs run as the
  agent's own user.
- *Files*: the job runs in a fresh private copy of the task (see
  :mod:`inginious_tx.agent.task`), handed to the job's user, mode 0700
  (other jobs cannot enter it), and removed afterwards.  When the agent is
  root the job folder is a tmpfs of ``job_disk_mb`` MB (default 256; 0:
  none): at the bound the job's writes fail and the job is answered
  ``overflow``; nothing it wrote outlives it
  (:mod:`inginious_tx.agent.job_disk`).  In a mount (and IPC) namespace of
  its own, the job's ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are folders of
  its job folder (``.tmp``, ``.var-tmp``, ``.shm``; run_student's commands
  have their own): within the bound, gone with the job; System V IPC
  objects go with its IPC namespace.  Without root the folder is on the
  agent's disk (bounded per file by ``RLIMIT_FSIZE`` only; the agent says
  so once in its log) and ``/tmp`` is the host's.  The job is **not**
  confined to its folder: it sees the rest of the host's filesystem with
  its user's rights (other world-writable folders, e.g. ``/run/lock``,
  included).
- *Processes*: a new session, and a new PID namespace when the agent may make
  one (root, or unprivileged user namespaces).  When ``run`` ends, on a
  timeout and on a kill, every process the job started is killed and reaped,
  including background and ``setsid`` ones: by the kernel with a PID
  namespace, by the sandbox as child subreaper otherwise, and through the
  job's control group when there is one.  With per-job users, every
  process still running as the job's uids at its end (escaped some other
  way) is killed before the uids go to another job.  With root, ``/proc`` is the PID
  namespace's own: the job sees only its own processes; without root the
  host's processes stay visible in ``/proc`` (and a uid shared with other
  jobs lets it read their environment there).
- *Network*: cut off (a new network namespace with only loopback) unless the
  job has ``enable_network``.  If the agent can make no network namespace,
  such jobs get a ``crash`` result saying so, unless the option
  ``network_isolation=best-effort`` is set (then they run with the network,
  and the agent logs it).
- *Time*: ``time_limit`` is CPU seconds of the whole job (from its cgroup,
  else from ``/proc`` for its session, plus ``RLIMIT_CPU`` per process);
  ``hard_time_limit`` (default 3 x ``time_limit``) is wall-clock seconds.
  Either gives ``timeout``.
- *Memory*: ``mem_limit`` MB for the whole job through a memory cgroup (v1 or
  v2), without swap; an OOM kill in the job gives ``overflow``.  Without a
  memory cgroup, an approximation: a watchdog on the resident memory of the
  job's session (summed, every ``poll_interval``), the peak resident memory
  of each process of the job (``overflow`` at the limit), and
  ``RLIMIT_DATA`` of 4 x the limit per process as a safety cap.
- *Processes count*: ``max_processes`` (default 512) through a pids cgroup;
  without one, ``RLIMIT_NPROC`` (per user, and not enforced for root).
- *Files size*: ``RLIMIT_FSIZE`` of ``max_file_size_mb`` (default 1024).

Options (``--option KEY=VALUE``): ``work_dir``, ``job_uid_base``, ``job_uid_count``, ``user``,
``job_disk_mb``, ``network_isolation``
(``required``/``best-effort``), ``pid_namespace`` (``auto``/``off``),
``cgroups`` (``auto``/``off``), ``max_processes``, ``max_file_size_mb``,
``max_time`` (s, when a job has no time limit), ``kill_grace`` (s),
``poll_interval`` (s), ``keep_jobs`` (keep job folders, for debugging),
``student_user`` (one user for every job's run_student commands, instead of
each job's second uid; see :mod:`.run_student_local`).

At start (its first ``environments()``, before its first job) the agent
removes the job folders that local agents of this host killed outright left
in its work folder and in the default ones (:mod:`._leftovers`).

Environments are names only (``--environment NAME``, default ``default``):
they all run on this host.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._reactor import CommonReactor
from ..interfaces import IAgentBackend
from ..messages import BackendJobId, BackendNewJob
from ._cgroup import CgroupSupport, JobCgroup, JobStats
from ._leftovers import sweep_temp, sweep_work_dir
from ._running import JobRun
from ._threads import BackendThreads
from .debug import ISSHDebugBackend
from .feedback import OutputLimits, collect_result
from .job_disk import DEFAULT_DISK_MB, can_mount, disk_full
from .job_folder import DEFAULT_PATH, JobFolder, TaskError, prepare_job, remove_job, remove_job_path
from .result import AgentConfig, JobResult
from .run_student import ENV_VAR as RUN_STUDENT_ENV
from .run_student import EXCHANGE, StudentService, make_exchange
from .run_student_local import DEFAULT_STUDENT_USER, LocalStudentLauncher
from .ssh_sandboxes import LocalSandbox
from .uid_leases import UidLeases

__all__ = ["LocalBackend"]

#: Beside each job folder: the agent's private copies of run_student's standard inputs.
STDIN_SUFFIX = ".stdin"

#: First uid (and gid) of the per-job users of a root agent (option ``job_uid_base``).
DEFAULT_UID_BASE = 64000
#: How many uid pairs it may use at least (option ``job_uid_count``; never fewer than its slots).
DEFAULT_UID_COUNT = 64
#: Private folders of a job, in its job folder, bound on these host paths in its mount namespace.
PRIVATE_DIRS = {"/tmp": ".tmp", "/var/tmp": ".var-tmp", "/dev/shm": ".shm"}
#: The same for its run_student commands (another user: other folders).
STUDENT_PRIVATE_DIRS = {"/tmp": ".student-tmp", "/var/tmp": ".student-var-tmp", "/dev/shm": ".student-shm"}

SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox.py")
_TRUE = ("1", "true", "yes", "on")
_seq = itertools.count(1)


def _option(options: Dict[str, Any], key: str, default: Any, kind: Callable[[Any], Any]) -> Any:
    value = options.get(key, default)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid value {value!r} for the local backend option {key!r}") from None


def job_user(value: Any) -> Optional[Tuple[int, int]]:
    """The ``(uid, gid)`` jobs run as: None when the agent is not root (jobs run as the agent).

    ``value``: the ``user`` option (``NAME``, ``UID`` or ``UID:GID``) or None
    for ``nobody``.  Raises ValueError for an unknown user, or for a user
    given to an agent that is not root (it could not switch to it).
    """
    if os.geteuid() != 0:
        if value not in (None, ""):
            raise ValueError("the option user needs an agent running as root (it switches jobs to that user)")
        return None
    text = "nobody" if value in (None, "") else str(value).strip()
    name, _, group = text.partition(":")
    try:
        if name.isdigit():
            uid = int(name)
            gid = int(group) if group.isdigit() else (pwd.getpwuid(uid).pw_gid if not group else -1)
        else:
            entry = pwd.getpwnam(name)
            uid, gid = entry.pw_uid, int(group) if group.isdigit() else entry.pw_gid
    except KeyError:
        if text == "nobody":
            return 65534, 65534  # the conventional nobody/nogroup
        raise ValueError(f"unknown user {text!r} for the option user") from None
    if gid < 0:
        raise ValueError(f"invalid group in the option user {text!r}: give a number")
    return uid, gid


def _session_usage(sid: int) -> Tuple[int, float]:
    """Resident bytes and CPU seconds (with reaped children) of a session's processes."""
    page = os.sysconf("SC_PAGE_SIZE")
    ticks = os.sysconf("SC_CLK_TCK")
    rss = 0
    cpu = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 21 and int(fields[3]) == sid:
            cpu += sum(int(x) for x in fields[11:15])
            rss += int(fields[21]) * page
    return rss, cpu / ticks


def _uids_of(pid: str) -> Tuple[Optional[str], List[int]]:
    """(state letter, real/effective/saved/fs uids) of a process, or (None, []) when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None, []
    state, uids = None, []
    for line in text.splitlines():
        if line.startswith("State:"):
            state = line.split()[1] if len(line.split()) > 1 else None
        elif line.startswith("Uid:"):
            uids = [int(x) for x in line.split()[1:]]
    return state, uids


def kill_uids(uids: List[int], rounds: int = 200) -> int:
    """SIGKILL every process running as one of ``uids`` (any of its uids), until none is left
    (blocking; zombies are dead already).  How many were killed.

    A job's processes can leave its sandbox (an SSH session without PID
    namespace, a bug): its uid is given to the next job only after this."""
    if not uids:
        return 0
    wanted = set(uids)
    killed = 0
    for _ in range(rounds):
        found = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            state, ids = _uids_of(name)
            if state is None or state in ("Z", "X") or not wanted.intersection(ids):
                continue
            found += 1
            try:
                os.kill(int(name), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        if not found:
            return killed
        time.sleep(0.01)
    raise RuntimeError(f"processes of uids {sorted(wanted)} still run after {rounds} rounds of SIGKILL")


class SandboxProtocol(ProcessProtocol):
    """Collects stdout/stderr (capped) and the sandbox's reports on fd 3."""

    def __init__(self, reactor: IReactorTime, max_out: int, max_err: int) -> None:
        self._reactor = reactor
        self._caps = {1: max_out + 1, 2: max_err + 1}
        self.output: Dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._status = bytearray()
        self.reports: Dict[str, Dict[str, Any]] = {}
        self.ended: Deferred = Deferred()
        self.exit_code: Optional[int] = None
        #: fires (None) once the job runs in its namespaces (its "running" report), or ended
        self.running: Deferred = Deferred()
        self._close_call: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        assert self.transport is not None  # set just before, by makeConnection
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd in self.output:
            room = self._caps[fd] - len(self.output[fd])
            if room > 0:
                self.output[fd] += data[:room]
        elif fd == 3 and len(self._status) < 65536:
            self._status += data
            while b"\n" in self._status:
                line, _, rest = bytes(self._status).partition(b"\n")
                self._status = bytearray(rest)
                try:
                    msg = json.loads(line)
                    self.reports[str(msg["event"])] = msg
                except (ValueError, KeyError, TypeError):
                    pass
                self._check_running()

    def _check_running(self) -> None:
        """``running`` fires once the command runs and, with a PID namespace, its init is known."""
        if self.running.called or "running" not in self.reports:
            return
        with_pidns = "pid namespace" in self.reports.get("started", {}).get("isolation", [])
        if "init" in self.reports or not with_pidns:
            self.running.callback(None)

    def processExited(self, reason: Failure) -> None:
        # Something may still hold our pipes (it should not): stop waiting soon.
        self._close_call = self._reactor.callLater(1.0, self._close_pipes)

    def _close_pipes(self) -> None:
        transport = self.transport
        if transport is None:  # never connected: no pipe to close
            return
        for fd in (1, 2, 3):
            try:
                transport.closeChildFD(fd)
            except Exception:
                pass

    def processEnded(self, reason: Failure) -> None:
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        self.exit_code = getattr(reason.value, "exitCode", None)
        if not self.running.called:
            self.running.callback(None)
        self.ended.callback(None)


@dataclass
class _LocalJob(JobRun):
    """The backend's record of one job while it runs (``up`` fires with True)."""

    name: str = ""
    folder: Optional[JobFolder] = None
    cgroup: Optional[JobCgroup] = None
    proto: Optional[SandboxProtocol] = None
    #: (result, text) decided by the agent: timeout, overflow, killed.
    outcome: Optional[Tuple[str, str]] = None
    ended: bool = False
    polling: bool = False
    monitor: Optional[LoopingCall] = None
    stats: JobStats = field(default_factory=JobStats)
    #: index of the job's uid pair (per-job users), None when jobs share a user
    slot: Optional[int] = None
    #: (uid, gid) of the job's grader and of its run_student commands (None: the agent's user)
    user: Optional[Tuple[int, int]] = None
    student_user: Optional[Tuple[int, int]] = None
    #: processes of its uids could not be killed: the uids stay taken
    quarantined: bool = False


@implementer(IAgentBackend, ISSHDebugBackend)
class LocalBackend:
    """Runs jobs as local child processes (see the module docstring)."""

    name = "local"
    log = Logger()

    def __init__(self, reactor: CommonReactor, config: AgentConfig) -> None:
        if not config.tasks_dir:
            raise ValueError("the local backend needs a tasks folder (--tasks)")
        for value in config.environments:
            if "=" in value:
                raise ValueError(
                    f"the local backend runs tasks on this host: --environment takes a NAME, not {value!r}"
                )
        self._reactor = reactor
        self._tasks_dir = config.tasks_dir
        opts = config.options
        self._work_root = opts.get("work_dir") or os.path.join(
            tempfile.gettempdir(), f"inginious-tx-local-{os.getpid()}-{id(self):x}"
        )
        self._own_work_root = "work_dir" not in opts
        self._net_isolation = _option(opts, "network_isolation", "required", str)
        if self._net_isolation not in ("required", "best-effort"):
            raise ValueError("network_isolation is 'required' or 'best-effort'")
        self._pidns = _option(opts, "pid_namespace", "auto", str) != "off"
        self._use_cgroups = _option(opts, "cgroups", "auto", str) != "off"
        self._max_processes = _option(opts, "max_processes", 512, int)
        self._max_file_size = _option(opts, "max_file_size_mb", 1024, int) << 20
        self._max_time = _option(opts, "max_time", 3600, float)
        self._kill_grace = _option(opts, "kill_grace", 2.0, float)
        self._poll_interval = _option(opts, "poll_interval", 0.25, float)
        self._keep_jobs = str(opts.get("keep_jobs", "")).lower() in _TRUE
        # who jobs run as: per job (a uid pair per running job) unless the operator names one user
        self._uid_base = _option(opts, "job_uid_base", DEFAULT_UID_BASE, int)
        self._uid_count = _option(opts, "job_uid_count", max(DEFAULT_UID_COUNT, config.slots), int)
        self._shared_user = job_user(opts.get("user")) if opts.get("user") not in (None, "") else None
        self._shared_student = (
            job_user(opts.get("student_user")) if opts.get("student_user") not in (None, "") else None
        )
        self._per_job = os.geteuid() == 0 and self._shared_user is None
        if self._per_job:
            if self._uid_base < 1 or self._uid_count < 1 or self._uid_base + 2 * self._uid_count > 2**31:
                raise ValueError("job_uid_base must be a positive uid and job_uid_count at least 1")
            self._warn_taken_uids()
        elif os.geteuid() == 0:
            self.log.warn(
                "local backend: every job runs as the one user {user} (option user): jobs can reach each "
                "other's processes and files; leave user unset for a uid per job",
                user=self._shared_user,
            )
        self._slots_used: set = set()
        #: host-wide leases on the job uids (another agent's are skipped)
        self._leases = UidLeases()
        #: who a job runs as when jobs share a user, else the first job uid (None: the agent's own user)
        self.job_user = self._shared_user if not self._per_job else self._pair(0)[0]
        if os.geteuid() != 0:
            self.job_user = None
        #: the user run_student's commands run as when shared (root agents; see .run_student_local)
        default_student = DEFAULT_STUDENT_USER if os.geteuid() == 0 else None
        self.student_user = self._shared_student or (self._pair(0)[1] if self._per_job else default_student)
        self._disk_mb = _option(opts, "job_disk_mb", DEFAULT_DISK_MB, int)
        if self._disk_mb < 0:
            raise ValueError("job_disk_mb is a size in MB (0: no tmpfs)")
        if self._disk_mb and not can_mount():
            self.log.warn(
                "local backend: not root, so job folders are not size-limited tmpfs mounts "
                "(job_disk_mb={mb}): a job's disk use is bounded only per file ({fsize} MB)",
                mb=self._disk_mb,
                fsize=self._max_file_size >> 20,
            )
            self._disk_mb = 0
        self.limits = config.output_limits or OutputLimits()
        self._created = int(reactor.seconds())
        self._environments = {
            name: {"id": f"local:{name}", "created": self._created, "ports": []} for name in config.environment_names()
        }
        self._support: Optional[CgroupSupport] = None
        self._support_lock = threading.Lock()
        self._jobs: Dict[BackendJobId, _LocalJob] = {}
        self._warned: set = set()
        self._claimed = False
        self._claim_lock = threading.Lock()
        # job folders and cgroups block: our own threads (one per slot, and spares)
        self._threads = BackendThreads(IReactorFromThreads(reactor), "local-backend", max(2, config.slots + 2))

    # -- job users ------------------------------------------------------------

    def _pair(self, slot: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """The (grader, student) users of the job in ``slot``: uid = gid, two consecutive ids."""
        uid = self._uid_base + 2 * slot
        return (uid, uid), (uid + 1, uid + 1)

    def _warn_taken_uids(self) -> None:
        last = self._uid_base + 2 * self._uid_count - 1
        taken = [e.pw_name for e in pwd.getpwall() if self._uid_base <= e.pw_uid <= last]
        if taken:
            self.log.warn(
                "local backend: the job uids {first}-{last} include existing users ({names}): "
                "reserve that range for jobs or set job_uid_base",
                first=self._uid_base, last=last, names=", ".join(taken[:5]),
            )  # fmt: skip

    def _take_users(self, state: _LocalJob) -> Optional[str]:
        """Give the job its users; an error text when none is free."""
        if os.geteuid() != 0:
            return None
        if not self._per_job:
            state.user, state.student_user = self._shared_user, self.student_user
            return None
        # a uid pair another agent of this host holds is skipped (see uid_leases)
        free = next(
            (
                i
                for i in range(self._uid_count)
                if i not in self._slots_used and self._leases.take(self._uid_base + 2 * i)
            ),
            None,
        )
        if free is None:
            return f"no free job user: all {self._uid_count} job uids are taken (option job_uid_count)"
        self._slots_used.add(free)
        state.slot = free
        state.user, student = self._pair(free)
        state.student_user = self._shared_student or student
        return None

    def _own_uids(self, state: _LocalJob) -> List[int]:
        """The uids only this job used (its uid pair; not a user shared with other jobs)."""
        if state.slot is None:
            return []
        uids = [state.user[0]] if state.user else []
        if state.student_user and self._shared_student is None:
            uids.append(state.student_user[0])
        return uids

    def _release_users(self, state: _LocalJob) -> None:
        if state.slot is not None and not state.quarantined:
            self._slots_used.discard(state.slot)
            self._leases.release(self._uid_base + 2 * state.slot)
            state.slot = None

    # -- IAgentBackend --------------------------------------------------------

    def environments(self) -> Deferred:
        if not self._claimed:  # at start: what a killed agent left goes now, not with the first job
            self._thread(self._thd_claim).addErrback(
                lambda f: self.log.failure("local backend: cannot clean what a previous agent left", f)
            )
        return succeed({k: dict(v) for k, v in self._environments.items()})

    def run(self, job: BackendNewJob) -> Deferred:
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id!r} is already running")
        if job.environment not in self._environments:
            return succeed(JobResult.crash(f"environment {job.environment!r} is not offered by this agent"))
        state = _LocalJob(job, name=f"job-{next(_seq)}")
        refused = self._take_users(state)
        if refused is not None:
            return succeed(JobResult.crash(refused))
        self._jobs[job.job_id] = state
        d = self._thread(self._thd_prepare, state)
        d.addCallback(lambda _: self._start(state))
        d.addCallback(lambda _: self._thread(self._thd_result, state))
        d.addErrback(self._failed, state)
        d.addBoth(self._cleanup, state)
        return d

    def debug_sandbox(self, job_id: BackendJobId) -> Deferred:
        """A shell in the job's folder for SSH debug sessions, once it runs (None if the job ended first)."""
        state = self._jobs.get(job_id)
        if state is None:
            return succeed(None)
        d: Deferred = Deferred()

        def running(_: Any) -> None:
            folder = state.folder
            if state.ended or folder is None:
                d.callback(None)
                return
            env = folder.env(base_path=os.environ.get("PATH") or DEFAULT_PATH)
            cgroups = state.cgroup.procs_files if state.cgroup else []
            d.callback(LocalSandbox(folder, env, state.user, lambda: self._namespaces(state), cgroups))

        def up(started: Optional[bool]) -> Optional[bool]:
            if not started or state.folder is None or state.proto is None:
                d.callback(None)
            else:
                # the shell joins the job's namespaces: wait until they are there
                state.proto.running.addCallback(running)
            return started

        state.up.addCallback(up)
        return d

    @staticmethod
    def _namespaces(state: _LocalJob) -> Tuple[Optional[int], bool]:
        """(pid of a process in the job's namespaces, whether it is the job's PID namespace init);
        (None, False) once the job has ended."""
        proto = state.proto
        if state.ended or proto is None or proto.transport is None or proto.transport.pid is None:
            return None, False
        init = proto.reports.get("init", {}).get("pid")
        if init:
            return int(init), True
        return int(proto.transport.pid), False

    def kill(self, job_id: BackendJobId) -> None:
        state = self._jobs.get(job_id)
        if state is not None:
            self._terminate(state, "killed", "The job was killed.")

    def close(self) -> Deferred:
        """Kill every job, wait for them, then remove our cgroups and work folder."""
        waits = [s.done for s in self._jobs.values()]
        for job_id in list(self._jobs):
            self.kill(job_id)
        d = DeferredList(waits, consumeErrors=True)
        d.addCallback(lambda _: self._thread(self._thd_close))
        d.addBoth(self._stop_threads)
        return d

    def _stop_threads(self, result: Any) -> Any:
        self._threads.stop()
        return result

    # -- running --------------------------------------------------------------

    def _thread(self, f: Callable[..., Any], *args: Any) -> Deferred:
        return self._threads.call(f, *args)

    def _thd_support(self) -> Optional[CgroupSupport]:
        with self._support_lock:
            if self._support is None:
                if self._use_cgroups:
                    self._support = CgroupSupport.probe(f"inginious-tx-{os.getpid()}-{id(self):x}")
                else:
                    self._support = CgroupSupport()
                self.log.info("local backend cgroups: {what}", what=self._support.describe())
                for problem in self._support.problems:
                    self.log.info("cgroup probe: {problem}", problem=problem)
            return self._support

    def _thd_claim(self) -> None:
        """Once, before the first job: remove what agents killed on this host left in our work
        folder and in the default ones (see ._leftovers)."""
        with self._claim_lock:
            if self._claimed:
                return
            self._claimed = True
            left = sweep_temp("inginious-tx-local-", keep=self._work_root)
            left += [os.path.join(self._work_root, n) for n in sweep_work_dir(self._work_root)]
            for path in left:
                self.log.info("local backend: removed {path}, left by an agent that was killed", path=path)

    def _thd_prepare(self, state: _LocalJob) -> None:
        self._thd_claim()
        support = self._thd_support()
        state.folder = folder = prepare_job(
            self._tasks_dir, state.job, self._work_root, disk_mb=self._disk_mb, owner=state.user,
            private=state.user is not None, marked=True,
        )  # fmt: skip
        exchange = make_exchange(folder)
        if state.user:
            os.chown(exchange, *state.user)
            # the job's /tmp, /var/tmp and /dev/shm: on its own (bounded) disk, gone with it
            for owner, names in ((state.user, PRIVATE_DIRS), (state.student_user, STUDENT_PRIVATE_DIRS)):
                for name in names.values():
                    path = os.path.join(folder.root, name)
                    os.mkdir(path, 0o700)
                    os.chmod(path, 0o1777)  # as a /tmp is (only its user reaches it: the job folder is 0700)
                    if owner is not None:
                        os.chown(path, *owner)
        if support is not None and support.places:
            mem = state.job.mem_limit << 20 if state.job.mem_limit > 0 else None
            state.cgroup = support.create(state.name, mem, self._max_processes)

    def _limits_of(self, job: BackendNewJob) -> Tuple[int, float]:
        """(CPU seconds or 0, wall-clock seconds)."""
        cpu = max(job.time_limit, 0)
        hard = job.hard_time_limit if job.hard_time_limit and job.hard_time_limit > 0 else 3 * cpu
        return cpu, float(hard) if hard else self._max_time

    def _start(self, state: _LocalJob) -> Deferred:
        if state.outcome is not None:
            return succeed(None)  # killed while preparing
        job, folder = state.job, state.folder
        assert folder is not None
        cpu, hard = self._limits_of(job)

        def has(feature: str) -> bool:
            return state.cgroup is not None and feature in state.cgroup.dirs

        cfg = {
            "agent_pid": os.getpid(),
            "cgroups": state.cgroup.procs_files if state.cgroup else [],
            "network": bool(job.enable_network),
            "net_isolation": self._net_isolation,
            "pidns": self._pidns,
            "cpu": cpu,
            "fsize": self._max_file_size,
            # without a memory cgroup, only a safety cap: the limit is checked on resident memory
            "data": (job.mem_limit << 22) if job.mem_limit > 0 and not has("memory") else 0,
            "nproc": self._max_processes if not has("pids") and (os.getuid() != 0 or state.user) else 0,
            "user": list(state.user) if state.user else None,
            "job_root": folder.root,
            "private_dirs": {k: os.path.join(folder.root, v) for k, v in PRIVATE_DIRS.items()} if state.user else {},
        }
        env = folder.env(base_path=os.environ.get("PATH") or DEFAULT_PATH)
        env[RUN_STUDENT_ENV] = os.path.join(folder.root, EXCHANGE)
        proto = SandboxProtocol(self._reactor, self.limits.max_stdout, self.limits.max_stderr)
        state.proto = proto
        # watching before the grader starts: its first request cannot be missed
        state.students = StudentService(
            self._reactor, env[RUN_STUDENT_ENV], folder.root + STDIN_SUFFIX, job,
            LocalStudentLauncher(self, state, state.student_user), self._thread,
        )  # fmt: skip
        state.students.start()
        self._reactor.spawnProcess(
            proto,
            sys.executable,
            [sys.executable, "-I", "-S", SANDBOX, json.dumps(cfg), *folder.command],
            env=env,
            path=folder.task_dir,
            childFDs={0: "w", 1: "r", 2: "r", 3: "r"},
        )
        state.calls.append(
            self._reactor.callLater(
                hard, self._terminate, state, "timeout", f"The job exceeded its wall-clock time limit of {hard:g} s."
            )
        )
        state.monitor = LoopingCall(self._poll, state)
        state.monitor.clock = self._reactor
        state.monitor.start(self._poll_interval, now=False)
        proto.ended.addCallback(lambda _: self._ended(state))
        state.up.callback(True)
        return proto.ended

    def _ended(self, state: _LocalJob) -> None:
        state.ended = True
        state.cancel_calls()
        if state.monitor is not None and state.monitor.running:
            state.monitor.stop()

    def _poll(self, state: _LocalJob) -> None:
        if state.polling or state.ended or state.outcome is not None or state.proto is None:
            return
        transport = state.proto.transport
        assert transport is not None  # polling starts once the process is spawned
        state.polling = True
        d = self._thread(self._thd_stats, state, transport.pid)

        def check(stats: JobStats) -> None:
            state.polling = False
            state.stats = stats
            job = state.job
            cpu, _ = self._limits_of(job)
            if stats.oom_kills:
                self._terminate(state, "overflow", self._overflow_text(job))
            elif stats.disk_full:
                self._terminate(state, "overflow", self._disk_text(state))
            elif cpu and stats.cpu_seconds is not None and stats.cpu_seconds >= cpu:
                self._terminate(state, "timeout", self._timeout_text(cpu))

        def failed(f: Failure) -> None:
            state.polling = False
            self.log.failure("cannot check job {name}", f, name=state.name)

        d.addCallbacks(check, failed)

    def _thd_stats(self, state: _LocalJob, pid: Optional[int]) -> JobStats:
        stats = state.cgroup.stats() if state.cgroup is not None else JobStats()
        has_mem = state.cgroup is not None and "memory" in state.cgroup.dirs
        if pid and (stats.cpu_seconds is None or not has_mem):
            rss, cpu = _session_usage(pid)
            if stats.cpu_seconds is None:
                stats.cpu_seconds = cpu
            mem = state.job.mem_limit << 20
            if not has_mem and mem > 0 and rss >= mem:
                stats.oom_kills = 1  # the watchdog's verdict
        folder = state.folder
        if folder is not None and folder.disk_mb and disk_full(folder.root, folder.disk_mb):
            stats.disk_full = True
        return stats

    @staticmethod
    def _overflow_text(job: BackendNewJob) -> str:
        return f"The job exceeded its memory limit of {job.mem_limit} MB."

    @staticmethod
    def _disk_text(state: _LocalJob) -> str:
        mb = state.folder.disk_mb if state.folder is not None else 0
        return f"The job filled its disk space of {mb} MB."

    @staticmethod
    def _timeout_text(cpu: float) -> str:
        return f"The job exceeded its time limit of {cpu:g} s of CPU time."

    def _terminate(self, state: _LocalJob, kind: str, text: str) -> None:
        """End the job's whole process tree; ``kind`` becomes its result."""
        if state.outcome is not None or state.ended:
            return
        state.outcome = (kind, text)
        proto = state.proto
        if proto is None or proto.transport is None:
            return  # not started: _start sees the outcome
        self.log.info("ending job {name} ({kind})", name=state.name, kind=kind)
        try:
            proto.transport.signalProcess("TERM")  # the sandbox kills and reaps its tree
        except ProcessExitedAlready:
            return
        state.calls.append(self._reactor.callLater(self._kill_grace, self._escalate, state))

    def _escalate(self, state: _LocalJob) -> None:
        """The sandbox did not end in time: kill everything outright."""
        if state.ended or state.proto is None:
            return
        transport = state.proto.transport
        assert transport is not None  # _terminate, which scheduled us, checked it
        self.log.warn("job {name} did not end on SIGTERM: killing it", name=state.name)
        pid = transport.pid
        pgid = state.proto.reports.get("running", {}).get("task_pgid")
        for group in (pid, pgid):
            if group:
                try:
                    os.killpg(group, signal.SIGKILL)
                except OSError:
                    pass
        if state.cgroup is not None:
            self._thread(state.cgroup.kill_all).addErrback(lambda f: self.log.failure("cgroup kill failed", f))

    # -- results --------------------------------------------------------------

    def _thd_result(self, state: _LocalJob) -> JobResult:
        """Decide the result once the sandbox has ended (blocking)."""
        folder, proto, job = state.folder, state.proto, state.job
        assert folder is not None
        if state.cgroup is not None:
            state.cgroup.kill_all()
            state.stats = state.cgroup.stats()
        out = bytes(proto.output[1]) if proto else b""
        err = bytes(proto.output[2]) if proto else b""
        cpu, _ = self._limits_of(job)
        outcome = state.outcome
        reports = proto.reports if proto else {}
        ended = reports.get("ended")
        if outcome is None and state.stats.oom_kills:
            outcome = ("overflow", self._overflow_text(job))
        if outcome is None and folder.disk_mb and disk_full(folder.root, folder.disk_mb):
            outcome = ("overflow", self._disk_text(state))
        has_mem = state.cgroup is not None and "memory" in state.cgroup.dirs
        if outcome is None and ended is not None and not has_mem and job.mem_limit > 0:
            # no memory cgroup: a process of the job went over the limit at some point
            if float(ended.get("maxrss") or 0) >= job.mem_limit << 20:
                outcome = ("overflow", self._overflow_text(job))
        if outcome is None and ended is not None and cpu:
            used = max(float(ended.get("cpu") or 0), state.stats.cpu_seconds or 0)
            if ended.get("signal") == signal.SIGXCPU or (ended.get("signal") == signal.SIGKILL and used >= cpu):
                outcome = ("timeout", self._timeout_text(cpu))
        if outcome is not None:
            return collect_result(folder, None, out, err, self.limits, outcome=outcome)
        if "error" in reports:
            return JobResult.crash(str(reports["error"].get("text", "the sandbox failed")))
        started = reports.get("started", {})
        for missing in started.get("missing", []):
            if missing not in self._warned:
                self._warned.add(missing)
                self.log.warn("local backend: jobs run without {what} isolation", what=missing)
        if ended is None:
            tail = err[-500:].decode("utf-8", "replace")
            code = proto.exit_code if proto else None
            return JobResult.crash(f"the local sandbox ended without a report (exit status {code}): {tail}")
        exit_code = ended["exit"] if ended.get("exit") is not None else -int(ended.get("signal") or 0)
        return collect_result(folder, exit_code, out, err, self.limits)

    def _failed(self, failure: Failure, state: _LocalJob) -> Any:
        if failure.check(TaskError):
            return JobResult.crash(str(failure.value))
        return failure

    def _cleanup(self, result: Any, state: _LocalJob) -> Deferred:
        """Whatever happened: no process, no cgroup, no folder left."""
        self._ended(state)
        state.never_up()

        def thd_cleanup() -> None:
            if state.cgroup is not None:
                state.cgroup.kill_all()
                state.cgroup.remove()
            try:
                left = kill_uids(self._own_uids(state))
            except RuntimeError:
                state.quarantined = True  # its uids are not given to another job
                raise
            if left:
                self.log.warn("job {name}: killed {n} processes of its users left after it", name=state.name, n=left)
            if state.folder is not None:
                remove_job_path(state.folder.root + STDIN_SUFFIX)
            if state.folder is not None and not self._keep_jobs:
                remove_job(state.folder)

        d = maybeDeferred(state.students.stop) if state.students is not None else succeed(None)
        d.addErrback(lambda f: self.log.failure("stopping run_student of job {name} failed", f, name=state.name))
        d.addCallback(lambda _: self._thread(thd_cleanup))
        d.addErrback(lambda f: self.log.failure("cleaning up job {name} failed", f, name=state.name))

        def finished(_: Any) -> Any:
            if self._jobs.get(state.job.job_id) is state:
                del self._jobs[state.job.job_id]
            self._release_users(state)
            state.done.callback(None)
            return result

        return d.addCallback(finished)

    def _thd_close(self) -> None:
        if self._support is not None:
            self._support.cleanup()
        if self._own_work_root:
            try:
                os.rmdir(self._work_root)
            except OSError:
                pass
