"""What a killed agent leaves behind, found and removed by the next agent on the host.

An agent killed outright (``SIGKILL``, a crash, the machine's OOM killer)
cleans up nothing: its Docker containers keep running or stay exited, and
its job folders stay on disk with their tmpfs mounted.  So every agent marks
what it makes with its **owner token** -- ``HOST/BOOT_ID/PID/START`` (the
host name, the kernel's boot id, the agent's pid and that process's start
time, which together name one process for good):

- a file :data:`OWNER_FILE` beside each job folder, in the agent's own
  ``JOB.stdin`` folder (mode 0700, where jobs cannot write);
- the label :data:`LABEL_OWNER` on its containers.

At start an agent removes what carries the token of a process of *this*
boot of *this* host that no longer runs: the containers, and the job
folders (their tmpfs unmounted first) in its work folder and in the
default work folders (in the temporary folder), which go too once empty.  What belongs
to a live agent, or to another host sharing the Docker engine, is left
alone.  Everything here blocks: call it in a thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import tempfile
from typing import List, Optional

from .filetree import remove_tree

#: Beside each job folder: the agent's own folder (run_student's stdin copies, our token).
STDIN_SUFFIX = ".stdin"

__all__ = ["OWNER_FILE", "LABEL_OWNER", "owner_token", "is_stale", "mark_job", "sweep_work_dir", "sweep_temp"]

#: The name of run_student's areas (:mod:`.student_pool`): this, the agent's pid, ``-``, random, ``.stdin``.
UNMARKED_AREA_PREFIX = "student-"
#: In an agent's work folder: the owner token of the agent using it.
OWNER_FILE = ".inginious-tx-owner"
#: On every container of the Docker agent: its owner token.
LABEL_OWNER = "org.inginious-tx.owner"

_MNT_DETACH = 2


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> Optional[str]:
    """The start time (clock ticks after boot) of process ``pid``, None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_token(pid: Optional[int] = None) -> str:
    """The token naming process ``pid`` (default: this one) for good."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{_boot_id()}/{pid}/{_start_time(pid)}"


def is_stale(token: str) -> bool:
    """True if ``token`` names a process of this host's current boot that no longer runs.

    False for a live process, and for another host or boot, or a token not
    ours to judge (unreadable): never remove what may still be in use.
    """
    try:
        host, boot, pid, start = token.rsplit("/", 3)
        number = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname() or boot != _boot_id():
        return False
    return _start_time(number) != start


def _unescape(path: str) -> str:
    """A path from /proc/self/mounts (spaces and such are octal escapes)."""
    return path.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


def unmount_under(path: str) -> None:
    """Unmount (lazily) whatever is mounted on or below ``path``, the deepest first."""
    root = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        points = [_unescape(line.split()[1]) for line in f if len(line.split()) > 1]
    inside = [p for p in points if p == root or p.startswith(root + "/")]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    for point in sorted(set(inside), key=len, reverse=True):  # the deepest first
        libc.umount2(os.fsencode(point), _MNT_DETACH)


def _owner_of(stdin_dir: str) -> Optional[str]:
    try:
        fd = os.open(os.path.join(stdin_dir, OWNER_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        return f.read(4096).strip()


def mark_job(job_root: str) -> None:
    """Write our token beside the job folder ``job_root`` (in its agent-only ``.stdin`` folder)."""
    fd = os.open(
        os.path.join(job_root + STDIN_SUFFIX, OWNER_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        | os.O_CLOEXEC, 0o600,
    )  # fmt: skip
    with os.fdopen(fd, "w") as f:
        f.write(owner_token() + "\n")


def sweep_work_dir(path: str) -> List[str]:
    """Remove the job folders under ``path`` that dead agents left (their tmpfs unmounted
    first, no recursion, no link followed); the names of the job folders removed.

    Also the areas of run_student's containers made ahead (``student-PID-*.stdin``,
    :mod:`.student_pool`) with no mark whose PID no longer runs: an agent killed after
    making one and before marking it."""
    removed: List[str] = []
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.endswith(STDIN_SUFFIX):
            continue
        owner = _owner_of(os.path.join(path, name))
        if owner is None:
            if not (name.startswith(UNMARKED_AREA_PREFIX) and _dead_pid_in(name, UNMARKED_AREA_PREFIX)):
                continue
        elif not is_stale(owner):
            continue
        job = os.path.join(path, name[: -len(STDIN_SUFFIX)])
        unmount_under(job)
        unmount_under(job + STDIN_SUFFIX)  # run_student's student folders, bound there
        remove_tree(job)
        remove_tree(job + STDIN_SUFFIX)
        removed.append(os.path.basename(job))
    return removed


def _dead_pid_in(name: str, prefix: str) -> bool:
    pid = name[len(prefix):].split("-", 1)[0]
    return pid.isdigit() and _start_time(int(pid)) is None


def sweep_temp(prefix: str, keep: Optional[str] = None) -> List[str]:
    """Sweep the default work folders (``TMPDIR/PREFIX*``) as :func:`sweep_work_dir`; remove
    those left empty by it, or empty with the pid of a dead process in their name.  The job
    folders and work folders removed."""
    top = tempfile.gettempdir()
    removed: List[str] = []
    for name in sorted(os.listdir(top)):
        path = os.path.join(top, name)
        if not name.startswith(prefix) or path == keep or os.path.islink(path) or not os.path.isdir(path):
            continue
        jobs = sweep_work_dir(path)
        removed += [os.path.join(path, job) for job in jobs]
        if (jobs or _dead_pid_in(name, prefix)) and not os.listdir(path):
            try:
                os.rmdir(path)
                removed.append(path)
            except OSError:
                pass
    return removed
