"""run_student in the Docker agent: a sibling container per call (see :mod:`.run_student`).

The student's container is made by the agent (never by the grader: no Docker
socket in any container) from the job's image, with the job's runtime and
the same isolation as the grader's (non-root user, no capabilities,
no-new-privileges, read-only root, init, pids limit), and:

- **files**: only the task's ``student/`` folder, read-write, at the path the
  grader sees it (``/job/task/student``, also ``/task/student``), its
  standard input read-only at ``/inginious/stdin``, and a private ``/tmp``
  (tmpfs, counted in its memory); nothing of ``feedback/``, ``archive/``,
  ``input/``, the task's other files, the exchange folder or the helpers;
- **processes**: its own PID namespace: it cannot see or signal the grader's
  processes, and everything in it is killed when it ends, when its limits are
  reached, and when the job ends;
- **network**: none; with ``--share-network``, the grader's network namespace
  (so the grader may talk to it over loopback), which has a network only if
  the job has one;
- **limits**: the request's (at most the job's) memory without swap, CPU time
  (checked through the engine's statistics) and wall-clock time.  Under a
  runtime other than runc (gVisor), a SIGKILL the agent did not send counts as
  out of memory (252): the engine does not always flag gVisor's OOM kills.

The working directory is the caller's when it is the task folder or inside
``student/`` (the task folder then holds nothing but ``student/``), else
``student/``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.logger import Logger

from .job_folder import DEFAULT_PATH, JobFolder
from .run_student import EXIT_FAILED, EXIT_OOM, EXIT_TIMEOUT, LauncherBase, StudentOutcome, StudentRequest

__all__ = ["DockerStudentLauncher", "LABEL_STUDENT", "STDIN_MOUNT"]

#: Label of a student's container: the request id.
LABEL_STUDENT = "org.inginious-tx.student"
STDIN_MOUNT = "/inginious/stdin"
_MIN_MEM_MB = 8


class DockerStudentLauncher(LauncherBase):
    """Runs one job's run_student calls in sibling containers."""

    log = Logger()

    def __init__(self, backend: Any, run: Any, folder: JobFolder, image: str, job_mount: str) -> None:
        super().__init__()
        self._backend = backend
        self._run = run
        self._folder = folder
        self._image = image
        self._student = f"{job_mount}/task/student"
        #: containers of the calls in progress
        self._live: Dict[str, Optional[str]] = {}

    def _end_all(self) -> None:
        b = self._backend
        for cid in [c for c in self._live.values() if c]:
            b._call(b._thd_guard, b._thd_kill, cid).addErrback(lambda f: None)

    def _config(self, request: StudentRequest) -> Dict[str, Any]:
        from .docker import docker_sdk

        docker = docker_sdk()
        grader = self._backend._container_config(self._image, self._folder)
        mem = f"{max(request.memory_mb or 0, _MIN_MEM_MB)}m" if request.memory_mb else grader["mem_limit"]
        cwd = request.cwd if _inside(request.cwd, self._student, "/task/student") else ""
        labels = dict(grader["labels"])
        labels[LABEL_STUDENT] = request.rid
        config = dict(grader)
        for key in ("environment", "mounts", "working_dir", "command", "network_mode", "labels", "mem_limit"):
            config.pop(key, None)
        config.update(
            command=["/bin/sh", "-c", f'exec "$@" <{STDIN_MOUNT}', "run_student", *request.argv],
            working_dir=cwd or self._student,
            environment={
                "PATH": DEFAULT_PATH,
                "HOME": self._student,
                "TMPDIR": "/tmp",
                "LANG": "C.UTF-8",
                "INGINIOUS_STUDENT": self._student,
            },
            mounts=[
                docker.types.Mount(self._student, self._folder.student_dir, type="bind", read_only=False),
                docker.types.Mount("/task/student", self._folder.student_dir, type="bind", read_only=False),
                docker.types.Mount(STDIN_MOUNT, request.stdin_path, type="bind", read_only=True),
            ],
            tmpfs={"/tmp": "size=64m,mode=1777"},
            network_mode=f"container:{self._run.container_id}" if request.share_network else "none",
            labels=labels,
            mem_limit=mem,
            memswap_limit=mem,
        )
        return config

    async def _launch(self, request: StudentRequest) -> StudentOutcome:
        b = self._backend
        if self._stopping:
            return StudentOutcome(EXIT_FAILED, stderr=b"run_student: the job is ending\n")
        self._live[request.rid] = None
        cid: Optional[str] = None
        try:
            cid = await b._call(b._thd_guard, _thd_create, self._config(request))
            self._live[request.rid] = cid
            if self._stopping:
                return StudentOutcome(EXIT_FAILED, stderr=b"run_student: the job is ending\n")
            await b._call(b._thd_guard, b._thd_start, cid)
            reactor = b._reactor
            timed_out: List[str] = []

            def wall() -> None:
                timed_out.append("wall")
                b._call(b._thd_guard, b._thd_kill, cid).addErrback(lambda f: None)

            timer = reactor.callLater(max(request.hard_time, 0.1), wall) if request.hard_time else None
            try:
                status = await self._supervise(cid, request, timed_out)
            finally:
                if timer is not None and timer.active():
                    timer.cancel()
            out, err, oom = await b._call(b._thd_guard, _thd_output, cid, b._limits)
            if timed_out:
                code = EXIT_TIMEOUT
            elif oom or (status == 137 and self._sigkill_is_oom()):
                code = EXIT_OOM
            elif self._stopping:
                code = EXIT_FAILED
            else:
                code = status
            return StudentOutcome(code, out, err)
        except Exception as e:
            self.log.warn("run_student: {rid} failed: {e}", rid=request.rid, e=str(e))
            return StudentOutcome(EXIT_FAILED, stderr=f"run_student: cannot run the command: {e}\n".encode())
        finally:
            self._live.pop(request.rid, None)
            if cid is not None:
                # off the grader's critical path: it gets its answer first; stop() waits for this
                removal = b._call(b._thd_guard, b._thd_remove, cid)
                removal.addErrback(lambda f, cid=cid: b._orphans.add(cid))
                self._waits.append(removal)
                removal.addBoth(lambda r, d=removal: self._waits.remove(d))

    def _sigkill_is_oom(self) -> bool:
        """Under a runtime other than runc, a SIGKILL the agent did not send is the memory limit's.

        gVisor's sandbox is killed as a whole when its memory cgroup is full, and
        the engine does not always flag that as an OOM kill.
        """
        runtime = self._backend._runtimes.get(self._folder.job.environment)
        return runtime not in (None, "runc") and not self._stopping

    async def _supervise(self, cid: str, request: StudentRequest, timed_out: List[str]) -> int:
        b = self._backend
        while True:
            status = await b._call(b._thd_guard, b._thd_wait, cid, b._poll)
            if status is not None:
                return int(status)
            if timed_out or self._stopping:
                await b._call(b._thd_guard, b._thd_kill, cid)
            elif request.cpu_time:
                used = await b._call(b._thd_guard, b._thd_cpu_seconds, cid)
                if used is not None and used > request.cpu_time:
                    timed_out.append("cpu")
                    await b._call(b._thd_guard, b._thd_kill, cid)


def _inside(cwd: str, *students: str) -> bool:
    """Whether ``cwd`` exists in the student's container: a student folder, or the task folder above it."""
    for student in students:
        if cwd == student or cwd.startswith(student + "/") or cwd == student.rsplit("/", 1)[0]:
            return True
    return False


def _thd_create(client: Any, config: Dict[str, Any]) -> str:
    return str(client.containers.create(**config).id)


def _thd_output(client: Any, cid: str, limits: Any) -> Any:
    state = client.api.inspect_container(cid).get("State", {})
    out = client.api.logs(cid, stdout=True, stderr=False)[: limits.max_stdout]
    err = client.api.logs(cid, stdout=False, stderr=True)[: limits.max_stderr]
    return out, err, bool(state.get("OOMKilled"))
