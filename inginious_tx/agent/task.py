"""The grading-task contract shared by every agent backend that runs real tasks.

A task is a folder ``TASKS/<course_id>/<task_id>/`` holding an executable
``run`` (any language; the examples are POSIX sh).  For each job the backend
makes a **job folder**, runs ``./run`` (or ``/bin/sh -c RUN_CMD``) in its
``task/`` copy with the environment of :meth:`JobFolder.env`, then turns what
the task wrote into a :class:`~inginious_tx.agent.result.JobResult`::

    JOB/
      task/          private copy of the task folder; the working directory
      task/student/  writable folder for the student's files (created if absent)
      input/         one file per input key: the answer ``getinput KEY`` prints
      input.json     the whole input as JSON (bytes as {"$base64": "..."})
      feedback/      what the feedback-* helpers write; parsed by collect_result
      archive/       files put here come back as the job's gzipped tar archive
      tmp/           TMPDIR

The same helper scripts work wherever the job folder is: at its host path (the
local backend) or mounted in a container (the Docker backend), because every
path reaches them through environment variables (:meth:`JobFolder.env`).

Environment of ``run`` (:meth:`JobFolder.env`): ``PATH`` (helpers first),
``INGINIOUS_JOB``, ``INGINIOUS_TASK`` (also ``HOME``), ``INGINIOUS_STUDENT``,
``INGINIOUS_INPUT``, ``INGINIOUS_FEEDBACK``, ``INGINIOUS_ARCHIVE``, ``TMPDIR``,
``INGINIOUS_COURSE_ID``, ``INGINIOUS_TASK_ID``, ``INGINIOUS_TIME_LIMIT``,
``INGINIOUS_MEM_LIMIT``, ``INGINIOUS_NETWORK`` (``1``/``0``), ``LANG=C.UTF-8``.

Public API (small and stable; the Docker backend uses it too):

- :func:`helpers_dir` -- folder of the POSIX sh helpers (``getinput``, ``feedback-*``).
- :func:`prepare_job` -- validate ids, build the job folder (blocking: call it
  through ``deferToThread``); raises :class:`TaskError` for a bad or missing task.
- :class:`JobFolder` -- the paths, :attr:`JobFolder.command` and :meth:`JobFolder.env`.
- :func:`collect_result` -- read and *validate* the feedback (blocking);
  bad feedback becomes an ``error`` result that says why.
- :func:`remove_job` / :func:`remove_job_path` -- delete a job folder (blocking).
- :class:`OutputLimits` -- size caps applied by :func:`collect_result`.

Feedback files (written by the helpers; the task may also write them itself)::

    feedback/result                one of RESULT_TYPES
    feedback/grade                 a number in 0..100
    feedback/text                  the global feedback text
    feedback/state                 the state string
    feedback/problems/ID/result    a problem's result type
    feedback/problems/ID/text      a problem's feedback text
    feedback/custom/KEY            a custom value (a string)
    feedback/custom-json/KEY       a custom value (JSON)

The files are read without following symbolic links and only if they are
regular files, so a task cannot make the agent read host files or block on a
FIFO.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from ..messages import BackendNewJob
from .result import RESULT_TYPES, JobResult

__all__ = [
    "ID_PATTERN",
    "DEFAULT_PATH",
    "TaskError",
    "OutputLimits",
    "JobFolder",
    "helpers_dir",
    "prepare_job",
    "collect_result",
    "remove_job",
    "remove_job_path",
]

#: Course and task ids (as INGInious): letters, digits, ``_`` and ``-``.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
#: Input keys, problem ids and custom keys that may become file names.
_NAME = re.compile(r"^[A-Za-z0-9_@][A-Za-z0-9_@.\-]*$")
#: PATH after the helpers folder, unless the backend gives another.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_SUBDIRS = ("input", "feedback", "archive", "tmp")


class TaskError(Exception):
    """The job cannot be prepared (bad ids, missing task): a ``crash`` result."""


class FeedbackError(ValueError):
    """What the task wrote is not valid feedback: an ``error`` result."""


@dataclass(frozen=True)
class OutputLimits:
    """Caps on what a job may send back (all sizes in bytes).

    Feedback above a cap is a task bug and gives an ``error`` result;
    stdout/stderr are only cut (with a marker).  The defaults keep an
    ``AgentJobDone`` well under the transports' 64 MiB frame limit.
    """

    max_text: int = 1 << 20
    max_problems: int = 1000
    max_problems_bytes: int = 4 << 20
    max_custom_bytes: int = 1 << 20
    max_state: int = 64 << 10
    max_stdout: int = 1 << 20
    max_stderr: int = 1 << 20
    max_archive: int = 16 << 20
    max_archive_entries: int = 10000


@dataclass(frozen=True)
class JobFolder:
    """A prepared job: where its files are and how to run it."""

    root: str
    job: BackendNewJob = field(repr=False)

    @property
    def task_dir(self) -> str:
        return os.path.join(self.root, "task")

    @property
    def student_dir(self) -> str:
        return os.path.join(self.root, "task", "student")

    @property
    def input_dir(self) -> str:
        return os.path.join(self.root, "input")

    @property
    def feedback_dir(self) -> str:
        return os.path.join(self.root, "feedback")

    @property
    def archive_dir(self) -> str:
        return os.path.join(self.root, "archive")

    @property
    def tmp_dir(self) -> str:
        return os.path.join(self.root, "tmp")

    @property
    def command(self) -> List[str]:
        """The argv to run, relative to the task folder (the working directory)."""
        if self.job.run_cmd:
            return ["/bin/sh", "-c", self.job.run_cmd]
        return ["./run"]

    def env(
        self,
        mount_root: Optional[str] = None,
        helpers: Optional[str] = None,
        base_path: str = DEFAULT_PATH,
    ) -> Dict[str, str]:
        """The environment the task runs with.

        ``mount_root``: where the job folder is seen by the task (e.g.
        ``/job`` in a container); default its host path.  ``helpers``: where
        the helpers folder is seen (e.g. ``/inginious/helpers``); default
        :func:`helpers_dir`.  ``base_path`` follows the helpers in ``PATH``.
        """
        root = mount_root if mount_root is not None else self.root
        helpers = helpers if helpers is not None else helpers_dir()
        job = self.job
        return {
            "PATH": f"{helpers}:{base_path}" if base_path else helpers,
            "HOME": f"{root}/task",
            "TMPDIR": f"{root}/tmp",
            "LANG": "C.UTF-8",
            "INGINIOUS_JOB": root,
            "INGINIOUS_TASK": f"{root}/task",
            "INGINIOUS_STUDENT": f"{root}/task/student",
            "INGINIOUS_INPUT": f"{root}/input",
            "INGINIOUS_FEEDBACK": f"{root}/feedback",
            "INGINIOUS_ARCHIVE": f"{root}/archive",
            "INGINIOUS_COURSE_ID": job.course_id,
            "INGINIOUS_TASK_ID": job.task_id,
            "INGINIOUS_TIME_LIMIT": str(job.time_limit),
            "INGINIOUS_MEM_LIMIT": str(job.mem_limit),
            "INGINIOUS_NETWORK": "1" if job.enable_network else "0",
        }


def helpers_dir() -> str:
    """The folder of the helper scripts shipped in the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")


