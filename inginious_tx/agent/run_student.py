"""``run_student``: the student's code apart from the grader, run by the agent on the grader's request.

The grader calls ``run_student [--time S] [--hard-time S] [--memory MB]
[--share-network] CMD [ARGS...]`` (a POSIX sh helper, :func:`.task.helpers_dir`).
It cannot start a sandbox itself, so it asks the agent, through files in the
job's **exchange folder** (``JOB/.run_student``, ``$INGINIOUS_RUN_STUDENT``):
plain files work the same in every sandbox (a container under runc or gVisor,
whose ``--network=none`` and file-only gofer rule out sockets, or a local
process), and need nothing but ``sh``, ``cat``, ``mv`` and ``mktemp``.

The exchange, for one call::

    req.ID/          made by run_student: arg.0 .. arg.N-1 (one argument per
                     file, any bytes), options (argc=, time=, hard_time=,
                     memory=, share_network=, cwd= lines), stdin (all of it)
    ready.ID/        the same folder, renamed when complete: the agent sees it
    run.ID/          renamed by the agent when it takes the request
    done.ID/         renamed by the agent at the end, with stdout, stderr and
                     exit; run_student prints them, exits with that status
                     and removes the folder

The agent watches the folder with inotify (and, as a safety net, looks again
every second), serves a job's requests one at a time, and reads them without
following symbolic links, with caps (:data:`MAX_ARGS_BYTES`,
:data:`MAX_STDIN`, at most :data:`MAX_QUEUED` requests read ahead): a grader
cannot make the agent read or write anything else on the host.  Standard input is copied to a private file of the agent
before the student's sandbox sees it; standard output and error are returned
when the command ends (not streamed), cut at the job's output caps.

Every request is answered, whatever happens to the others: a bad field
(a limit that is not a finite number in range, ...) or a failure of the
agent while reading it gets :data:`EXIT_FAILED`.  The copies of standard
input are on the agent's disk, beside the job folder, so they are bounded
per job: a copy is removed as soon as its request is answered, and the copies
of a job's requests in progress hold at most :data:`MAX_STDIN_TOTAL` bytes
together (a request beyond that is answered :data:`EXIT_FAILED`).

Exit statuses: the command's own; :data:`EXIT_OOM` (252) when it ran out of
memory, :data:`EXIT_TIMEOUT` (253) when it ran out of time, and
:data:`EXIT_FAILED` (254) when run_student or the agent failed (bad request,
engine error); the reason is then on standard error.

Limits: ``--time`` (CPU seconds), ``--hard-time`` (wall-clock seconds) and
``--memory`` (MB) default to the job's and are capped at the job's; without
``--hard-time``, three times the CPU time.  The student's run also ends with
the job.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tempfile
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .._reactor import CommonReactor
from ..messages import BackendNewJob
from .job_folder import JobFolder

__all__ = [
    "EXCHANGE",
    "ENV_VAR",
    "EXIT_OOM",
    "EXIT_TIMEOUT",
    "EXIT_FAILED",
    "MAX_ARGS_BYTES",
    "MAX_STDIN",
    "MAX_QUEUED",
    "MAX_STDIN_TOTAL",
    "MAX_TIME",
    "MAX_MEMORY_MB",
    "StudentRequest",
    "StudentOutcome",
    "IStudentLauncher",
    "LauncherBase",
    "StudentService",
    "make_exchange",
    "limits_for",
]

#: The exchange folder, in the job folder.
EXCHANGE = ".run_student"
#: The environment variable that tells run_student where it is.
ENV_VAR = "INGINIOUS_RUN_STUDENT"
EXIT_OOM = 252
EXIT_TIMEOUT = 253
EXIT_FAILED = 254
#: Caps on a request: its arguments together, and its standard input.
MAX_ARGS_BYTES = 1 << 20
MAX_ARGS = 4096
MAX_STDIN = 16 << 20
#: The copies of standard input of one job's requests in progress, together (bytes on the agent's disk).
MAX_STDIN_TOTAL = 2 * MAX_STDIN
#: Largest time (s) and memory (MB) a request may ask (then capped at the job's).
MAX_TIME = 7 * 24 * 3600.0
MAX_MEMORY_MB = 1 << 20
#: Requests of one job taken at a time (read, their standard input copied); more wait their turn.
MAX_QUEUED = 4
_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class RequestError(Exception):
    """A request that cannot be served (answered with :data:`EXIT_FAILED` and this text).

    ``unexpected``: the agent's own failure behind it (logged), None for a bad request.
    """

    def __init__(self, text: str, unexpected: Optional[BaseException] = None) -> None:
        super().__init__(text)
        self.unexpected = unexpected


@dataclass(frozen=True)
class StudentRequest:
    """One run_student call, read and checked."""

    rid: str
    argv: List[str]
    cpu_time: float
    hard_time: float
    memory_mb: int
    share_network: bool
    cwd: str
    #: the agent's private copy of the standard input
    stdin_path: str
    #: its size (counted in the job's :data:`MAX_STDIN_TOTAL`)
    stdin_size: int = 0


@dataclass
class StudentOutcome:
    """How the student's command ended."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""


