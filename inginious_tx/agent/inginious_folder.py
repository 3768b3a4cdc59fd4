"""The host side of a job on an INGInious grading image: its folder, and what is mounted from it.

One folder per job (``job-XXXX`` in the agent's work folder, on its own
tmpfs when the agent bounds job disks, marked for the removal of what a
killed agent left, see :mod:`._leftovers`)::

    task/            -> /task                     read-write (a copy of the task, without student/)
    student/         -> /task/student             read-write (the task's student/, and scripts/)
    sockets/         -> /sockets                  read-write (the image's run_student sockets)
    common/          -> /course/common            read-only  (the course's $common)
    common_student/  -> /course/common/student    read-only  ($common/student)
    private/         never mounted                the agent's: the systemfiles copy, socket links

``student/`` is a mount of its own, not a folder inside ``task/``: the
grading container (root inside) cannot swap it for a symbolic link, so what
the agent mounts in student containers is always that folder.  For the same
reason the agent mounts in student containers only what it holds itself:
the task's ``systemfiles`` copied from the course (not from the grader's
copy), and each run_student socket through a hard link in ``private/``,
checked to be a socket.  Everything here blocks: call it in a thread.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from typing import Optional

from ._leftovers import STDIN_SUFFIX
from .job_folder import ID_PATTERN, TaskError, make_job_root, remove_job_path

__all__ = [
    "IngiFolder", "check_ingi_task", "make_ingi_root", "fill_ingi_job", "prepare_ingi_job", "remove_ingi_job",
    "link_socket", "SOCKET_ID",
]  # fmt: skip

#: Socket ids the image makes (``tempfile`` names: letters, digits, ``_``).
SOCKET_ID = re.compile(r"[A-Za-z0-9_]{1,64}\Z")
#: The only files of ``systemfiles/`` the image reads.
_SYSTEM_FILES = ("hosts", "resolv.conf")


@dataclass(frozen=True)
class IngiFolder:
    """Where one job's files are on the host."""

    root: str
    disk_mb: int = 0

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    @property
    def task(self) -> str:
        return self.path("task")

    @property
    def student(self) -> str:
        return self.path("student")

    @property
    def sockets(self) -> str:
        return self.path("sockets")

    @property
    def common(self) -> str:
        return self.path("common")

    @property
    def common_student(self) -> str:
        return self.path("common_student")

    @property
    def private(self) -> str:
        return self.path("private")

    @property
    def systemfiles(self) -> str:
        return os.path.join(self.private, "systemfiles")


def _copy(src: str, dst: str, skip: Optional[str] = None) -> None:
    """Copy the folder ``src`` into ``dst`` (made if missing, links kept as links), without its entry ``skip``."""
    ignore = (lambda d, names: [skip] if d == src and skip in names else []) if skip else None
    shutil.copytree(src, dst, symlinks=True, ignore=ignore, dirs_exist_ok=True)


def check_ingi_task(tasks_dir: str, course_id: str, task_id: str) -> str:
    """The task's folder (blocking); :class:`TaskError` for bad ids or a missing task."""
    for what, value in (("course", course_id), ("task", task_id)):
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise TaskError(f"invalid {what} id {value!r}: only letters, digits, '_' and '-' are allowed")
    src = os.path.join(tasks_dir, course_id, task_id)
    if not os.path.isdir(src):
        raise TaskError(f"task {course_id}/{task_id} does not exist on this agent")
    return src


def make_ingi_root(work_root: str, disk_mb: int = 0) -> IngiFolder:
    """An empty job folder (blocking): marked, on its tmpfs, with every folder that is mounted or
    holds a mount point, for :func:`fill_ingi_job` to fill now or later (a container made ahead
    has these folders mounted before it knows its job)."""
    root = make_job_root(work_root, disk_mb=disk_mb, marked=True)
    try:
        folder = IngiFolder(root, disk_mb if disk_mb > 0 else 0)
        for path, mode in (
            (folder.task, 0o777),
            (os.path.join(folder.task, "student"), 0o755),  # the mount point of student/
            (folder.student, 0o777),
            (os.path.join(folder.student, "scripts"), 0o777),
            (folder.sockets, 0o777),
            (folder.common, 0o755),
            (os.path.join(folder.common, "student"), 0o755),  # the mount point of common_student/
            (folder.common_student, 0o755),
            (folder.private, 0o700),
            (folder.systemfiles, 0o755),
        ):
            os.mkdir(path)
            os.chmod(path, mode)
    except BaseException:
        remove_job_path(root)
        remove_job_path(root + STDIN_SUFFIX)
        raise
    return folder


