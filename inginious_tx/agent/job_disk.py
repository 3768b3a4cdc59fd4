"""A job's disk space: a size-limited tmpfs mounted on its job folder.

When the agent is root it mounts a fresh ``tmpfs`` (``nosuid,nodev``, a
``size`` in MB, an inode cap) on each job folder before it fills it, and
unmounts it when the job is over.  Whatever the job writes lives there, so:

- a job cannot fill the agent's disk: at the bound its writes fail with
  ``ENOSPC``; the agent sees the folder full and answers ``overflow``;
- nothing a job writes outlives it: unmounting drops it all at once, however
  deep or strange the tree (the iterative remover of
  :mod:`inginious_tx.agent.filetree` then only meets an empty folder).

tmpfs pages are memory (or swap): under Docker they are charged to the
container's memory cgroup, with the local backend to the job's.  Without
root (or where ``mount`` is refused) the agent cannot do this: it logs it
once and the job folder is a plain folder on the agent's disk, bounded only by
``RLIMIT_FSIZE`` per file (local backend); operators who need the bound run
the agent as root or give ``work_dir`` a filesystem of its own.  A root agent
whose ``mount`` is refused (a container without ``CAP_SYS_ADMIN``) answers
every job ``crash`` saying so, until its operator chooses ``job_disk_mb=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

__all__ = [
    "DEFAULT_DISK_MB", "can_mount", "mount_job_disk", "unmount_job_disk", "disk_full", "bind_fd", "detach",
    "bind_shared",
]  # fmt: skip

#: Size of a job's tmpfs when the agent is not told otherwise (option ``job_disk_mb``).
DEFAULT_DISK_MB = 256

_MS_NOSUID = 2
_MS_NODEV = 4
_MS_BIND = 4096
_MS_SHARED = 1 << 20
_MNT_DETACH = 2

_libc: Optional[ctypes.CDLL] = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def can_mount() -> bool:
    """True if this process may try to mount (it is root)."""
    return os.geteuid() == 0


def mount_job_disk(path: str, size_mb: int, uid: int = 0, gid: int = 0, mode: int = 0o755) -> None:
    """Mount a ``size_mb`` tmpfs on the (empty) folder ``path``, its root owned by ``uid:gid`` with ``mode``.

    Raises OSError if the kernel refuses.
    """
    inodes = max(1024, size_mb * 64)  # enough for small files, no inode exhaustion of the host
    options = f"size={int(size_mb)}m,nr_inodes={inodes},mode={mode:04o},uid={uid},gid={gid}".encode()
    if _c().mount(b"tmpfs", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
        err = ctypes.get_errno()
        raise OSError(
            err,
            f"cannot mount a tmpfs on {path}: {os.strerror(err)} (the job's disk cannot be bounded here; "
            "the agent option job_disk_mb=0 runs jobs without a bound)",
        )


def unmount_job_disk(path: str) -> bool:
    """Unmount the job's tmpfs (lazily if something still holds it); False if none was mounted."""
    if not os.path.ismount(path):
        return False
    if _c().umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot unmount the tmpfs on {path}: {os.strerror(err)}")
    return True


def bind_fd(fd: int, target: str) -> None:
    """Bind-mount the very folder the descriptor ``fd`` holds on ``target`` (no path is resolved again)."""
    if _c().mount(f"/proc/self/fd/{fd}".encode(), os.fsencode(target), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot bind a folder on {target}: {os.strerror(err)}")


def bind_shared(path: str) -> None:
    """Make the folder ``path`` a mount point of its own (bound on itself) with shared propagation.

    What is mounted below it later is then also mounted where containers
    bound it with ``rslave`` propagation (see :mod:`.student_pool`); nothing
    mounted there comes back.  Raises OSError if the kernel refuses.
    """
    target = os.fsencode(path)
    if _c().mount(target, target, None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot bind {path} on itself: {os.strerror(err)}")
    if _c().mount(None, target, None, _MS_SHARED, None) != 0:
        err = ctypes.get_errno()
        _c().umount2(target, _MNT_DETACH)
        raise OSError(err, f"cannot make {path} a shared mount: {os.strerror(err)}")


def detach(target: str) -> None:
    """Unmount ``target`` lazily (what still uses it keeps it); raises OSError if the kernel refuses."""
    if _c().umount2(os.fsencode(target), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot unmount {target}: {os.strerror(err)}")


def disk_full(path: str, size_mb: int) -> bool:
    """True if the tmpfs mounted on ``path`` has (almost) no room left: the job hit its bound."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bavail * st.f_frsize
    return free < max(64 << 10, (size_mb << 20) // 100) or st.f_favail == 0