class IStudentLauncher(Interface):
    """Runs a job's run_student requests in its backend's kind of sandbox."""

    def launch(request: StudentRequest) -> Deferred:
        """Run the request; fires with a :class:`StudentOutcome` (never fails)."""

    def stop() -> Deferred:
        """End whatever runs now (the job is ending)."""


@implementer(IStudentLauncher)
class LauncherBase:
    """What every :class:`IStudentLauncher` shares: it tracks the calls in
    progress, so that :meth:`stop` fires only once each has answered.

    Subclasses write ``_launch`` (a coroutine to a :class:`StudentOutcome`)
    and ``_end_all`` (end what runs now, without waiting).
    """

    def __init__(self) -> None:
        self._waits: List[Deferred] = []
        self._stopping = False

    def launch(self, request: StudentRequest) -> Deferred:
        d: Deferred = ensureDeferred(self._launch(request))
        self._waits.append(d)

        def forget(result: Any) -> Any:
            self._waits.remove(d)
            return result

        return d.addBoth(forget)

    def stop(self) -> Deferred:
        self._stopping = True
        self._end_all()
        return DeferredList(list(self._waits), consumeErrors=True) if self._waits else succeed(None)

    async def _launch(self, request: StudentRequest) -> StudentOutcome:
        raise NotImplementedError

    def _end_all(self) -> None:
        raise NotImplementedError


def make_exchange(folder: JobFolder) -> str:
    """Make the job's exchange folder (blocking); the grader's user gets it with the job folder."""
    path = os.path.join(folder.root, EXCHANGE)
    os.mkdir(path, 0o700)
    return path


def limits_for(
    job: BackendNewJob, cpu: Optional[float], hard: Optional[float], memory: Optional[float]
) -> Tuple[float, float, int]:
    """(CPU s, wall s, MB) for a request: the asked values, by default and at most the job's.

    Raises :class:`RequestError` for a value that is not a finite number in range.
    """
    for key, value, top in (("time", cpu, MAX_TIME), ("hard_time", hard, MAX_TIME), ("memory", memory, MAX_MEMORY_MB)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= top):
            raise RequestError(f"invalid {key} {value!r}: must be a number from 0 to {top:g}")
    job_cpu = float(job.time_limit) if job.time_limit and job.time_limit > 0 else 0.0
    job_hard = float(job.hard_time_limit) if job.hard_time_limit and job.hard_time_limit > 0 else 3 * job_cpu
    job_mem = int(job.mem_limit) if job.mem_limit and job.mem_limit > 0 else 0
    c = min(cpu, job_cpu) if cpu and job_cpu else (cpu or job_cpu)
    h = hard if hard else (3 * c if c else job_hard)
    if job_hard:
        h = min(h, job_hard)
    m = min(int(memory), job_mem) if memory and job_mem else int(memory or job_mem)
    return c, h, m


