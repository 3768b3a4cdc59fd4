"""One job on an INGInious grading image, run the INGInious way (the Docker agent's second mode).

The grading container runs the image's own program (its ``CMD``), which
waits for a ``start`` message on its standard input; the agent attaches to
the container, sends it, then answers what the program asks until it sends
its ``result`` and exits (the contract: :mod:`.inginious_image` and
``docs/inginious-images.rst``).  ``run_student`` calls get sibling student
containers made by the agent, which run the image's ``_run_student_intern``
and reach the grader through the unix socket it made in ``/sockets``.

What the agent keeps of its own rules: the job's limits as capped by the
operator's maxima (CPU time through the engine's statistics, wall time by a
reactor timer, memory without swap, a pids limit), no Docker socket in any
container, no network unless the job has it, the capabilities the image's
program needs and no others (it runs as root in its container and drops to
``worker`` for the grader), ``no-new-privileges``, the job folder on its own
tmpfs and tmpfs for the container's writable scratch folders, owner labels
on every container, and a bound on the student containers of a job.

Every engine call and every write to an attached socket runs in the Docker
backend's thread pool; each attached socket is read by a thread of its own
(it blocks for the container's whole life); the reactor thread only routes
messages.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.logger import Logger

from ..messages import BackendNewJob
from ._leftovers import LABEL_OWNER
from ._oom import oom_kills
from .inginious_folder import SOCKET_ID, IngiFolder, link_socket, prepare_ingi_job, remove_ingi_job
from .inginious_image import (
    RETVAL_ERROR,
    RETVAL_NOT_AVAILABLE,
    RETVAL_OVERFLOW,
    RETVAL_TIMEOUT,
    AttachDemuxer,
    MessageDecoder,
    ProtocolError,
    encode_message,
    result_from_message,
)
from .job_disk import disk_full
from .job_folder import TaskError
from .result import JobResult

__all__ = [
    "IngiImage", "IngiSession", "LABEL_STUDENT", "GRADER_CAPS", "STUDENT_CAPS", "MIN_MEMORY_MB", "agent_labels",
    "common_config", "grader_config", "work_dir", "thd_attach",
]  # fmt: skip

#: Label of a student container: its socket id.
LABEL_STUDENT = "org.inginious-tx.student"
#: What the image's program does as root in the grading container: chown/chmod the job's
#: files to ``worker``, then setuid to it; nothing else is granted.
GRADER_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"]
#: ``_run_student_intern``: reaches the grader's socket, closes ``scripts/``, setuid to ``worker``.
STUDENT_CAPS = ["DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"]
#: Runtimes whose containers share the host's kernel: the image's run_student then passes the
#: student's streams over a unix socket between the containers; under any other (gVisor), the
#: agent relays them (the image's path for Kata).
SHARED_KERNEL_RUNTIMES = (None, "runc", "crun", "io.containerd.runc.v2")
#: INGInious' smallest memory limit (MB).
MIN_MEMORY_MB = 20
#: Student containers of one job: at once, and in all.
MAX_STUDENTS_AT_ONCE = 4
MAX_STUDENTS = 1000
#: Open files per container (soft, hard).
NOFILE = 4096
#: The process limit the image's program gives the grader (RLIMIT_NPROC).
_NPROC = 1000
#: The writable folders of the image, on tmpfs (counted in the container's memory).
_SCRATCH = ("/tmp", "/var/tmp", "/archive", "/.__input", "/.__output")
#: Messages ignored that are logged, per job (a flood is not).
_LOGGED_IGNORED = 10
#: How long the end of the attached stream is awaited once the container has exited.
_READER_GRACE = 10.0


@dataclass(frozen=True)
class IngiImage:
    """An environment served the INGInious way: the image to run, under which runtime."""

    image_id: str
    runtime: Optional[str] = None


def _state(job: BackendNewJob) -> str:
    state = job.inputdata.get("@state", "") if isinstance(job.inputdata, dict) else ""
    return state if isinstance(state, str) else ""


def _limit(asked: Any, cap: float) -> float:
    """INGInious' rule: a request of 0 or none is the job's own limit, and never more than it."""
    if isinstance(asked, bool) or not isinstance(asked, (int, float)) or asked != asked or asked <= 0:
        return cap
    return min(asked, cap)


def agent_labels(b: Any) -> Dict[str, str]:
    """The labels of every container of the agent ``b`` (no job's)."""
    from .docker import LABEL_AGENT

    labels = dict(b._extra_labels)
    labels[LABEL_AGENT] = b.instance_id
    labels[LABEL_OWNER] = b._owner
    return labels


def common_config(b: Any, runtime: Optional[str], mem_mb: float) -> Dict[str, Any]:
    """What grading and student containers of the agent ``b`` share: limits and isolation."""
    from .docker import docker_sdk
    from .runtimes import PidsPolicy

    docker = docker_sdk()
    mem = f"{max(int(mem_mb), MIN_MEMORY_MB)}m"
    pids = b._pids_policies.get(runtime or "", PidsPolicy(True)).container_options(b._pids_limit, b._sandbox_pids)
    # the image's program sets RLIMIT_NPROC to 1000 for the grader: a lower hard limit (the
    # fallback of runtimes that cannot take the pids limit) would make that fail
    nproc = [docker.types.Ulimit(name="nproc", soft=_NPROC, hard=_NPROC)] if pids.get("ulimits") else []
    pids["ulimits"] = [*nproc, docker.types.Ulimit(name="nofile", soft=NOFILE, hard=NOFILE)]
    return dict(
        runtime=runtime,
        mem_limit=mem,
        memswap_limit=mem,
        **pids,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        init=True,
        log_config=docker.types.LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
        detach=True,
    )


def grader_config(
    b: Any, image: IngiImage, folder: IngiFolder, mem_mb: float, network: bool, labels: Dict[str, str]
) -> Dict[str, Any]:
    """Everything a grading container of the agent ``b`` is created with: its isolation lives here,
    for a job's own container and for one made ahead (:mod:`.inginious_pool`) alike."""
    from .docker import docker_sdk

    docker = docker_sdk()

    def bind(target: str, source: str, ro: bool = False) -> Any:
        return docker.types.Mount(target, source, type="bind", read_only=ro)

    size = b._disk_mb or 256
    config = common_config(b, image.runtime, mem_mb)
    config.update(
        image=image.image_id,
        stdin_open=True,
        network_mode="bridge" if network else "none",
        cap_add=list(GRADER_CAPS),
        labels=labels,
        tmpfs={path: f"size={size}m,mode=1777" for path in _SCRATCH},
        mounts=[
            bind("/task", folder.task),
            bind("/task/student", folder.student),
            bind("/sockets", folder.sockets),
            bind("/course/common", folder.common, True),
            bind("/course/common/student", folder.common_student, True),
        ],
    )
    return config


def work_dir(b: Any) -> str:
    """The agent's work folder, made on first use (blocking)."""
    with b._client_lock:
        if b._work_dir is None:
            b._work_dir = tempfile.mkdtemp(prefix="inginious-tx-docker-")
        return str(b._work_dir)


class IngiSession:
    """Runs one job (``run``, a :class:`.docker._Run`) on an INGInious image for ``backend``."""

    log = Logger()

    def __init__(self, backend: Any, run: Any, image: IngiImage, images: Dict[str, IngiImage]) -> None:
        self._b = backend
        self._run = run
        self._image = image
        self._images = images
        self._job: BackendNewJob = run.job
        self._folder: Optional[IngiFolder] = None
        self._sock: Any = None
        self._write_lock = threading.Lock()
        self._reader: Optional[Deferred] = None
        self._result: Any = None
        self._got_result = False
        #: fired when the result message is in
        self._result_in: Deferred[None] = Deferred()
        #: student container id -> socket id
        self._students: Dict[str, str] = {}
        self._student_tasks: List[Deferred] = []
        self._serial = 0
        self._closing = False
        self._ignored = 0
        #: the chain of writes to containers, in order
        self._writes: Deferred[Any] = succeed(None)
        #: runtimes without a shared kernel (gVisor): student containers talk through the agent
        self._relay = image.runtime not in SHARED_KERNEL_RUNTIMES
        #: student container id -> (attached socket, reader done) when relayed
        self._relayed: Dict[str, Tuple[Any, Deferred]] = {}
        #: the job was answered: what still runs winds down (a lingering container is killed)
        self._answered = False
        #: the grading container's supervision, when the answer does not wait for it
        self._supervising: Optional[Deferred[int]] = None
        #: its OOM counter file (None: unknown) and count at start, and the count read at its result
        self._oom: Tuple[Optional[str], int] = (None, 0)
        self._oom_at_result: Optional[Deferred[Optional[int]]] = None

    # -- the job -----------------------------------------------------------------

    async def run_job(self) -> JobResult:
        b, run, job = self._b, self._run, self._job
        pool = getattr(b, "ingi_pool", None)
        arrived = b._reactor.seconds()
        claimed = None
        if pool is not None:
            pool.job_started()
        try:
            # -- take a grading container made ahead (.inginious_pool), or make one -------------
            try:
                claimed = await pool.acquire(job, self._image) if pool is not None else None
                if claimed is not None:
                    self._folder, self._sock, run.container_id = claimed.folder, claimed.socket, claimed.container_id
                    self._oom = (claimed.oom_file, claimed.oom_before)
                else:
                    self._folder = await b._call(self._thd_prepare)
            except TaskError as e:
                return JobResult.crash(str(e))
            if run.stopped:
                return JobResult(run.stopped[0], run.stopped[1], state=_state(job))
            if claimed is None:
                await self._probe_runtime()
                run.container_id = await b._call(b._thd_guard, _thd_create, self._grader_config())
                if run.stopped:
                    return JobResult(run.stopped[0], run.stopped[1], state=_state(job))
                self._sock = await b._call(b._thd_guard, thd_attach, run.container_id)
            self._reader = self._spawn_reader(self._sock)
            if claimed is None:
                await b._call(b._thd_guard, b._thd_start, run.container_id)
            await self._write(self._start_message())
            if pool is not None:
                pool.record(job, self._image, claimed is not None, b._reactor.seconds() - arrived)
            b._arm_timers(run)
            run.up.callback(run.container_id)
            if claimed is not None:
                return await self._answer_early(run.container_id)
            status = await self._supervise(run.container_id)
            await self._reader_end()
            return await self._outcome(run.container_id, status)
        except Exception as e:
            from .docker import DockerEngineError

            if isinstance(e, DockerEngineError):
                self.log.error("docker backend: {error}", error=str(e))
                return JobResult.crash(str(e))
            self.log.failure("docker backend: unexpected failure running job {job_id!r}", job_id=job.job_id)
            return JobResult.crash(f"the docker agent failed to run the job: {e!r}")
        finally:
            self._answered = True
            if pool is not None:
                pool.job_ended()
            if claimed is not None and not b._closed:
                # the answer does not wait for the container's end and removal (close() does)
                cleanup = ensureDeferred(self._cleanup_later())
                b._cleanups.add(cleanup)
                cleanup.addBoth(lambda _: b._cleanups.discard(cleanup))
            else:
                await self._cleanup_later()

    async def _answer_early(self, cid: str) -> JobResult:
        """The outcome as soon as it is known: once the result is in (the image's program sends it
        last; its exit costs 10-35 ms more), without the engine's wait; what decides a result (a stop
        by the agent, an out-of-memory kill, a full disk) is still checked.  Without a result, as usual."""
        supervising = self._supervising = ensureDeferred(self._supervise(cid))
        reader = self._reader
        assert reader is not None
        ended: Deferred[None] = Deferred()

        def wake(passed: Any) -> Any:
            if not ended.called:
                ended.callback(None)
            return passed

        reader.addBoth(wake)
        supervising.addBoth(wake)
        self._result_in.addBoth(wake)
        await ended
        if self._got_result and self._run.stopped is None:
            return await self._outcome(cid, None)
        status = await supervising
        await self._reader_end()
        return await self._outcome(cid, status)

    async def _cleanup_later(self) -> None:
        """Once answered: wait for the container's end if an early answer did not (it is killed if it
        lingers), then clean up."""
        if self._supervising is not None:
            try:
                await self._supervising
            except Exception as e:
                self.log.info("inginious job: waiting for a grading container failed: {e}", e=str(e))
        await self._cleanup()

    def _thd_prepare(self) -> IngiFolder:
        b, job = self._b, self._job
        return prepare_ingi_job(b._config.tasks_dir or "", job.course_id, job.task_id, work_dir(b), b._disk_mb)

    async def _probe_runtime(self) -> None:
        """Once per runtime, as in helper mode: can it take the pids limit? (see :mod:`.runtimes`)"""
        from .docker import LABEL_AGENT
        from .runtimes import thd_probe_pids

        b, runtime = self._b, self._image.runtime
        if runtime is None or runtime in b._pids_policies:
            return
        config = self._common_config(self._job.mem_limit)
        config.update(
            image=self._image.image_id,
            command=["/bin/sh", "-c", "(:) & (:) & wait"],
            network_mode="none",
            labels={LABEL_AGENT: b.instance_id, LABEL_OWNER: b._owner},
        )
        policy = await b._call(b._thd_guard, thd_probe_pids, config)
        if runtime not in b._pids_policies:
            b._pids_policies[runtime] = policy
            if not policy.cgroup:
                self.log.error(
                    "docker backend: runtime {runtime} cannot run a container with a pids limit ({why}); "
                    "its jobs get RLIMIT_NPROC instead",
                    runtime=runtime,
                    why=policy.reason,
                )

    def _start_message(self) -> Dict[str, Any]:
        job = self._job
        message: Dict[str, Any] = {
            "type": "start",
            "input": job.inputdata,
            # ssh debug goes through the agent's own SSH server: the grader runs as usual
            "debug": True if job.debug == "ssh" else bool(job.debug),
            "envtypes": {"docker": True},
            "run_as_root": False,
            "shared_kernel": not self._relay,
        }
        if job.run_cmd:
            message["run_cmd"] = job.run_cmd
        return message

    def _labels(self) -> Dict[str, str]:
        from .docker import LABEL_JOB

        labels = agent_labels(self._b)
        labels[LABEL_JOB] = f"{bytes(self._job.job_id[0]).hex()}/{self._job.job_id[1]}"
        return labels

    def _common_config(self, mem_mb: float) -> Dict[str, Any]:
        return common_config(self._b, self._image.runtime, mem_mb)

    def _grader_config(self) -> Dict[str, Any]:
        folder, job = self._folder, self._job
        assert folder is not None
        return grader_config(self._b, self._image, folder, job.mem_limit, bool(job.enable_network), self._labels())

    # -- the attached stream ------------------------------------------------------

    def _spawn_reader(self, sock: Any, handler: Any = None, on_error: Any = None) -> Deferred[None]:
        """Read ``sock`` in a thread of its own (it blocks for the container's whole life, so not in
        the backend's pool, whose threads must stay free for the engine calls); fires at its end."""
        done: Deferred[None] = Deferred()
        call = self._b._reactor.callFromThread

        def read() -> None:
            try:
                self._thd_read(sock, handler, on_error)
            except Exception as e:  # never expected: _thd_read handles the stream's errors
                call(self.log.error, "inginious job: reader failed: {e}", e=repr(e))
            finally:
                call(done.callback, None)

        threading.Thread(target=read, name="inginious-reader", daemon=True).start()
        return done

    def _thd_read(self, sock: Any, handler: Any = None, on_error: Any = None) -> None:
        """Read a container's stdout until it ends; hand each message to the reactor
        (to ``handler``, by default :meth:`_on_message`)."""
        handler = handler or self._on_message
        on_error = on_error or self._on_protocol_error
        limits = self._b._limits
        biggest = max(16 << 20, 2 * int(limits.max_archive) + int(limits.max_stdout) + int(limits.max_stderr))
        demux, decoder = AttachDemuxer(biggest + 8), MessageDecoder(biggest)
        call = self._b._reactor.callFromThread
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for payload in demux.feed(data):
                    for message in decoder.feed(payload):
                        call(handler, message)
        except ProtocolError as e:
            call(on_error, str(e))
        except OSError:
            return  # closed by the cleanup

    def _thd_write(self, sock: Any, data: bytes) -> None:
        with self._write_lock:
            sock.sendall(data)

    def _write(self, message: Dict[str, Any], sock: Any = None) -> Deferred[bool]:
        """Send ``message`` to the grading container (or to ``sock``), after every earlier write:
        the order of the messages is kept (student output before the student's exit status)."""
        sock = sock if sock is not None else self._sock
        data = encode_message(message)

        def send(_: Any) -> Any:
            if sock is None:
                return False
            d = self._b._call(self._thd_write, sock, data)
            d.addCallback(lambda _: True)
            d.addErrback(self._write_failed)
            return d

        done: Deferred[bool] = Deferred()

        def notify(ok: Any) -> None:
            done.callback(ok is True)

        self._writes.addCallback(send)
        self._writes.addBoth(notify)
        return done

    def _write_failed(self, failure: Any) -> bool:
        self.log.info("inginious job: cannot write to a container: {e}", e=failure.getErrorMessage())
        return False

    async def _reader_end(self, reader: Optional[Deferred] = None) -> None:
        """Wait (a bounded time) for a reader to reach the end of its stream."""
        reader = reader if reader is not None else self._reader
        if reader is None or reader.called:
            return
        waiter: Deferred[None] = Deferred()

        def wake(passed: Any = None) -> Any:
            if not waiter.called:
                waiter.callback(None)
            return passed

        timer = self._b._reactor.callLater(_READER_GRACE, wake)
        reader.addBoth(wake)
        await waiter
        if timer.active():
            timer.cancel()

    def _on_protocol_error(self, text: str) -> None:
        self.log.warn("inginious job {job_id}: {text}", job_id=self._job.job_id, text=text)
        self._b._stop(self._run, ("crash", f"The grading container broke the INGInious protocol: {text}."))

    def _on_message(self, message: Dict[str, Any]) -> None:
        kind = message["type"]
        try:
            if kind == "result":
                self._result, self._got_result = message.get("result"), True
                if self._oom[0] is not None:  # what the kernel counted by then (the group may be gone at the end)
                    self._oom_at_result = self._b._call(oom_kills, self._oom[0])
                if not self._result_in.called:
                    self._result_in.callback(None)
            elif kind == "run_student":
                d = ensureDeferred(self._run_student(message))
                d.addErrback(lambda f: self.log.failure("inginious job: run_student failed", f))
                self._student_tasks.append(d)
            elif kind == "ssh_student":
                text = "This agent does not serve ssh_student (run_student with ssh): it publishes no port."
                self._b._stop(self._run, ("crash", text))
            elif kind in ("run_student_init", "stdin", "student_signal") and self._relay:
                self._relay_to_student(message)
            elif kind == "ssh_debug":
                self.log.info("inginious job: ssh_debug from the container ignored (debug goes through the agent)")
            else:
                # run_student_init, stdin, student_signal under a shared kernel, or unknown: a few logged
                self._ignored += 1
                if self._ignored <= _LOGGED_IGNORED:
                    self.log.info("inginious job: message {kind!r} from the container ignored", kind=kind[:40])
        except Exception:
            self.log.failure("inginious job: bad {kind!r} message from the container", kind=kind[:40])

    # -- student containers --------------------------------------------------------

    def _relay_to_student(self, message: Dict[str, Any]) -> None:
        """Pass a message of the grader's run_student to its student container (relayed runtimes)."""
        cid = message.get("student_container_id")
        entry = self._relayed.get(cid) if isinstance(cid, str) else None
        if entry is None:
            self.log.info("inginious job: {kind} for an unknown student container ignored", kind=message["type"])
            return
        kind = message["type"]
        if kind == "run_student_init":
            if message.get("ssh") or message.get("user") != "worker":
                text = "This agent does not serve ssh_student nor student containers as root."
                self._b._stop(self._run, ("crash", text))
                return
            out = {k: message.get(k) for k in ("socket_id", "command", "teardown_script", "working_dir", "ssh", "user")}
            out.update(type=kind, student_container_id=cid)
        elif kind == "stdin":
            out = {"type": kind, "student_container_id": cid, "message": message.get("message")}
        else:
            out = {"type": kind, "student_container_id": cid, "signal_data": message.get("signal_data")}
        self._write(out, entry[0])

    def _from_student(self, socket_id: str, message: Dict[str, Any]) -> None:
        """A student container's output, passed on to the grader unchanged (relayed runtimes)."""
        if message["type"] in ("stdout", "stderr") and message.get("socket_id") == socket_id:
            if isinstance(message.get("message"), bytes):
                self._write({"type": message["type"], "socket_id": socket_id, "message": message["message"]})

    async def _retval(self, socket_id: str, retval: int) -> None:
        await self._write({"type": "run_student_retval", "retval": int(retval), "socket_id": socket_id})

    async def _run_student(self, message: Dict[str, Any]) -> None:
        b, job = self._b, self._job
        socket_id = message.get("socket_id")
        if not isinstance(socket_id, str) or not SOCKET_ID.fullmatch(socket_id):
            self.log.warn("inginious job: run_student with an invalid socket id ignored")
            return
        if message.get("ssh"):
            self._on_message({"type": "ssh_student"})
            return
        if message.get("run_as_root"):
            return await self._retval(socket_id, RETVAL_NOT_AVAILABLE)
        env = message.get("environment") or job.environment
        image = self._images.get(env) if isinstance(env, str) else None
        if image is None or self._closing or self._folder is None:
            return await self._retval(socket_id, RETVAL_ERROR)
        if len(self._students) >= MAX_STUDENTS_AT_ONCE or self._serial >= MAX_STUDENTS:
            self.log.warn("inginious job {job_id}: too many student containers", job_id=job.job_id)
            return await self._retval(socket_id, RETVAL_ERROR)
        mem = _limit(message.get("memory_limit"), job.mem_limit)
        cpu = _limit(message.get("time_limit"), job.time_limit)
        hard_cap = job.hard_time_limit if job.hard_time_limit and job.hard_time_limit > 0 else 3 * job.time_limit
        hard = _limit(message.get("hard_time_limit"), hard_cap)
        self._serial += 1
        source = None
        if not self._relay:
            try:
                source = await b._call(link_socket, self._folder, socket_id, self._serial)
            except ValueError as e:
                self.log.warn("inginious job: run_student refused: {e}", e=str(e))
                return await self._retval(socket_id, RETVAL_ERROR)
        config = self._student_config(image, source, mem, bool(message.get("share_network")), socket_id)
        cid: Optional[str] = None
        try:
            cid = await b._call(b._thd_guard, _thd_create, config)
            self._students[cid] = socket_id
            if self._closing:
                return await self._retval(socket_id, RETVAL_ERROR)
            if self._relay:
                sock = await b._call(b._thd_guard, thd_attach, cid)
                reader = self._spawn_reader(sock, lambda m: self._from_student(socket_id, m), self._log_student)
                self._relayed[cid] = (sock, reader)
            await self._write({"type": "run_student_started", "socket_id": socket_id, "container_id": cid})
            await b._call(b._thd_guard, b._thd_start, cid)
            retval = await self._supervise_student(cid, cpu, hard)
            if cid in self._relayed:
                await self._reader_end(self._relayed[cid][1])  # its last output before its exit status
            await self._retval(socket_id, retval)
        except Exception as e:
            self.log.warn("inginious job: student container failed: {e}", e=str(e))
            await self._retval(socket_id, RETVAL_ERROR)
        finally:
            if cid is not None:
                self._students.pop(cid, None)
                relayed = self._relayed.pop(cid, None)
                if relayed is not None:
                    await b._call(_thd_close, relayed[0])
                await self._remove(cid)

    def _log_student(self, text: str) -> None:
        self.log.warn("inginious job: a student container broke the protocol: {text}", text=text)

    def _student_config(
        self, image: IngiImage, socket_path: Optional[str], mem: float, share: bool, sid: str
    ) -> Dict[str, Any]:
        from .docker import docker_sdk

        docker = docker_sdk()
        folder = self._folder
        assert folder is not None
        grader = self._run.container_id
        config = self._common_config(mem)
        labels = self._labels()
        labels[LABEL_STUDENT] = sid
        config.update(
            image=image.image_id,
            runtime=image.runtime,
            # the second argument says where the grader is: "kata" makes the image talk through the agent
            command=["_run_student_intern", image.runtime or "runc", "kata" if self._relay else "docker"],
            stdin_open=self._relay,
            network_mode=f"container:{grader}" if share and grader else "none",
            cap_add=list(STUDENT_CAPS),
            labels=labels,
            tmpfs={p: f"size={self._b._disk_mb or 256}m,mode=1777" for p in ("/tmp", "/var/tmp")},
            mounts=[
                docker.types.Mount("/task/student", folder.student, type="bind"),
                docker.types.Mount("/task/systemfiles", folder.systemfiles, type="bind", read_only=True),
                docker.types.Mount("/course/common/student", folder.common_student, type="bind", read_only=True),
            ]
            + ([docker.types.Mount("/__parent.sock", socket_path, type="bind")] if socket_path else []),
        )
        return config

    async def _supervise_student(self, cid: str, cpu: float, hard: float) -> int:
        """Wait for a student container within its limits; its retval as the image expects it."""
        b = self._b
        why: List[int] = []

        def kill(code: int) -> None:
            if not why:
                why.append(code)
                b._call(b._thd_guard, b._thd_kill, cid).addErrback(lambda f: None)

        timer = b._reactor.callLater(max(hard, 0.1), kill, RETVAL_TIMEOUT)
        try:
            while True:
                status = await b._call(b._thd_guard, b._thd_wait, cid, b._poll)
                if status is not None:
                    break
                if self._closing:
                    kill(RETVAL_ERROR)
                elif cpu:
                    used = await b._call(b._thd_guard, b._thd_cpu_seconds, cid)
                    if used is not None and used > cpu:
                        kill(RETVAL_TIMEOUT)
        finally:
            if timer.active():
                timer.cancel()
        if why:
            return why[0]
        if await b._call(b._thd_guard, _thd_oom, cid):
            return RETVAL_OVERFLOW
        return int(status)

    # -- the end -------------------------------------------------------------------

    async def _supervise(self, cid: str) -> int:
        """Wait for the grading container in short slices; between them, check CPU time and disk."""
        b, run, folder = self._b, self._run, self._folder
        cpu_limit = max(int(self._job.time_limit), 0)
        while True:
            status = await b._call(b._thd_guard, b._thd_wait, cid, b._poll)
            if status is not None:
                return int(status)
            if run.stopped is not None or self._answered:
                await b._call(b._thd_guard, b._thd_kill, cid)
                continue
            if folder is not None and folder.disk_mb and await b._call(disk_full, folder.root, folder.disk_mb):
                b._stop(run, ("overflow", f"The job filled its disk space of {folder.disk_mb} MB."))
            elif cpu_limit:
                used = await b._call(b._thd_guard, b._thd_cpu_seconds, cid)
                if used is not None and used > cpu_limit:
                    b._stop(run, ("timeout", f"The job used more than {cpu_limit} seconds of CPU time."))

    async def _outcome(self, cid: str, status: Optional[int]) -> JobResult:
        b, run, job = self._b, self._run, self._job
        state = _state(job)
        if run.stopped is not None:
            return JobResult(run.stopped[0], run.stopped[1], state=state)
        folder = self._folder
        # both at once: the answer waits for the slower only
        checks: List[Deferred[Any]] = [ensureDeferred(self._oom_killed(cid, status is None))]
        if folder is not None and folder.disk_mb:
            checks.append(b._call(disk_full, folder.root, folder.disk_mb))
        found = []
        for ok, value in await DeferredList(checks, consumeErrors=True):
            if not ok:
                value.raiseException()
            found.append(value)
        if found[0]:
            return JobResult("overflow", f"The job used more than its memory limit ({job.mem_limit} MB).", state=state)
        if folder is not None and folder.disk_mb and found[1]:
            return JobResult("overflow", f"The job filled its disk space of {folder.disk_mb} MB.", state=state)
        if not self._got_result:
            return JobResult(
                "crash", f"The grading container ended (exit status {status}) without sending a result.", state=state
            )
        return result_from_message(self._result, state)

    async def _oom_killed(self, cid: str, early: bool) -> bool:
        """Did the kernel kill a process of the grading container for memory?  Answered early, from
        its memory cgroup's counter (now, else as read at its result): the engine learns it later,
        and answers slowly while the container exits.  Else, and when unknown, the engine's word."""
        path, before = self._oom
        if early and path is not None:
            now = await self._b._call(oom_kills, path)
            if now is None and self._oom_at_result is not None:
                now = await self._oom_at_result
            if now is not None:
                return now > before
        return bool(await self._b._call(self._b._thd_guard, _thd_oom, cid))

    async def _remove(self, cid: str) -> None:
        b = self._b
        try:
            await b._call(b._thd_guard, b._thd_remove, cid)
        except Exception as e:
            b._orphans.add(cid)
            self.log.warn("docker backend: cannot remove container {cid} now ({e}); will retry", cid=cid, e=str(e))

    async def _cleanup(self) -> None:
        """Students, then the grader, then the folder; never raises."""
        b = self._b
        self._closing = True
        for cid in list(self._students):
            await self._remove(cid)
        if self._sock is not None:
            await b._call(_thd_close, self._sock)
        if self._run.container_id is not None:
            await self._remove(self._run.container_id)
        for d in list(self._student_tasks):
            if not d.called:
                await d
        if self._folder is not None:
            try:
                await b._call(remove_ingi_job, self._folder.root)
            except Exception:
                self.log.failure("docker backend: cannot remove job folder {root}", root=self._folder.root)


def _thd_create(client: Any, config: Dict[str, Any]) -> str:
    return str(client.containers.create(**config).id)


def thd_attach(client: Any, cid: str) -> Any:
    """The container's attached stdin/stdout as a plain blocking socket."""
    raw = client.api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 0, "stream": 1})
    sock = getattr(raw, "_sock", raw)
    sock.settimeout(None)
    return sock


def _thd_close(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _thd_oom(client: Any, cid: str) -> bool:
    return bool(client.api.inspect_container(cid).get("State", {}).get("OOMKilled"))
