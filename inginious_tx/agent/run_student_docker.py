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

**Which folder is mounted.**  The grader owns ``task/`` and may have put a
link (to ``/``, to another job's folder) where ``student/`` was; the engine,
root on the host, would follow it.  So the engine never gets a path inside
the job folder: the agent opens ``task/student`` from the job folder without
following links (:mod:`._beneath`), checks that it is a folder on the job's
own disk, and binds that very folder (``/proc/self/fd/N``) on
``JOB.stdin/student-ID``, in its own 0700 folder beside the job folder, which
no job reaches; that path is the source the engine mounts.  It is unmounted
when the student's container is removed.  An agent that cannot mount (not
root) moves the checked folder there instead and moves it back once the
container has started (the grader does not see ``student/`` meanwhile).  A
link or anything else is refused: the call answers 254 saying why.

**Containers made ahead** (``student_pool_max``, :mod:`.student_pool`): a call
that does not share the grader's network takes a container that already
waits, made with the same settings (compared at take time) but the staging
folder of its own area as the source of the student mounts; the checked
folder is bound there when the call takes it, and reaches the container by
mount propagation.  Its command, output, exit status and limits are the
same; without one ready, the call gets its container made as above.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import succeed
from twisted.logger import Logger

from ._beneath import PathEscape, open_job_dir
from ._leftovers import STDIN_SUFFIX
from .job_disk import bind_fd, can_mount, detach
from .job_folder import DEFAULT_PATH, JobFolder
from .run_student import EXIT_FAILED, EXIT_OOM, EXIT_TIMEOUT, LauncherBase, StudentOutcome, StudentRequest
from .student_pool import (
    LABEL_STUDENT_POOL,
    STAGE,
    STDIN_FILE,
    WAIT_COMMAND,
    ClaimedStudent,
    StudentKey,
    StudentPool,
    settings_of,
)

