"""run_student in the local agent: the student's command under the local sandbox, as another user.

Each call runs under the same sandbox as a local job (:mod:`._sandbox`: its
own session and process group, PID namespace, network namespace with only
loopback unless ``--share-network`` (then the grader's), a control group with
the request's memory limit, ``RLIMIT_CPU``), then :mod:`._student_hide`:

- the agent's whole work folder is covered by an empty tmpfs in the
  student's mount namespace, except this job's ``task/student``, bound back at
  its own path: ``feedback/``, ``archive/``, ``input/``, the grader's files,
  the exchange folder and other jobs are not there at all;
- ``/proc`` shows the namespace's processes only; ``/tmp``, ``/var/tmp`` and
  ``/dev/shm`` are the student's own folders on the job's disk;
- when the agent is root the command runs as the **student's user**: the
  job's second uid (see :mod:`.local`), or one user for every job with the
  ``student_user`` option; never the grader's: it cannot signal the
  grader's processes or write what the grader owns;
  without root it runs as the agent's user (the hiding still holds, through
  a user namespace; where the kernel refuses that, the call fails with 254
  rather than run unprotected).

As for local jobs, the rest of the host's files stay visible (read-only to
an unprivileged user as file permissions decide): **the local backend is no
sandbox for untrusted code**; use Docker.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger

from .job_folder import DEFAULT_PATH
from .run_student import EXIT_FAILED, EXIT_OOM, EXIT_TIMEOUT, LauncherBase, StudentOutcome, StudentRequest

__all__ = ["LocalStudentLauncher", "DEFAULT_STUDENT_USER"]

HIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_student_hide.py")
#: The student's user when the agent is root, unless ``student_user`` says otherwise.
DEFAULT_STUDENT_USER = (4243, 4243)


class LocalStudentLauncher(LauncherBase):
    """Runs one local job's run_student calls."""

    log = Logger()

    def __init__(self, backend: Any, state: Any, user: Optional[Tuple[int, int]]) -> None:
        super().__init__()
        self._backend = backend
        self._state = state
        self._user = user
        self._live: Dict[str, Any] = {}

    def _end_all(self) -> None:
        for proto in list(self._live.values()):
            _signal(proto, "TERM")

    async def _launch(self, request: StudentRequest) -> StudentOutcome:
        from .local import SANDBOX, STUDENT_PRIVATE_DIRS, SandboxProtocol

        b, state = self._backend, self._state
        folder = state.folder
        if self._stopping or folder is None or state.proto is None or state.proto.transport is None:
            return StudentOutcome(EXIT_FAILED, stderr=b"run_student: the job is ending\n")
        support = await b._thread(b._thd_support)
        cgroup = None
        if support is not None and support.places:
            mem = request.memory_mb << 20 if request.memory_mb else None
            name = f"{state.name}-student-{request.rid}"
            cgroup = await b._thread(support.create, name, mem, b._max_processes)
        has_mem = cgroup is not None and "memory" in cgroup.dirs
        cpu = int(request.cpu_time + 0.999) if request.cpu_time else 0
        cfg = {
            "agent_pid": os.getpid(),
            "cgroups": cgroup.procs_files if cgroup else [],
            "network": bool(request.share_network),  # shared: _student_hide joins the grader's
            "net_isolation": "required",
            "pidns": True,
            "cpu": cpu,
            "fsize": b._max_file_size,
            "data": (request.memory_mb << 22) if request.memory_mb and not has_mem else 0,
            "nproc": 0,
        }
        student = folder.student_dir
        hide = {
            "student": student,
            "root": folder.root,
            "cover": os.path.dirname(folder.root),
            "stdin": request.stdin_path,
            "cwd": request.cwd if request.cwd == folder.task_dir or request.cwd.startswith(student) else student,
            "user": list(self._user) if self._user else None,
            "private_dirs": (
                {k: os.path.join(folder.root, v) for k, v in STUDENT_PRIVATE_DIRS.items()} if self._user else {}
            ),
            "share_net_of": state.proto.transport.pid if request.share_network else None,
            "env": {
                "PATH": os.environ.get("PATH") or DEFAULT_PATH,
                "HOME": student,
                "TMPDIR": "/tmp",
                "LANG": "C.UTF-8",
                "INGINIOUS_STUDENT": student,
            },
        }
        proto = SandboxProtocol(b._reactor, b.limits.max_stdout, b.limits.max_stderr)
        argv = [sys.executable, "-I", "-S", SANDBOX, json.dumps(cfg), sys.executable, "-I", "-S", HIDE]
        argv += [json.dumps(hide), *request.argv]
        timed_out: List[bool] = []
        try:
            b._reactor.spawnProcess(
                proto, sys.executable, argv, env={"PATH": DEFAULT_PATH}, path="/",
                childFDs={0: "w", 1: "r", 2: "r", 3: "r"},
            )  # fmt: skip
            self._live[request.rid] = proto

            def wall() -> None:
                timed_out.append(True)
                _signal(proto, "TERM")

            timer = b._reactor.callLater(request.hard_time, wall) if request.hard_time else None
            try:
                await proto.ended
            finally:
                if timer is not None and timer.active():
                    timer.cancel()
            stats = await b._thread(cgroup.stats) if cgroup is not None else None
        finally:
            self._live.pop(request.rid, None)
            if cgroup is not None:
                await b._thread(_remove, cgroup)
        out, err = bytes(proto.output[1])[: b.limits.max_stdout], bytes(proto.output[2])[: b.limits.max_stderr]
        ended = proto.reports.get("ended") or {}
        if timed_out:
            return StudentOutcome(EXIT_TIMEOUT, out, err)
        if stats is not None and stats.oom_kills:
            return StudentOutcome(EXIT_OOM, out, err)
        if not has_mem and request.memory_mb and float(ended.get("maxrss") or 0) >= request.memory_mb << 20:
            return StudentOutcome(EXIT_OOM, out, err)
        sig = ended.get("signal")
        if cpu and (sig == signal.SIGXCPU or (sig == signal.SIGKILL and float(ended.get("cpu") or 0) >= cpu)):
            return StudentOutcome(EXIT_TIMEOUT, out, err)
        if "error" in proto.reports:
            text = str(proto.reports["error"].get("text", "the sandbox failed"))
            return StudentOutcome(EXIT_FAILED, out, err + f"run_student: {text}\n".encode())
        if self._stopping:
            return StudentOutcome(EXIT_FAILED, out, err + b"run_student: the job is ending\n")
        if ended.get("exit") is not None:
            return StudentOutcome(int(ended["exit"]), out, err)
        if sig:
            return StudentOutcome(128 + int(sig), out, err)
        return StudentOutcome(EXIT_FAILED, out, err + b"run_student: the sandbox ended without a report\n")


def _signal(proto: Any, sig: str) -> None:
    if proto.transport is not None:
        try:
            proto.transport.signalProcess(sig)
        except (ProcessExitedAlready, OSError):
            pass


def _remove(cgroup: Any) -> None:
    cgroup.kill_all()
    cgroup.remove()
