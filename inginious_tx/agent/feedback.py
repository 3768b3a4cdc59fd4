"""Turning what a job left in its folder into a :class:`~inginious_tx.agent.result.JobResult`.

:func:`collect_result` reads the ``feedback/`` files (layout in
:mod:`inginious_tx.agent.task`) without following symbolic links and only
from regular files, so a task cannot make the agent read host files or block
on a FIFO; it validates them and archives ``archive/`` with the iterative
archiver of :mod:`inginious_tx.agent.filetree`.  :class:`OutputLimits` caps
what comes back.  Everything here blocks: call it in a thread.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from .filetree import TreeTooLarge, archive_tree
from .job_folder import NAME_PATTERN, JobFolder
from .result import RESULT_TYPES, JobResult

__all__ = ["OutputLimits", "FeedbackError", "collect_result", "cap_text", "empty_archive"]


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
        if not NAME_PATTERN.fullmatch(name):
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
    """A gzipped tar of ``archive/``, None if it is empty or absent (iterative, links kept as links)."""
    path = os.path.join(root, "archive")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        raise FeedbackError("archive is not a directory")
    try:
        return archive_tree(path, limits.max_archive_entries, limits.max_archive)
    except TreeTooLarge as e:
        why = f"more than {limits.max_archive_entries} entries" if "entries" in str(e) else (
            f"more than {limits.max_archive} bytes")
        raise FeedbackError(f"the archive holds {why}") from None


def cap_text(data: Union[bytes, str, None], cap: int) -> Optional[str]:
    """``data`` as text, cut at ``cap`` bytes with a marker saying so (None stays None)."""
    if data is None:
        return None
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > cap:
        return _text(data[:cap]) + f"\n[output cut at {cap} bytes]"
    return _text(data)


def empty_archive(path: str) -> bytes:
    """What INGInious sends for an empty ``/archive``: a gzipped tar holding only the folder itself."""
    buf = io.BytesIO()
    info = tarfile.TarInfo("")
    info.type = tarfile.DIRTYPE
    try:
        st = os.lstat(path)
        info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    except OSError:
        info.mode = 0o777
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info)
    return buf.getvalue()


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
    then ignored, but the archive (and the output) are still returned.

    A result written by the task wins over the exit status; it always comes
    with an archive, an empty one (:func:`empty_archive`) when the task put
    nothing in ``archive/``, as with INGInious.  Nothing written: ``error``
    saying so.  Invalid feedback: ``error`` saying why.  ``stdout`` and
    ``stderr`` are returned only for a debug job (``job.debug`` true), as
    INGInious does.
    """
    # As INGInious: a job's output goes back only when it is debugged (the frontend shows it then).
    debug = bool(folder.job.debug)
    out = cap_text(stdout, limits.max_stdout) if debug else ""
    err = cap_text(stderr, limits.max_stderr) if debug else ""
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
    if archive is None:
        archive = empty_archive(os.path.join(folder.root, "archive"))
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
