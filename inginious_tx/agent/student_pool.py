"""run_student's containers prepared ahead (Docker agent, helper mode), on :mod:`.container_pool`.

A grader's ``run_student`` call costs a container creation and start (some
0.2 s alone, much more under load).  With ``--option student_pool_max=N``
(default: ``pool_max``; 0: off; at most the slots) the agent keeps, per
environment, up to N student containers ("siblings") created and started
ahead of demand, sized by the calls seen (the rules of
:class:`.ContainerPool`).  A call takes one if it does not share the
grader's network, else it gets its container made as without the pool.

**The student folder, mounted after the container started.**  A sibling's
mounts are fixed when it is created, before any job exists, but it must see
the student folder of the job that takes it.  So each sibling has an *area*
of the agent's, ``WORK/student-XXXX.stdin`` (root, 0700, in the agent's 0700
work folder), which the agent binds on itself and makes a **shared** mount
(:func:`.job_disk.bind_shared`), holding:

- ``student/``: an empty folder (root, 0700), bind-mounted in the sibling at
  ``/job/task/student`` and ``/task/student`` with ``rslave`` propagation: a
  mount the agent later makes *on* it is also made there, in the running
  container; nothing mounted in the container comes back;
- ``stdin``: an empty file (root, 0444), bind-mounted read-only at
  ``/inginious/stdin``; the call's standard input is written into that very
  file at take time (same inode: no mount needed);
- the agent's owner mark (:mod:`._leftovers`), so that the next agent
  removes a killed agent's areas: their mounts first, then the folders.

The sibling runs ``/bin/sh -s`` (under the image's init, as today's student
containers) reading its standard input, to which the agent stays attached.

**Taking one** (:meth:`StudentPool.acquire`): the agent opens the job's
``task/student`` exactly as without the pool (:func:`._beneath.open_job_dir`:
no link followed, a folder on the job's own disk, else the call answers 254)
and binds *that descriptor* on the area's ``student/``; the mount propagates
into the sibling.  Before anything of the student runs, the agent checks,
from the host, that ``/job/task/student`` and ``/task/student`` seen from the
sibling's first process (``/proc/PID/root``, the PID and its start time
recorded when the sibling started) are that very folder (same device and
inode).  If not (a runtime that does not propagate mounts into a running
container, an agent in another mount namespace than the engine), the
sibling is removed, the call gets its container made as without the pool,
and the environment is not pooled again (logged once).  Then the call's
memory limit is applied with ``docker update`` (a sibling is made with the
limit of its key's last call, so that usually none is needed), and the
agent writes on the sibling's standard input, once, ``cd`` to the call's
working folder and ``exec`` of the very command a container made for the
call would run.  Time limits are the agent's timers, as without the pool.
Output, exit status and out-of-memory are read from the engine as without
the pool.  What the command can tell apart: its container's first process
is ``docker-init -- /bin/sh -s`` (``/proc/1/cmdline``), and
``/proc/self/mountinfo`` shows the empty ``student/`` under the job's
folder at both paths.  After the call the sibling is removed, then the area's mounts are
undone and the area removed; a sibling is never used twice.

**gVisor.**  ``runsc`` does not show mounts made after the sandbox started
(checked: with the bind made, the sandbox still saw the empty 0700 folder,
"Permission denied", and ``/proc/PID/root/job/task/student`` did not
exist), so siblings are made only for runtimes that share the host's mount
propagation: the engine's default, ``runc`` and ``io.containerd.runc.v2``;
the take-time check also catches a default runtime that is not runc.

**Not yet: INGInious images.**  Their student containers (the image's
``_run_student_intern``, :mod:`.inginious_job`) are made per call.  The same
way would fit them: a maker whose areas hold three staging folders
(``/task/student``, ``/task/systemfiles``, ``/course/common/student``) and a
file for the parent's socket, mounted ``rslave``; at take the checked
folders and the hard-linked socket are bound there, the same
``/proc/PID/root`` check made, then the waiting shell told to ``exec`` the
image's program.

Everything Docker goes through the backend's callables (see
:class:`DockerStudentMaker`); blocking functions are prefixed ``thd_``.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..messages import BackendNewJob
from ._beneath import open_job_dir
from ._leftovers import OWNER_FILE, STDIN_SUFFIX, UNMARKED_AREA_PREFIX, mark_job, unmount_under
from .container_pool import ContainerPool, IContainerMaker, KeyStats, NotReady, PooledContainer, Unpoolable
from .docker_pool import close_socket, discard_waiting, line_open, thd_update_memory
from .job_disk import bind_fd, bind_shared, detach
from .job_folder import JobFolder

__all__ = [
    "StudentKey", "Sibling", "ClaimedStudent", "DockerStudentMaker", "StudentPool", "NotPropagated", "SiblingGone",
    "LABEL_STUDENT_POOL", "STAGE", "STDIN_FILE", "WAIT_COMMAND", "POOLABLE_RUNTIMES", "student_pool_options",
    "settings_of", "placeholder_job", "go_script", "thd_make_area", "thd_claim", "thd_release_area",
]  # fmt: skip

#: On every sibling made ahead (the grader pool's label, with another value).
LABEL_STUDENT_POOL = "org.inginious-tx.pool"
#: In an area: the folder the job's student folder is bound on, and the standard input's file.
STAGE = "student"
STDIN_FILE = "stdin"
#: Area names: ``AREA_PREFIX`` + the agent's pid + ``-`` + random + ``.stdin`` (a name the
#: leftovers' sweep knows: it removes a dead agent's area even when killed before its mark was written).
AREA_PREFIX = UNMARKED_AREA_PREFIX
#: What a sibling runs until its call: a shell reading its commands on stdin.
WAIT_COMMAND = ["/bin/sh", "-s"]
#: Runtimes that show a running container the mounts propagated to it (None: the engine's default).
POOLABLE_RUNTIMES = {None, "runc", "io.containerd.runc.v2"}
#: The memory limit (MB) of a key's first siblings, before any call said its own.
FIRST_MEM_MB = 64
#: Create arguments a sibling sets otherwise than the call's own container (compared without them).
_LATER = ("command", "working_dir", "labels", "mounts", "mem_limit", "memswap_limit", "stdin_open")


class NotPropagated(Exception):
    """The job's folder bound in the area is not what the sibling sees: this host cannot pool siblings."""