def _read(dir_fd: int, name: str, cap: int) -> bytes:
    try:
        fd = os.open(name, _FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        raise RequestError(f"the request has no {name}") from None
    except OSError as e:
        raise RequestError(f"cannot read {name} of the request ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RequestError(f"{name} of the request is not a regular file")
        data = b""
        while len(data) <= cap:
            chunk = os.read(fd, min(1 << 20, cap + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > cap:
        raise RequestError(f"{name} of the request is larger than {cap} bytes")
    return data


def _number(options: Dict[str, str], key: str, top: float) -> Optional[float]:
    text = options.get(key, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise RequestError(f"invalid {key} {text[:20]!r}") from None
    if not (math.isfinite(value) and 0 < value <= top):
        raise RequestError(f"invalid {key} {text[:20]!r}: must be a number > 0 and at most {top:g}")
    return value


def _copy_stdin(dir_fd: int, private_dir: str, budget: int = MAX_STDIN_TOTAL) -> Tuple[str, int]:
    """Copy ``stdin`` of the request to a new private file of the agent; return its path and size.

    ``budget``: bytes the job's copies may still take on the agent's disk.
    """
    try:
        src = os.open("stdin", _FILE, dir_fd=dir_fd)
    except OSError as e:
        raise RequestError(f"cannot read the standard input of the request ({e.strerror})") from None
    fd, path = tempfile.mkstemp(prefix="stdin-", dir=private_dir)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise RequestError("the standard input of the request is not a regular file")
        total = 0
        while True:
            chunk = os.read(src, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_STDIN:
                raise RequestError(f"the standard input is larger than {MAX_STDIN} bytes")
            if total > budget:
                raise RequestError(
                    f"the job's calls in progress hold too much standard input (at most {MAX_STDIN_TOTAL} bytes"
                    " together): try again when they end"
                )
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fchmod(fd, 0o444)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    finally:
        os.close(src)
    os.close(fd)
    return path, total


def thd_take(
    exchange: str,
    private_dir: str,
    job: BackendNewJob,
    limit: int = MAX_QUEUED,
    stdin_budget: int = MAX_STDIN_TOTAL,
) -> List[Tuple[str, Any]]:
    """Take up to ``limit`` complete requests (rename ready.ID -> run.ID) and read them (blocking).

    Returns ``(rid, StudentRequest or RequestError)`` pairs: every request taken
    is in it, whatever happened to the others (the caller answers each and
    removes the copies).  ``stdin_budget``: bytes the copies of standard input
    may take together.
    """
    out: List[Tuple[str, Any]] = []
    try:
        base = os.open(exchange, _DIR)
    except OSError:
        return out  # the job folder is gone: the job is over
    try:
        names = sorted(os.listdir(base))
    except OSError:
        os.close(base)
        return out
    try:
        for name in names:
            if len(out) >= limit:
                break
            if not name.startswith("ready."):
                continue
            rid = name[len("ready.") :]
            if not _ID.match(rid):
                continue
            try:
                os.rename(name, f"run.{rid}", src_dir_fd=base, dst_dir_fd=base)
            except OSError:
                continue
            try:
                request = _read_request(base, rid, private_dir, job, stdin_budget)
            except RequestError as e:
                out.append((rid, e))
            except Exception as e:  # the agent's own failure: this request only
                out.append((rid, RequestError(f"the agent could not read the request ({type(e).__name__})", e)))
            else:
                stdin_budget -= request.stdin_size
                out.append((rid, request))
    finally:
        os.close(base)
    return out


def _read_request(
    base: int, rid: str, private_dir: str, job: BackendNewJob, stdin_budget: int = MAX_STDIN_TOTAL
) -> StudentRequest:
    try:
        fd = os.open(f"run.{rid}", _DIR, dir_fd=base)
    except OSError as e:
        raise RequestError(f"the request is not a folder ({e.strerror})") from None
    try:
        options: Dict[str, str] = {}
        for line in _read(fd, "options", 64 << 10).decode("utf-8", "replace").splitlines():
            key, _, value = line.partition("=")
            options[key.strip()] = value
        try:
            argc = int(options.get("argc", ""))
        except ValueError:
            raise RequestError("the request has no argument count") from None
        if not 1 <= argc <= MAX_ARGS:
            raise RequestError(f"a request takes 1 to {MAX_ARGS} arguments, not {argc}")
        argv: List[str] = []
        budget = MAX_ARGS_BYTES
        for i in range(argc):
            data = _read(fd, f"arg.{i}", max(budget, 0))
            budget -= len(data) + 1
            if b"\0" in data:
                raise RequestError(f"argument {i} holds a NUL byte")
            argv.append(data.decode("utf-8", "surrogateescape"))
        cwd = os.path.normpath(options.get("cwd", "").strip() or "/")
        cpu, hard, mem = limits_for(
            job,
            _number(options, "time", MAX_TIME),
            _number(options, "hard_time", MAX_TIME),
            _number(options, "memory", MAX_MEMORY_MB),
        )
        # last: nothing after it may fail, so the copy is always handed over
        stdin_path, stdin_size = _copy_stdin(fd, private_dir, stdin_budget)
        return StudentRequest(
            rid, argv, cpu, hard, mem, options.get("share_network", "0").strip() == "1",
            cwd, stdin_path, stdin_size,
        )  # fmt: skip
    finally:
        os.close(fd)


def thd_answer(exchange: str, rid: str, outcome: StudentOutcome) -> None:
    """Write the outcome in run.ID and rename it done.ID (blocking; never follows links)."""
    try:
        base = os.open(exchange, _DIR)
    except OSError:
        return
    try:
        try:
            fd = os.open(f"run.{rid}", _DIR, dir_fd=base)
        except OSError:
            return  # the grader removed it: nobody waits for the answer
        try:
            for name, data in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
                _write(fd, name, data)
            _write(fd, "exit.tmp", f"{outcome.exit_code}\n".encode())
            os.rename("exit.tmp", "exit", src_dir_fd=fd, dst_dir_fd=fd)
        except OSError:
            pass  # the grader tampered with its own request: it gets what is there
        finally:
            os.close(fd)
        try:
            os.rename(f"run.{rid}", f"done.{rid}", src_dir_fd=base, dst_dir_fd=base)
        except OSError:
            pass
    finally:
        os.close(base)


def _write(dir_fd: int, name: str, data: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fd = os.open(name, _NEW, 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class StudentService:
    """Serves one job's run_student requests with a launcher, one at a time.

    ``call``: runs a blocking function in a thread and returns a Deferred
    (the backend's thread pool).
    """

    log = Logger()

    def __init__(
        self,
        reactor: CommonReactor,
        exchange: str,
        private_dir: str,
        job: BackendNewJob,
        launcher: Any,
        call: Callable[..., Deferred],
        poll_interval: float = 1.0,
    ) -> None:
        self._reactor = reactor
        self.exchange = exchange
        self._private = private_dir
        self._job = job
        self._launcher = launcher
        self._call = call
        self._poll = LoopingCall(self._look)
        self._poll.clock = reactor
        self._poll_interval = poll_interval
        self._notifier: Any = None
        self._looking = False
        self._again = False
        self._queue: Deque[Tuple[str, Any]] = deque()
        self._busy = False
        self._stopped = False
        self.served = 0
        #: bytes of the copies of standard input held now (at most MAX_STDIN_TOTAL)
        self.stdin_held = 0

    def start(self) -> None:
        try:
            from twisted.internet import inotify
            from twisted.python.filepath import FilePath

            self._notifier = inotify.INotify(self._reactor)
            self._notifier.startReading()
            self._notifier.watch(FilePath(self.exchange), mask=inotify.IN_MOVED_TO, callbacks=[lambda *_: self._look()])
        except Exception as e:  # no inotify: the poll alone
            self.log.info("run_student: no inotify ({e}); looking every {t} s", e=e, t=self._poll_interval)
            self._notifier = None
        # inotify sees requests at once (backends start this before the grader); the poll is a
        # safety net, and the only way without inotify
        self._poll.start(
            self._poll_interval if self._notifier is not None else min(self._poll_interval, 0.2), now=False
        )

    def stop(self) -> Deferred:
        """Stop serving; end the student's run in progress."""
        self._stopped = True
        if self._poll.running:
            self._poll.stop()
        if self._notifier is not None:
            notifier, self._notifier = self._notifier, None
            notifier.loseConnection()
        for _, item in self._queue:
            self._release(item)
        self._queue.clear()
        return maybeDeferred(self._launcher.stop)

    def _look(self) -> None:
        if self._stopped:
            return
        if self._looking:
            self._again = True
            return
        room = MAX_QUEUED - len(self._queue) - (1 if self._busy else 0)
        if room <= 0:
            return  # _served looks again
        self._looking = True
        budget = max(MAX_STDIN_TOTAL - self.stdin_held, 0)
        d = self._call(thd_take, self.exchange, self._private, self._job, room, budget)

        def taken(items: List[Tuple[str, Any]]) -> None:
            self._looking = False
            for rid, item in items:
                if isinstance(item, StudentRequest):
                    self.stdin_held += item.stdin_size
                elif isinstance(item, RequestError) and item.unexpected is not None:
                    self.log.error(
                        "run_student: cannot read request {rid}: {e!r}", rid=rid, e=item.unexpected
                    )
            if self._stopped:  # the job ended meanwhile: nobody serves them
                for _, item in items:
                    self._release(item)
                return
            self._queue.extend(items)
            self._next()
            if self._again:
                self._again = False
                self._look()

        def failed(f: Any) -> None:
            self._looking = False
            self.log.error("run_student: cannot read the requests: {e}", e=f.getErrorMessage())

        d.addCallbacks(taken, failed)

    def _next(self) -> None:
        if self._busy or self._stopped or not self._queue:
            return
        rid, item = self._queue.popleft()
        self._busy = True
        ensureDeferred(self._serve(rid, item)).addBoth(self._served)

    def _served(self, _: Any) -> None:
        self._busy = False
        self.served += 1
        self._next()
        self._look()  # requests left waiting while the queue was full

    async def _serve(self, rid: str, item: Any) -> None:
        if isinstance(item, RequestError):
            outcome = StudentOutcome(EXIT_FAILED, stderr=f"run_student: {item}\n".encode())
        else:
            try:
                outcome = await self._launcher.launch(item)
            except Exception as e:
                self.log.error("run_student: the launcher failed on {rid}: {e!r}", rid=rid, e=e)
                outcome = StudentOutcome(EXIT_FAILED, stderr=f"run_student: the agent failed: {e}\n".encode())
            finally:
                self._release(item)
        try:
            await self._call(thd_answer, self.exchange, rid, outcome)
        except Exception as e:
            self.log.error("run_student: cannot answer request {rid}: {e!r}", rid=rid, e=e)

    def _release(self, item: Any) -> None:
        """Remove a request's copy of standard input (once), and count it no more."""
        if isinstance(item, StudentRequest) and item.stdin_path:
            _unlink(item.stdin_path)
            self.stdin_held = max(self.stdin_held - item.stdin_size, 0)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