def fill_ingi_job(folder: IngiFolder, tasks_dir: str, course_id: str, task_id: str) -> None:
    """Copy a job's task, student folder, course ``$common`` and system files into ``folder``, made
    by :func:`make_ingi_root` and never used before (blocking).  The folders are filled in place,
    never replaced (they may be mounted already).  :class:`TaskError` for bad ids or a missing
    task, before anything is copied; on any other failure the folder is half filled: remove it."""
    src = check_ingi_task(tasks_dir, course_id, task_id)
    course = os.path.join(tasks_dir, course_id)
    _copy(src, folder.task, skip="student")
    os.chmod(folder.task, 0o777)
    student_src = os.path.join(src, "student")
    if os.path.isdir(student_src) and not os.path.islink(student_src):
        _copy(student_src, folder.student)
    for path in (folder.student, os.path.join(folder.student, "scripts")):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)
    common_src = os.path.join(course, "$common")
    if os.path.isdir(common_src) and not os.path.islink(common_src):
        # its student/ is seen only through common_student/, mounted over the common one's
        _copy(common_src, folder.common, skip="student")
        common_student = os.path.join(common_src, "student")
        if os.path.isdir(common_student) and not os.path.islink(common_student):
            _copy(common_student, folder.common_student)
    for name in _SYSTEM_FILES:
        path = os.path.join(src, "systemfiles", name)
        if os.path.isfile(path) and not os.path.islink(os.path.join(src, "systemfiles")):
            shutil.copyfile(path, os.path.join(folder.systemfiles, name), follow_symlinks=False)


def prepare_ingi_job(tasks_dir: str, course_id: str, task_id: str, work_root: str, disk_mb: int = 0) -> IngiFolder:
    """Make and fill a job's folder (blocking); :class:`TaskError` for bad ids or a missing task,
    and nothing is left behind on any failure."""
    check_ingi_task(tasks_dir, course_id, task_id)
    folder = make_ingi_root(work_root, disk_mb)
    try:
        fill_ingi_job(folder, tasks_dir, course_id, task_id)
    except BaseException:
        remove_ingi_job(folder.root)
        raise
    return folder


def remove_ingi_job(root: str) -> None:
    """Remove a job folder and the agent's own folder beside it, the owner mark last (blocking)."""
    remove_job_path(root)
    remove_job_path(root + STDIN_SUFFIX)


def link_socket(folder: IngiFolder, socket_id: str, serial: int) -> str:
    """A path, in the agent's private folder, to the socket the grader made for ``socket_id`` (blocking).

    The grading container owns ``sockets/``: what is there is only trusted
    once hard-linked where it cannot reach, and checked there to be a socket
    (a link to a symbolic link stays a link to that symbolic link, and is refused).
    Raises ValueError when there is no such socket.
    """
    if not SOCKET_ID.fullmatch(socket_id):
        raise ValueError(f"invalid socket id {socket_id!r}")
    src = os.path.join(folder.sockets, socket_id + ".sock")
    dst = os.path.join(folder.private, f"socket-{serial}")
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileNotFoundError:
        raise ValueError(f"no socket {socket_id!r} in /sockets") from None
    except PermissionError:
        # not root (protected_hardlinks): check in place; the grader could still swap it afterwards
        if not stat.S_ISSOCK(os.lstat(src).st_mode):
            raise ValueError(f"/sockets/{socket_id}.sock is not a socket") from None
        return src
    if not stat.S_ISSOCK(os.lstat(dst).st_mode):
        os.unlink(dst)
        raise ValueError(f"/sockets/{socket_id}.sock is not a socket")
    return dst