# ---------------------------------------------------------------------------
# Preparing a job (blocking)
# ---------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def _render(value: Any) -> bytes:
    """What ``getinput`` prints for ``value``: strings and bytes as they are,
    an uploaded file (``{"filename", "value"}``) as its content, the rest as JSON."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and set(value) == {"filename", "value"}:
        return _render(value["value"])
    return json.dumps(value, default=_json_default, ensure_ascii=False).encode("utf-8")


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_input(input_dir: str, root: str, inputdata: Dict[str, Any]) -> None:
    for key, value in inputdata.items():
        if not isinstance(key, str) or not _NAME.match(key):
            continue  # only in input.json
        _write(os.path.join(input_dir, key), _render(value))
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                if isinstance(sub, str) and _NAME.match(sub):
                    _write(os.path.join(input_dir, f"{key}:{sub}"), _render(subvalue))
    data = json.dumps(inputdata, default=_json_default, ensure_ascii=False).encode("utf-8")
    _write(os.path.join(root, "input.json"), data)


def prepare_job(tasks_dir: str, job: BackendNewJob, work_root: str) -> JobFolder:
    """Make a fresh job folder for ``job`` under ``work_root`` (blocking).

    Raises :class:`TaskError` when the ids are invalid or the task does not
    exist (or has no ``run`` and the job no ``run_cmd``); nothing is left
    behind on failure.
    """
    for what, value in (("course", job.course_id), ("task", job.task_id)):
        if not ID_PATTERN.match(value):
            raise TaskError(f"invalid {what} id {value!r}: only letters, digits, '_' and '-' are allowed")
    src = os.path.join(tasks_dir, job.course_id, job.task_id)
    if not os.path.isdir(src):
        raise TaskError(f"task {job.course_id}/{job.task_id} does not exist on this agent")
    run = os.path.join(src, "run")
    if not job.run_cmd and not os.path.isfile(run):
        raise TaskError(f"task {job.course_id}/{job.task_id} has no 'run' file")
    os.makedirs(work_root, mode=0o700, exist_ok=True)
    root = tempfile.mkdtemp(prefix="job-", dir=work_root)
    try:
        os.chmod(root, 0o755)
        folder = JobFolder(root, job)
        shutil.copytree(src, folder.task_dir, symlinks=True)
        os.makedirs(folder.student_dir, exist_ok=True)
        os.chmod(folder.student_dir, 0o777)
        copied_run = os.path.join(folder.task_dir, "run")
        if not job.run_cmd:
            st = os.lstat(copied_run)
            if stat.S_ISREG(st.st_mode) and not st.st_mode & 0o111:
                os.chmod(copied_run, st.st_mode | 0o755)  # a private copy: be lenient
        for name in _SUBDIRS:
            os.mkdir(os.path.join(root, name))
        for name in ("feedback", "archive"):
            os.chmod(os.path.join(root, name), 0o777)
        os.chmod(folder.tmp_dir, 0o1777)
        _write_input(folder.input_dir, root, job.inputdata)
    except BaseException:
        remove_job_path(root)
        raise
    return folder


def _fix_and_retry(func: Any, path: str, exc_info: Any) -> None:
    """rmtree error handler: a task may leave folders without permissions."""
    parent = os.path.dirname(path)
    try:
        os.chmod(parent, 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
    except OSError:
        pass
    try:
        func(path)
    except FileNotFoundError:
        pass


def remove_job_path(root: str) -> None:
    """Delete a job folder by path (blocking; missing is fine)."""
    if os.path.lexists(root):
        shutil.rmtree(root, onerror=_fix_and_retry)


def remove_job(folder: JobFolder) -> None:
    """Delete the job folder (blocking)."""
    remove_job_path(folder.root)


# ---------------------------------------------------------------------------
# Collecting the result (blocking)
# ---------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_dir(name: str, what: str, dir_fd: Optional[int] = None) -> Optional[int]:
    """A descriptor of a real directory (not a symlink), or None if absent."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise FeedbackError(f"{what} is not a directory ({e.strerror})") from None


