"""Job folders: what a job runs in, made from a task and removed after it.

See :mod:`inginious_tx.agent.task` for the layout and the environment of
``run``.  :func:`prepare_job` validates the ids and builds the folder
(optionally on a size-limited tmpfs, :mod:`inginious_tx.agent.job_disk`);
:func:`remove_job` unmounts and deletes it with the iterative remover of
:mod:`inginious_tx.agent.filetree`.  Everything here blocks: call it in a
thread.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..messages import BackendNewJob
from ._leftovers import STDIN_SUFFIX, mark_job, unmount_under
from .filetree import chown_tree, remove_tree
from .job_disk import mount_job_disk, unmount_job_disk

__all__ = [
    "ID_PATTERN",
    "NAME_PATTERN",
    "DEFAULT_PATH",
    "TaskError",
    "COMMON_DIR",
    "RUN_FILES",
    "find_run_file",
    "JobFolder",
    "helpers_dir",
    "prepare_job",
    "make_job_root",
    "hand_over",
    "remove_job",
    "remove_job_path",
]

#: Course and task ids (as INGInious): letters, digits, ``_`` and ``-``; the
#: whole string (``\Z``: a trailing newline is refused, as ``$`` would not).
ID_PATTERN = re.compile(r"\A[A-Za-z0-9_\-]+\Z")
#: Input keys, problem ids and custom keys that may become file names (whole string too).
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9_@][A-Za-z0-9_@.\-]*\Z")
#: PATH after the helpers folder, unless the backend gives another.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_SUBDIRS = ("input", "feedback", "archive", "tmp")

#: A course's folder shared by its tasks (INGInious' name), copied into each job as ``JOB/common``.
COMMON_DIR = "$common"
#: The run files looked for, in INGInious' order, in the task then in the course's ``$common``:
#: name -> how it is started (None: executed itself; else by that interpreter, no shebang needed).
RUN_FILES: Tuple[Tuple[str, Optional[str]], ...] = (
    ("run", None),
    ("run.py", "python"),
    ("run.py3", "python"),
    ("run.sh", "shell"),
)
# How a run file without its own shebang is started, from a path the shell expands: INGInious runs
# run.py with Python 3 and run.sh with bash; an image without them falls back to python / sh.
_LAUNCHERS = {
    None: 'exec "{path}"',
    "python": 'if command -v python3 >/dev/null 2>&1; then exec python3 "{path}"; fi; exec python "{path}"',
    "shell": 'if [ -x /bin/bash ]; then exec /bin/bash "{path}"; fi; exec /bin/sh "{path}"',
}


def find_run_file(task_src: str, common_src: Optional[str]) -> Optional[Tuple[str, str]]:
    """Where the run file is: ``("task" | "common", NAME)``, or None.

    As INGInious: ``run``, ``run.py``, ``run.py3``, ``run.sh`` in the task folder, then the same
    names in the course's ``$common`` folder; the first regular file found wins.
    """
    for where, folder in (("task", task_src), ("common", common_src)):
        if folder is None:
            continue
        for name, _ in RUN_FILES:
            if os.path.isfile(os.path.join(folder, name)):
                return where, name
    return None


class TaskError(Exception):
    """The job cannot be prepared (bad ids, missing task): a ``crash`` result."""


@dataclass(frozen=True)
class JobFolder:
    """A prepared job: where its files are and how to run it."""

    root: str
    job: BackendNewJob = field(repr=False)
    #: Size in MB of the tmpfs mounted on :attr:`root`; 0 when the folder is on the agent's disk.
    disk_mb: int = 0
    #: The job's own copy of the helper scripts, when it runs as another user (see :func:`prepare_job`).
    helpers: Optional[str] = None
    #: The run file found (:func:`find_run_file`): ``("task" | "common", NAME)``; None with a ``run_cmd``.
    run_file: Optional[Tuple[str, str]] = None

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
    def common_dir(self) -> str:
        """The job's copy of the course's ``$common`` folder (absent when the course has none)."""
        return os.path.join(self.root, "common")

    @property
    def command(self) -> List[str]:
        """The argv to run, relative to the task folder (the working directory).

        A run file of the course's ``$common`` is reached through ``$INGINIOUS_COMMON``, so the
        same argv works wherever the agent shows that folder (``/course/common`` in a container).
        """
        if self.job.run_cmd:
            return ["/bin/sh", "-c", self.job.run_cmd]
        where, name = self.run_file or ("task", "run")
        if (where, name) == ("task", "run"):
            return ["./run"]
        path = f"./{name}" if where == "task" else f"$INGINIOUS_COMMON/{name}"
        return ["/bin/sh", "-c", _LAUNCHERS[dict(RUN_FILES)[name]].format(path=path)]

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
        helpers = helpers if helpers is not None else (self.helpers or helpers_dir())
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
            "INGINIOUS_COMMON": f"{root}/common",
            "INGINIOUS_COURSE_ID": job.course_id,
            "INGINIOUS_TASK_ID": job.task_id,
            "INGINIOUS_TIME_LIMIT": str(job.time_limit),
            "INGINIOUS_MEM_LIMIT": str(job.mem_limit),
            "INGINIOUS_NETWORK": "1" if job.enable_network else "0",
        }


#: Where, in its folder, a job run as another user finds its copy of the helpers.
HELPERS_COPY = ".helpers"


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
        if not isinstance(key, str) or not NAME_PATTERN.fullmatch(key):
            continue  # only in input.json
        _write(os.path.join(input_dir, key), _render(value))
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                if isinstance(sub, str) and NAME_PATTERN.fullmatch(sub):
                    _write(os.path.join(input_dir, f"{key}:{sub}"), _render(subvalue))
    data = json.dumps(inputdata, default=_json_default, ensure_ascii=False).encode("utf-8")
    _write(os.path.join(root, "input.json"), data)


def prepare_job(
    tasks_dir: str,
    job: BackendNewJob,
    work_root: str,
    *,
    disk_mb: int = 0,
    owner: Optional[Tuple[int, int]] = None,
    private: bool = False,
    marked: bool = False,
    root: Optional[str] = None,
) -> JobFolder:
    """Make a fresh job folder for ``job`` under ``work_root`` (blocking).

    ``disk_mb`` > 0: mount a tmpfs of that size on the folder first (the
    agent must be root; OSError if the kernel refuses).  ``owner``: hand the
    folder to that ``(uid, gid)`` (:func:`hand_over`), the user the job runs
    as when the agent is root.  ``private``: the folder's root is left mode
    0700 (to ``owner``): other users, other jobs included, cannot enter it.
    ``marked``: first make the agent's own ``ROOT.stdin`` folder beside it,
    holding the agent's token (:func:`._leftovers.mark_job`), before anything
    is mounted: if the agent is killed, the next one knows it may remove both.
    ``root``: fill this folder, made earlier by :func:`make_job_root` with
    the same ``work_root``, ``disk_mb``, ``private`` and ``marked`` (a
    container prepared ahead already has it mounted), instead of making one;
    it may hold the empty ``task`` and ``archive`` folders.

    Raises :class:`TaskError` when the ids are invalid or the task does not
    exist (or has no ``run`` and the job no ``run_cmd``); nothing is left
    behind on failure.
    """
    for what, value in (("course", job.course_id), ("task", job.task_id)):
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise TaskError(f"invalid {what} id {value!r}: only letters, digits, '_' and '-' are allowed")
    src = os.path.join(tasks_dir, job.course_id, job.task_id)
    if not os.path.isdir(src):
        raise TaskError(f"task {job.course_id}/{job.task_id} does not exist on this agent")
    common_src: Optional[str] = os.path.join(tasks_dir, job.course_id, COMMON_DIR)
    if not os.path.isdir(common_src or ""):
        common_src = None
    run_file = None if job.run_cmd else find_run_file(src, common_src)
    if not job.run_cmd and run_file is None:
        raise TaskError(
            f"task {job.course_id}/{job.task_id} has no 'run' file "
            f"(looked for run, run.py, run.py3 and run.sh in the task, then in the course's {COMMON_DIR})"
        )
    if root is None:
        root = make_job_root(work_root, disk_mb=disk_mb, private=private, marked=marked)
    try:
        # A job run as another user gets its own copy of the helpers: the
        # installed package may be out of its reach (a home folder closed to
        # others, or a checkout under /tmp, which the job sees privately).
        helpers = os.path.join(root, HELPERS_COPY) if owner is not None else None
        folder = JobFolder(root, job, disk_mb if disk_mb > 0 else 0, helpers, run_file)
        if helpers is not None:
            shutil.copytree(helpers_dir(), helpers)
        shutil.copytree(src, folder.task_dir, symlinks=True, dirs_exist_ok=True)
        if common_src is not None:
            shutil.copytree(common_src, folder.common_dir, symlinks=True)
        os.makedirs(folder.student_dir, exist_ok=True)
        os.chmod(folder.student_dir, 0o777)
        if run_file is not None and run_file[1] == "run":
            copied_run = os.path.join(folder.task_dir if run_file[0] == "task" else folder.common_dir, "run")
            st = os.lstat(copied_run)
            if stat.S_ISREG(st.st_mode) and not st.st_mode & 0o111:
                os.chmod(copied_run, st.st_mode | 0o755)  # a private copy: be lenient
        for name in _SUBDIRS:
            os.makedirs(os.path.join(root, name), exist_ok=True)
        for name in ("feedback", "archive"):
            os.chmod(os.path.join(root, name), 0o777)
        os.chmod(folder.tmp_dir, 0o1777)
        _write_input(folder.input_dir, root, job.inputdata)
        if owner is not None:
            hand_over(folder, *owner)
        if private:
            os.chmod(root, 0o700)
    except BaseException:
        remove_job_path(root)
        if marked:
            remove_tree(root + STDIN_SUFFIX)
        raise
    return folder


def make_job_root(work_root: str, *, disk_mb: int = 0, private: bool = False, marked: bool = False) -> str:
    """An empty job folder under ``work_root`` (blocking), for :func:`prepare_job` to fill now or later.

    The options are :func:`prepare_job`'s; nothing is left behind on failure.
    """
    # 0o711: a job running as another user reaches its own folder, but cannot list its neighbours
    os.makedirs(work_root, mode=0o711, exist_ok=True)
    root = tempfile.mkdtemp(prefix="job-", dir=work_root)
    try:
        if marked:
            os.mkdir(root + STDIN_SUFFIX, 0o700)
            mark_job(root)
        os.chmod(root, 0o755)
        if disk_mb > 0:
            mount_job_disk(root, disk_mb, mode=0o700 if private else 0o755)
    except BaseException:
        remove_job_path(root)
        if marked:
            remove_tree(root + STDIN_SUFFIX)
        raise
    return root


def hand_over(folder: JobFolder, uid: int, gid: int) -> None:
    """Give a freshly prepared job folder to the user the job runs as (no link is followed).

    The tree is the agent's own copy of a task folder, not yet touched by a job.
    """
    chown_tree(folder.root, uid, gid)


def remove_job_path(root: str) -> None:
    """Delete a job folder by path (blocking; missing is fine): unmount its tmpfs, then remove
    what is left without recursion and without following links."""
    unmount_job_disk(root)
    if root.endswith(STDIN_SUFFIX):  # the agent's own folder: student folders bound there (run_student)
        unmount_under(root)
    remove_tree(root)


def remove_job(folder: JobFolder) -> None:
    """Delete the job folder (blocking)."""
    remove_job_path(folder.root)