__all__ = [
    "DockerStudentLauncher", "LABEL_STUDENT", "STDIN_MOUNT", "student_command", "student_config", "sibling_config",
]  # fmt: skip

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

    def _mem_mb(self, request: StudentRequest) -> int:
        """The call's memory limit in MB: its own (at least the engine's minimum), else the job's."""
        if request.memory_mb:
            return max(request.memory_mb, _MIN_MEM_MB)
        return max(int(self._folder.job.mem_limit), _MIN_MEM_MB)

    def _cwd(self, request: StudentRequest) -> str:
        """The caller's working folder when the student's container has it, else the student folder."""
        return request.cwd if _inside(request.cwd, self._student, "/task/student") else self._student

    def _config(self, request: StudentRequest, source: str) -> Dict[str, Any]:
        grader = self._backend._container_config(self._image, self._folder)
        labels = dict(grader["labels"])
        labels[LABEL_STUDENT] = request.rid
        mem = f"{self._mem_mb(request)}m"
        return student_config(
            grader, self._student, source, request.stdin_path, command=student_command(request.argv),
            working_dir=self._cwd(request), labels=labels, mem=mem,
            network_mode=f"container:{self._run.container_id}" if request.share_network else "none",
        )  # fmt: skip

    async def _take_sibling(self, request: StudentRequest) -> Tuple[Optional[ClaimedStudent], Optional[StudentKey]]:
        """A sibling made ahead for the call (:mod:`.student_pool`), or None: the call makes its own.

        Raises :class:`PathEscape` as staging the folder would.
        """
        b = self._backend
        pool: Optional[StudentPool] = getattr(b, "student_pool", None)
        if pool is None or request.share_network:
            return None, None
        env = self._folder.job.environment
        key = pool.key_for(env, self._image, b._runtimes.get(env))
        if key is None:
            return None, None
        wanted = settings_of(self._config(request, "<staged>"))
        claimed = await pool.acquire(
            key, self._folder, request.stdin_path, wanted, self._mem_mb(request), (self._student, "/task/student")
        )
        return claimed, key

    async def _launch(self, request: StudentRequest) -> StudentOutcome:
        b = self._backend
        if self._stopping:
            return StudentOutcome(EXIT_FAILED, stderr=b"run_student: the job is ending\n")
        self._live[request.rid] = None
        cid: Optional[str] = None
        staged: Optional[Tuple[str, bool]] = None
        claimed: Optional[ClaimedStudent] = None
        key: Optional[StudentKey] = None
        reactor = b._reactor
        arrived = reactor.seconds()
        try:
            try:
                claimed, key = await self._take_sibling(request)
                if claimed is None:
                    staged = await b._call(thd_stage_student, self._folder, request.rid)
            except PathEscape as e:
                self.log.warn("run_student: {rid} refused: {e}", rid=request.rid, e=e.strerror)
                return StudentOutcome(EXIT_FAILED, stderr=f"run_student: refused: {e.strerror}\n".encode())
            if claimed is not None:
                cid = claimed.container_id
                self._live[request.rid] = cid
                if self._stopping:
                    return StudentOutcome(EXIT_FAILED, stderr=b"run_student: the job is ending\n")
                await b._call(b.student_pool.thd_go, claimed, student_command(request.argv), self._cwd(request))
            else:
                assert staged is not None
                cid = await b._call(b._thd_guard, _thd_create, self._config(request, staged[0]))
                self._live[request.rid] = cid
                if self._stopping:
                    return StudentOutcome(EXIT_FAILED, stderr=b"run_student: the job is ending\n")
                await b._call(b._thd_guard, b._thd_start, cid)
                if not staged[1]:  # moved, not bound: the container holds it now; give it back to the grader
                    moved, staged = staged, None
                    await b._call(thd_unstage_student, self._folder, request.rid, moved)
            if key is not None:
                b.student_pool.record(key, claimed is not None, reactor.seconds() - arrived)
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
            # off the grader's critical path: it gets its answer first; stop() waits for this
            ending: Any = None
            if claimed is not None:  # the sibling, then its area (the job's folder unbound there)
                ending = b.student_pool.release(claimed)
            elif cid is not None:
                ending = b._call(b._thd_guard, b._thd_remove, cid)
                ending.addErrback(lambda f, cid=cid: b._orphans.add(cid))
            if staged is not None:  # after the container is gone (the engine holds its mount till then)
                ending = ending or succeed(None)
                ending.addCallback(lambda _, s=staged: b._call(thd_unstage_student, self._folder, request.rid, s))
                ending.addErrback(
                    lambda f: self.log.warn("run_student: cannot unmount its folder: {e}", e=f.getErrorMessage())
                )
            if ending is not None:
                self._waits.append(ending)
                ending.addBoth(lambda r, d=ending: self._waits.remove(d))

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


def student_command(argv: List[str]) -> List[str]:
    """What a student's container runs: the call's command, its standard input from the agent's copy."""
    return ["/bin/sh", "-c", f'exec "$@" <{STDIN_MOUNT}', "run_student", *argv]


def student_config(
    grader: Dict[str, Any], student: str, source: str, stdin_source: str, *, command: List[str], working_dir: str,
    network_mode: str, labels: Dict[str, str], mem: str, propagation: Optional[str] = None,
) -> Dict[str, Any]:  # fmt: skip
    """A student's container's create arguments, from the grader's (``grader``: the backend's
    ``_container_config``): the same isolation, the student's folder ``source`` at ``student``
    and ``/task/student`` (with ``propagation``, for a sibling made ahead), its standard input
    ``stdin_source`` read-only at :data:`STDIN_MOUNT`."""
    from .docker import docker_sdk

    docker = docker_sdk()
    bind = {"propagation": propagation} if propagation else {}
    config = dict(grader)
    for key in ("environment", "mounts", "working_dir", "command", "network_mode", "labels", "mem_limit"):
        config.pop(key, None)
    config.update(
        command=command,
        working_dir=working_dir,
        environment={
            "PATH": DEFAULT_PATH,
            "HOME": student,
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "INGINIOUS_STUDENT": student,
        },
        mounts=[
            docker.types.Mount(student, source, type="bind", read_only=False, **bind),
            docker.types.Mount("/task/student", source, type="bind", read_only=False, **bind),
            docker.types.Mount(STDIN_MOUNT, stdin_source, type="bind", read_only=True),
        ],
        tmpfs={"/tmp": "size=64m,mode=1777"},
        network_mode=network_mode,
        labels=labels,
        mem_limit=mem,
        memswap_limit=mem,
    )
    return config