def _read(name: str, dir_fd: int, cap: int, what: str) -> Optional[bytes]:
    """At most ``cap`` bytes of a regular file; None if absent."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise FeedbackError(f"{what} cannot be read ({e.strerror}; symbolic links are not followed)") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FeedbackError(f"{what} is not a regular file")
        chunks: List[bytes] = []
        size = 0
        while size <= cap:
            chunk = os.read(fd, min(1 << 20, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > cap:
        raise FeedbackError(f"{what} is larger than {cap} bytes")
    return b"".join(chunks)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _result_type(data: bytes, what: str) -> str:
    value = _text(data).strip()
    if value not in RESULT_TYPES:
        raise FeedbackError(f"{what} is {value[:40]!r}, which is not one of {', '.join(RESULT_TYPES)}")
    return value


def _grade(data: bytes) -> float:
    text = _text(data).strip()
    try:
        value = float(text)
    except ValueError:
        raise FeedbackError(f"the grade {text[:40]!r} is not a number") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise FeedbackError(f"the grade {text[:40]!r} is not between 0 and 100")
    return value


def _names(dir_fd: int, what: str) -> List[str]:
    names = sorted(os.listdir(dir_fd))
    for name in names:
        if not _NAME.match(name):
            raise FeedbackError(f"{what} has an entry with an invalid name {name[:60]!r}")
    return names


def _read_feedback(root: str, limits: OutputLimits) -> Optional[Dict[str, Any]]:
    """The feedback as a dict of JobResult fields, or None if nothing was written."""
    job_fd = _open_dir(root, "the job folder")
    if job_fd is None:
        raise FeedbackError("the job folder disappeared")
    fds: List[int] = [job_fd]
    try:
        fb = _open_dir("feedback", "the feedback folder", job_fd)
        if fb is None:
            return None
        fds.append(fb)
        raw_result = _read("result", fb, 64, "the result (feedback-result)")
        raw_grade = _read("grade", fb, 64, "the grade (feedback-grade)")
        raw_text = _read("text", fb, limits.max_text, "the feedback text (feedback-msg)")
        raw_state = _read("state", fb, limits.max_state, "the state (feedback-state)")
        out: Dict[str, Any] = {}
        written = any(x is not None for x in (raw_result, raw_grade, raw_text, raw_state))
        if raw_result is not None:
            out["result"] = _result_type(raw_result, "the result")
        if raw_grade is not None:
            out["grade"] = _grade(raw_grade)
        if raw_text is not None:
            out["text"] = _text(raw_text)
        if raw_state is not None:
            out["state"] = _text(raw_state)

        problems: Dict[str, Tuple[Optional[str], str]] = {}
        pfd = _open_dir("problems", "feedback/problems", fb)
        if pfd is not None:
            fds.append(pfd)
            ids = _names(pfd, "feedback/problems")
            if len(ids) > limits.max_problems:
                raise FeedbackError(f"there is feedback for {len(ids)} problems, more than {limits.max_problems}")
            budget = limits.max_problems_bytes
            for pid in ids:
                one = _open_dir(pid, f"feedback/problems/{pid}", pfd)
                if one is None:
                    continue
                fds.append(one)
                r = _read("result", one, 64, f"the result of problem {pid}")
                t = _read("text", one, max(budget, 0), f"the feedback of problem {pid} (all problems together)")
                budget -= len(t or b"")
                kind = _result_type(r, f"the result of problem {pid}") if r is not None else None
                problems[pid] = (kind, _text(t or b""))
        if problems:
            written = True

        custom: Dict[str, Any] = {}
        budget = limits.max_custom_bytes
        for sub, is_json in (("custom", False), ("custom-json", True)):
            cfd = _open_dir(sub, f"feedback/{sub}", fb)
            if cfd is None:
                continue
            fds.append(cfd)
            for key in _names(cfd, f"feedback/{sub}"):
                data = _read(key, cfd, max(budget, 0), "the custom values (all together)")
                if data is None:
                    continue
                budget -= len(data)
                if is_json:
                    try:
                        custom[key] = json.loads(data.decode("utf-8"))
                    except ValueError as e:
                        raise FeedbackError(f"the custom value {key!r} is not valid JSON ({e})") from None
                else:
                    custom[key] = _text(data)
        if custom:
            written = True
            out["custom"] = custom

        if not written:
            return None
        overall = out.get("result")
        out["problems"] = {pid: (r or overall or "failed", t) for pid, (r, t) in problems.items()}
        return out
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _archive(root: str, limits: OutputLimits) -> Optional[bytes]:
    """A gzipped tar of ``archive/``, None if it is empty or absent."""
    path = os.path.join(root, "archive")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        raise FeedbackError("archive is not a directory")
    total = entries = 0
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            entries += 1
            s = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(s.st_mode):
                total += s.st_size
        if entries > limits.max_archive_entries:
            raise FeedbackError(f"the archive has more than {limits.max_archive_entries} entries")
        if total > limits.max_archive:
            raise FeedbackError(f"the archive holds more than {limits.max_archive} bytes")
    if entries == 0:
        return None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in sorted(os.listdir(path)):
            tar.add(os.path.join(path, name), arcname=name, recursive=True)
    return buf.getvalue()


def _cap(data: Union[bytes, str, None], cap: int) -> Optional[str]:
    if data is None:
        return None
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > cap:
        return _text(data[:cap]) + f"\n[output cut at {cap} bytes]"
    return _text(data)


def collect_result(
    folder: JobFolder,
    exit_code: Optional[int],
    stdout: Union[bytes, str, None] = None,
    stderr: Union[bytes, str, None] = None,
    limits: OutputLimits = OutputLimits(),
    outcome: Optional[Tuple[str, str]] = None,
) -> JobResult:
    """Turn what the task left in ``folder`` into a :class:`JobResult` (blocking).

    ``exit_code``: the exit status of ``run`` (negative: killed by that
    signal; None: unknown).  ``outcome``: a ``(result, text)`` the backend
    already decided (``timeout``, ``overflow``, ``killed``...): the feedback is
    then ignored, but stdout, stderr and the archive are still returned.

    A result written by the task wins over the exit status.  Nothing written:
    ``error`` saying so.  Invalid feedback: ``error`` saying why.
    """
    out = _cap(stdout, limits.max_stdout)
    err = _cap(stderr, limits.max_stderr)
    try:
        archive = _archive(folder.root, limits)
    except (FeedbackError, OSError) as e:
        if outcome is None:
            return JobResult("error", f"The grading script's archive is invalid: {e}", stdout=out, stderr=err)
        archive = None
    if outcome is not None:
        return JobResult(outcome[0], outcome[1], archive=archive, stdout=out, stderr=err)
    try:
        feedback = _read_feedback(folder.root, limits)
    except (FeedbackError, OSError) as e:
        text = f"The grading script's feedback is invalid: {e}"
        return JobResult("error", text, archive=archive, stdout=out, stderr=err)
    if feedback is None or "result" not in feedback:
        if exit_code is None:
            why = "the grading script ended without reporting a result"
        elif exit_code < 0:
            why = f"the grading script was killed by signal {-exit_code} before reporting a result"
        elif exit_code == 0:
            why = "the task reported no result (the grading script never called feedback-result)"
        else:
            why = f"the grading script exited with code {exit_code} without reporting a result"
        text = (feedback or {}).get("text", "")
        return JobResult(
            "error",
            why[0].upper() + why[1:] + (f".\n\n{text}" if text else "."),
            archive=archive,
            stdout=out,
            stderr=err,
        )
    return JobResult(
        feedback["result"],
        feedback.get("text", ""),
        grade=feedback.get("grade"),
        problems=feedback["problems"],
        custom=feedback.get("custom", {}),
        state=feedback.get("state", ""),
        archive=archive,
        stdout=out,
        stderr=err,
    )