class SiblingGone(Exception):
    """The sibling's first process ended before its call started (the call makes its own container)."""


@dataclass(frozen=True)
class StudentKey:
    """What a sibling is fixed to (the rest is the backend's, the same for all)."""

    environment: str
    image: str
    runtime: Optional[str]

    def __str__(self) -> str:
        return f"run_student in {self.environment} ({self.runtime or 'default runtime'})"


@dataclass
class Sibling:
    """A sibling's own: its area, the socket on its stdin, its first process, its settings."""

    area: str
    socket: Any
    #: the host pid of its first process, and that process's start time (a pid is reused)
    pid: int
    pid_start: Optional[str]
    #: its create arguments but the fields set otherwise (:func:`settings_of`)
    settings: Dict[str, Any]
    mem_mb: int


@dataclass
class ClaimedStudent:
    """A sibling given to one run_student call: the job's folder is in it, its limit applied."""

    container_id: str
    key: StudentKey
    sibling: Sibling


def student_pool_options(options: Dict[str, Any], slots: int) -> Dict[str, Any]:
    """The sibling pool's settings: ``student_pool_max`` (default: off, or ``pool_max`` when that
    option is given; at most the slots), ``pool_concurrency`` and ``pool_half_life`` as the grader
    pool's; raises ValueError on bad ones."""

    def number(key: str, default: Any, kind: Callable[[Any], Any] = int) -> Any:
        try:
            value = kind(options.get(key, default))
        except (TypeError, ValueError):
            raise ValueError(f"option {key}: not a number: {options.get(key)!r}") from None
        if value < 0:
            raise ValueError(f"option {key}: must not be negative")
        return value

    most = min(number("student_pool_max", number("pool_max", 0)), slots)
    return {
        "max_per_key": most,
        "max_total": slots,
        "concurrency": max(1, number("pool_concurrency", 2)),
        "half_life": max(0.1, number("pool_half_life", 60.0, float)),
    }


def settings_of(config: Dict[str, Any]) -> Dict[str, Any]:
    """``config`` without what a sibling sets otherwise; mounts as (target, type, read-only)."""
    out = {k: v for k, v in config.items() if k not in _LATER}
    out["mounts"] = [(m.get("Target"), m.get("Type"), bool(m.get("ReadOnly"))) for m in config.get("mounts") or []]
    return out