def sibling_config(
    grader: Dict[str, Any], student: str, area: str, mem_mb: int, drop_labels: Tuple[str, ...] = ()
) -> Dict[str, Any]:
    """A sibling's create arguments (:mod:`.student_pool`): a call's, with the area's folder and
    file as sources, ``rslave`` propagation, no network, a shell waiting on its standard input,
    and the pool's label instead of the job's (``drop_labels``)."""
    labels = {k: v for k, v in grader["labels"].items() if k not in drop_labels}
    labels[LABEL_STUDENT_POOL] = "student"
    config = student_config(
        grader, student, os.path.join(area, STAGE), os.path.join(area, STDIN_FILE), command=list(WAIT_COMMAND),
        working_dir="/", network_mode="none", labels=labels, mem=f"{mem_mb}m", propagation="rslave",
    )  # fmt: skip
    config["stdin_open"] = True
    return config


def _inside(cwd: str, *students: str) -> bool:
    """Whether ``cwd`` exists in the student's container: a student folder, or the task folder above it."""
    for student in students:
        if cwd == student or cwd.startswith(student + "/") or cwd == student.rsplit("/", 1)[0]:
            return True
    return False


def _stage_path(folder: JobFolder, rid: str) -> str:
    return os.path.join(folder.root + STDIN_SUFFIX, f"student-{rid}")


def thd_stage_student(folder: JobFolder, rid: str) -> Tuple[str, bool]:
    """Put the job's checked ``task/student`` at a path no job can change (blocking).

    Returns (that path, True if bound; False if moved there).  Raises
    :class:`PathEscape` when ``task/student`` is not the job's own folder.
    """
    stage = _stage_path(folder, rid)
    if can_mount():
        fd = open_job_dir(folder.root, "task/student")
        try:
            os.mkdir(stage, 0o700)
            try:
                bind_fd(fd, stage)
            except BaseException:
                os.rmdir(stage)
                raise
        finally:
            os.close(fd)
        return stage, True
    # no mount: move the folder (same file system: no tmpfs without root) into the agent's
    task = open_job_dir(folder.root, "task")
    try:
        parent = os.open(folder.root + STDIN_SUFFIX, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            name = os.path.basename(stage)
            os.rename("student", name, src_dir_fd=task, dst_dir_fd=parent)
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_dev != os.fstat(task).st_dev:
                os.rename(name, "student", src_dir_fd=parent, dst_dir_fd=task)
                raise PathEscape(errno.EXDEV, "task/student is not a folder of the job (a link or a file)")
        finally:
            os.close(parent)
    except FileNotFoundError:
        raise PathEscape(errno.ENOENT, "the job has no task/student folder") from None
    finally:
        os.close(task)
    return stage, False


def thd_unstage_student(folder: JobFolder, rid: str, staged: Tuple[str, bool]) -> None:
    """Undo :func:`thd_stage_student` (blocking)."""
    stage, bound = staged
    if bound:
        detach(stage)
        os.rmdir(stage)
        return
    try:
        task = open_job_dir(folder.root, "task")
    except OSError:
        return  # the grader took task/ away: the folder stays the agent's, removed with the job
    try:
        parent = os.open(folder.root + STDIN_SUFFIX, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.rename(os.path.basename(stage), "student", src_dir_fd=parent, dst_dir_fd=task)
        except OSError:
            pass  # the grader made another student/ meanwhile: it keeps it
        finally:
            os.close(parent)
    finally:
        os.close(task)


def _thd_create(client: Any, config: Dict[str, Any]) -> str:
    return str(client.containers.create(**config).id)


def _thd_output(client: Any, cid: str, limits: Any) -> Any:
    state = client.api.inspect_container(cid).get("State", {})
    out = client.api.logs(cid, stdout=True, stderr=False)[: limits.max_stdout]
    err = client.api.logs(cid, stdout=False, stderr=True)[: limits.max_stderr]
    return out, err, bool(state.get("OOMKilled"))
