"""Opening a path inside a job folder from a descriptor, never through a link a job put there.

A job owns most of its folder: between two steps of the agent it may rename
anything in it and put a symbolic link in its place.  The agent, often root,
therefore never resolves a path inside a job folder by name: it opens the job
folder (whose own name is in a folder only the agent writes) and walks down
from that descriptor with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS)`` where the kernel has it (Linux 5.6), else one
component at a time with ``O_NOFOLLOW`` (the relative paths here are fixed
names with no ``..``, so both refuse the same things).  What is found is then
checked (a folder, on the job's own file system) before the agent uses it.

Blocking: call in a thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from typing import Optional

__all__ = ["PathEscape", "open_beneath", "open_job_dir"]

_O_PATH = getattr(os, "O_PATH", 0o10000000)
_DIR = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
#: the system call number of openat2 (the same on every architecture: it came after the unification)
_SYS_OPENAT2 = 437


class PathEscape(OSError):
    """What the agent found is not the job's own (a link, not a folder, another file system)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: Optional[ctypes.CDLL] = None
#: None: not tried yet; False: the kernel has no openat2 (ENOSYS)
_has_openat2: Optional[bool] = None


def _openat2(dir_fd: int, path: str, flags: int) -> Optional[int]:
    """openat2 beneath ``dir_fd`` without links; None if the kernel has no openat2."""
    global _libc, _has_openat2
    if _has_openat2 is False:
        return None
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
    )  # fmt: skip
    if fd >= 0:
        _has_openat2 = True
        return int(fd)
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and _has_openat2 is None:  # EPERM: a seccomp filter refuses it
        _has_openat2 = False
        return None
    raise OSError(err, os.strerror(err), path)


def open_beneath(dir_fd: int, path: str, flags: int = _DIR) -> int:
    """Open ``path`` (relative, no ``..``) beneath ``dir_fd`` with no link followed at any step.

    ``flags`` apply to the last component.  Raises OSError (ELOOP/ENOTDIR/EXDEV
    for a link on the way) or :class:`PathEscape` for a path that is not a plain
    relative one.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if path.startswith("/") or ".." in parts or not parts:
        raise PathEscape(errno.EXDEV, f"not a path beneath the job folder: {path!r}")
    fd = _openat2(dir_fd, "/".join(parts), flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    if fd is not None:
        return fd
    current = dir_fd
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            step = os.open(part, (flags | os.O_NOFOLLOW | os.O_CLOEXEC) if last else _DIR, dir_fd=current)
            if current != dir_fd:
                os.close(current)
            current = step
    except BaseException:
        if current != dir_fd:
            os.close(current)
        raise
    return current


def open_job_dir(root: str, path: str) -> int:
    """An ``O_PATH`` descriptor of the folder ``path`` of the job folder ``root``, checked.

    ``root`` is the job folder's own path (its name is in a folder only the
    agent writes).  The folder must be reached without a link, be a folder,
    and be on the job folder's file system (the job's tmpfs when the agent is
    root: nothing of another job or of the host).  Raises :class:`PathEscape`
    saying why, or OSError.
    """
    root_fd = os.open(root, _DIR)
    try:
        try:
            fd = open_beneath(root_fd, path)
        except PathEscape:
            raise
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV, errno.EAGAIN):
                raise PathEscape(e.errno, f"{path} is not a folder of the job (a link or a file)") from None
            raise
        st, top = os.fstat(fd), os.fstat(root_fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_dev != top.st_dev:
            os.close(fd)
            raise PathEscape(errno.EXDEV, f"{path} is not a folder on the job's own disk")
        return fd
    finally:
        os.close(root_fd)