def placeholder_job(environment: str, mem_mb: int) -> BackendNewJob:
    """A job standing for the ones to come, to build a sibling's settings from."""
    return BackendNewJob(
        (b"pool", "pool"), "pool", "pool", {}, environment, False, 0, None, mem_mb, False, None,
    )  # fmt: skip


def go_script(command: Sequence[str], cwd: str) -> bytes:
    """What a sibling is told, once: go to the call's working folder, become the call's command."""
    # the waiting shell's traces out of the environment: the command's shell counts its level from
    # scratch and has no previous folder, as in a container started for the call
    lines = [
        f"cd {shlex.quote(cwd)} || exit 126",
        "unset OLDPWD; SHLVL=0; export SHLVL",
        "exec " + " ".join(shlex.quote(a) for a in command),
    ]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


# -- the area (blocking) ---------------------------------------------------------------------


def thd_make_area(work_dir: str) -> str:
    """A new area in ``work_dir``: marked, a shared mount of its own, with ``student/`` and ``stdin``."""
    area = tempfile.mkdtemp(prefix=f"{AREA_PREFIX}{os.getpid()}-", suffix=STDIN_SUFFIX, dir=work_dir)  # 0700
    try:
        mark_job(area[: -len(STDIN_SUFFIX)])  # first: a kill from here on leaves something swept
        bind_shared(area)
        os.mkdir(os.path.join(area, STAGE), 0o700)
        fd = os.open(
            os.path.join(area, STDIN_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444
        )
        os.close(fd)
    except BaseException:
        thd_release_area(area)
        raise
    return area


def thd_release_area(area: str) -> None:
    """Undo the area's mounts (the job's folder, then its own), then remove its known entries.

    Never recursive: a job's folder still bound on ``student/`` (an unmount
    that did not happen) makes ``rmdir`` fail, and the job's files stay.
    """
    unmount_under(area)
    for name in (STDIN_FILE, OWNER_FILE):
        try:
            os.unlink(os.path.join(area, name))
        except FileNotFoundError:
            pass
    for path in (os.path.join(area, STAGE), area):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass


def _pid_start(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _check_seen(fd: int, sibling: Sibling, targets: Sequence[str]) -> None:
    """Raise :class:`NotPropagated` unless every ``target`` in the sibling is the folder ``fd``."""
    want = os.fstat(fd)
    if sibling.pid <= 0 or _pid_start(sibling.pid) != sibling.pid_start:
        raise SiblingGone("the sibling's first process is gone")
    for target in targets:
        try:
            st = os.stat(f"/proc/{sibling.pid}/root{target}", follow_symlinks=False)
        except OSError as e:
            raise NotPropagated(f"{target} cannot be seen in the sibling ({e.strerror})") from None
        if (st.st_dev, st.st_ino) != (want.st_dev, want.st_ino):
            raise NotPropagated(f"{target} in the sibling is not the job's folder (mount not propagated)")
    if _pid_start(sibling.pid) != sibling.pid_start:  # the same process all along
        raise SiblingGone("the sibling's first process is gone")


def _copy_into(source: str, target: str) -> None:
    """Write the bytes of ``source`` into the existing file ``target`` (its inode, bound in the sibling)."""
    out = os.open(target, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not source:
            return
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            while os.sendfile(out, src, None, 1 << 20) > 0:
                pass
        finally:
            os.close(src)
    finally:
        os.close(out)


def thd_claim(folder: JobFolder, sibling: Sibling, targets: Sequence[str], stdin_path: str) -> None:
    """Bind the job's checked ``task/student`` in the sibling's area, check the sibling sees it,
    write the call's standard input (blocking).

    Raises :class:`._beneath.PathEscape` (not the job's folder: refused),
    :class:`NotPropagated` or :class:`SiblingGone`; nothing stays bound then.
    """
    fd = open_job_dir(folder.root, "task/student")
    try:
        stage = os.path.join(sibling.area, STAGE)
        bind_fd(fd, stage)
        try:
            _check_seen(fd, sibling, targets)
            _copy_into(stdin_path, os.path.join(sibling.area, STDIN_FILE))
        except BaseException:
            detach(stage)
            raise
    finally:
        os.close(fd)


# -- the socket on a sibling's stdin ------------------------------------------------------------


def _thd_alive(client: Any, cid: str, pid: int) -> bool:
    import docker

    try:
        state = client.api.inspect_container(cid).get("State") or {}
    except docker.errors.NotFound:
        return False
    return bool(state.get("Running")) and not state.get("Paused") and state.get("Pid") == pid


@implementer(IContainerMaker)
class DockerStudentMaker:
    """Makes, checks and removes siblings (see the module docstring).

    ``engine(f, *args)`` runs ``f(client, *args)`` in the backend's threads
    (errors translated); ``call(f, *args)`` runs blocking ``f`` there;
    ``config(key, area, mem_mb)`` gives a sibling's create arguments;
    ``work_dir()`` the agent's work folder (blocking); ``remove(client,
    cid)`` removes a container (blocking); ``orphan(cid)``: a container
    whose removal failed, for the backend to retry; ``ready_runtime(runtime)``:
    False while the backend has not probed the runtime yet.
    """

    log = Logger()

    def __init__(
        self,
        engine: Callable[..., Deferred],
        call: Callable[..., Deferred],
        config: Callable[[StudentKey, str, int], Dict[str, Any]],
        work_dir: Callable[[], str],
        remove: Callable[[Any, str], None],
        orphan: Callable[[str], None] = lambda cid: None,
        ready_runtime: Callable[[Optional[str]], bool] = lambda runtime: True,
    ) -> None:
        self._engine = engine
        self._call = call
        self._config = config
        self._work_dir = work_dir
        self._remove = remove
        self._orphan = orphan
        self._ready_runtime = ready_runtime
        #: the memory limit (MB) a key's next sibling is made with
        self.mem_for: Callable[[StudentKey], int] = lambda key: FIRST_MEM_MB
        #: keys found not poolable at take time: made no more
        self.refused: Dict[StudentKey, str] = {}

    def make(self, key: Hashable) -> Deferred:
        assert isinstance(key, StudentKey)
        if key in self.refused:
            raise Unpoolable(self.refused[key])
        if key.runtime not in POOLABLE_RUNTIMES:
            raise Unpoolable(f"runtime {key.runtime} does not show mounts made after a container started")
        if not self._ready_runtime(key.runtime):
            raise NotReady(f"runtime {key.runtime} not probed yet")
        return self._engine(self._thd_make, key)

    def _thd_make(self, client: Any, key: StudentKey) -> PooledContainer:
        entrypoint = (client.api.inspect_image(key.image).get("Config") or {}).get("Entrypoint")
        if entrypoint:
            raise Unpoolable(f"the image {key.image} has an entrypoint ({entrypoint})")
        area = thd_make_area(self._work_dir())
        cid: Optional[str] = None
        sock: Any = None
        try:
            mem_mb = self.mem_for(key)
            config = self._config(key, area, mem_mb)
            settings = settings_of(config)
            cid = str(client.containers.create(**config).id)
            sock = client.api.attach_socket(cid, params={"stdin": 1, "stream": 1})
            client.api.start(cid)
            pid = int((client.api.inspect_container(cid).get("State") or {}).get("Pid") or 0)
            return PooledContainer(key, cid, Sibling(area, sock, pid, _pid_start(pid), settings, mem_mb))
        except BaseException:
            if sock is not None:
                close_socket(sock)
            if cid is not None:
                try:
                    self._remove(client, cid)
                except Exception:
                    self._orphan(cid)
            thd_release_area(area)
            raise

    def alive(self, container: PooledContainer) -> Deferred:
        """Running, the same first process, and our line to its stdin still open."""
        sibling: Sibling = container.data
        if not line_open(sibling.socket):
            return succeed(False)
        return self._engine(_thd_alive, container.container_id, sibling.pid)

    def discard(self, container: PooledContainer) -> Deferred:
        """Remove the sibling, then its area (its mounts first); never fails."""
        return ensureDeferred(self._discard(container))

    async def _discard(self, container: PooledContainer) -> None:
        sibling: Sibling = container.data
        await discard_waiting(self, container, sibling.socket, thd_release_area, sibling.area)


class StudentPool:
    """The Docker backend's siblings: which a run_student call may take, and how it takes one."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        maker: DockerStudentMaker,
        settings: Dict[str, Any],
        *,
        engine: Callable[..., Deferred],
        call: Callable[..., Deferred],
    ) -> None:
        self.pool = ContainerPool(
            clock, maker, max_per_key=settings["max_per_key"], max_total=settings["max_total"],
            concurrency=settings["concurrency"], half_life=settings["half_life"], role="student",
        )  # fmt: skip
        self._maker = maker
        self._engine = engine
        self._call = call
        #: per key, the memory limit of its last call: its next siblings are made with it
        self._last_mem: Dict[StudentKey, int] = {}
        maker.mem_for = lambda key: self._last_mem.get(key, FIRST_MEM_MB)
        #: how many taken siblings had their memory limit changed (``docker update``)
        self.updates = 0

    def key_for(self, environment: str, image: str, runtime: Optional[str]) -> Optional[StudentKey]:
        """The key of the siblings a call of ``environment`` may take; None: none (not poolable)."""
        key = StudentKey(environment, image, runtime)
        if runtime not in POOLABLE_RUNTIMES or key in self._maker.refused:
            return None
        return key

    def acquire(
        self, key: StudentKey, folder: JobFolder, stdin_path: str, wanted: Dict[str, Any], mem_mb: int,
        targets: Sequence[str],
    ) -> Deferred:  # fmt: skip
        """A sibling with the job's folder in it, the call's input and memory limit (a
        :class:`ClaimedStudent`), or None: the call makes its own.  ``wanted``: the
        :func:`settings_of` of the container the call would get.  Fails with
        :class:`._beneath.PathEscape` when ``task/student`` is not the job's folder."""
        return ensureDeferred(self._acquire(key, folder, stdin_path, wanted, mem_mb, targets))

    async def _acquire(
        self, key: StudentKey, folder: JobFolder, stdin_path: str, wanted: Dict[str, Any], mem_mb: int,
        targets: Sequence[str],
    ) -> Optional[ClaimedStudent]:  # fmt: skip
        self._last_mem[key] = mem_mb
        pooled = await self.pool.take(key)
        if pooled is None:
            return None
        sibling: Sibling = pooled.data
        if sibling.settings != wanted:
            self.log.error(
                "student pool: a sibling of {key} differs from the call's container ({diff}); not used",
                key=key,
                diff=sorted(k for k in set(wanted) | set(sibling.settings) if wanted.get(k) != sibling.settings.get(k)),
            )
            await self._maker.discard(pooled)
            return None
        try:
            await self._call(thd_claim, folder, sibling, targets, stdin_path)
        except NotPropagated as e:
            self.refuse(key, str(e))
            await self._maker.discard(pooled)
            return None
        except SiblingGone:
            self.pool.stats()[key].dead += 1
            await self._maker.discard(pooled)
            return None
        except BaseException:  # PathEscape (refused) included: the sibling goes, unused
            await self._maker.discard(pooled)
            raise
        if sibling.mem_mb != mem_mb:
            self.updates += 1
            try:
                await self._engine(thd_update_memory, pooled.container_id, f"{mem_mb}m")
            except Exception as e:
                self.refuse(key, f"cannot change a sibling's memory limit ({e})")
                await self._maker.discard(pooled)
                return None
        return ClaimedStudent(pooled.container_id, key, sibling)

    def refuse(self, key: StudentKey, why: str) -> None:
        """Pool ``key`` no more (a take-time check failed): its calls make their own containers."""
        if key not in self._maker.refused:
            self._maker.refused[key] = why
            self.log.warn("student pool: no sibling made ahead for {key} any more: {why}", key=key, why=why)
        self.pool.flush(key)

    def thd_go(self, claimed: ClaimedStudent, command: List[str], cwd: str) -> None:
        """Start the call's command in its sibling (blocking): one write on its stdin, then closed."""
        sock = claimed.sibling.socket
        raw = getattr(sock, "_sock", sock)
        try:
            raw.sendall(go_script(command, cwd))
        finally:
            close_socket(sock)

    def release(self, claimed: ClaimedStudent) -> Deferred:
        """After the call: remove the sibling, then its area (never fails)."""
        return self._maker.discard(PooledContainer(claimed.key, claimed.container_id, claimed.sibling))

    def record(self, key: StudentKey, hit: bool, seconds: float) -> None:
        """The call's container was running ``seconds`` after the call was taken."""
        self.pool.record_ready(key, seconds, hit)

    def stats(self) -> Dict[Hashable, KeyStats]:
        return self.pool.stats()

    def image_changed(self, environment: str) -> None:
        """The environment's image is another one now: drop its siblings made from the old one."""
        for key in list(self.pool.stats()):
            if isinstance(key, StudentKey) and key.environment == environment:
                self.pool.flush(key)

    def close(self) -> Deferred:
        return self.pool.close()
