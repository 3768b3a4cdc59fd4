"""Removing and archiving folder trees a job wrote: iterative, fd-based, no link followed.

A job controls what it leaves in its folder: a chain of folders thousands
deep, paths longer than ``PATH_MAX``, folders without permissions, symbolic
links to host files.  The functions here never recurse (no recursion limit),
hold one directory descriptor at a time (no descriptor limit, whatever the
depth), reach every entry relative to its parent's descriptor (no path length
limit), and never follow a symbolic link: a link is removed or archived as a
link.  Going back up is done through ``..`` of the current descriptor, checked
against the device and inode recorded on the way down, so a tree moved
meanwhile is an error, never a walk outside it.

All functions block: call them in a thread.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

__all__ = ["TreeError", "TreeTooLarge", "remove_tree", "archive_tree", "chown_tree"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_PATH_DIR = getattr(os, "O_PATH", 0o10000000) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeError(OSError):
    """The tree changed under us in a way that makes going on unsafe."""


class TreeTooLarge(ValueError):
    """An archive would exceed its entry or byte bound."""


def _identity(fd: int) -> Tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _open_dir(name: str, parent: int) -> int:
    """Open sub-folder ``name`` of ``parent``; give ourselves the right to if a job took it away."""
    try:
        return os.open(name, _DIR, dir_fd=parent)
    except PermissionError:
        # a folder a job took the rights away from: make it ours to read and clear, through a
        # descriptor of that very folder (a name the job swapped for a link meanwhile is refused)
        path_fd = os.open(name, _PATH_DIR, dir_fd=parent)
        try:
            os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
            return os.open(f"/proc/self/fd/{path_fd}", _DIR & ~os.O_NOFOLLOW)
        finally:
            os.close(path_fd)


def _up(fd: int, expected: Tuple[int, int]) -> int:
    """The descriptor of ``fd``'s parent, checked to be the folder we came down from."""
    parent = os.open("..", _DIR, dir_fd=fd)
    if _identity(parent) != expected:
        os.close(parent)
        raise TreeError(errno.EXDEV, "a folder was moved while its tree was walked")
    return parent


def _clear_one(fd: int) -> Optional[str]:
    """Unlink every non-folder entry of ``fd``; return the name of one sub-folder left, if any."""
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return entry.name
            try:
                os.unlink(entry.name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except PermissionError:
                os.chmod(".", 0o700, dir_fd=fd)  # a job made its folder read-only
                os.unlink(entry.name, dir_fd=fd)
    return None


def remove_tree(path: str) -> None:
    """Delete ``path`` and everything below it (missing is fine; a link or file is just unlinked)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    try:
        fd = os.open(path, _DIR)
    except PermissionError:
        os.chmod(path, 0o700)
        fd = os.open(path, _DIR)
    #: (name in the parent, identity of the parent) of each folder we went down into
    down: List[Tuple[str, Tuple[int, int]]] = []
    try:
        while True:
            sub = _clear_one(fd)
            if sub is not None:
                child = _open_dir(sub, fd)
                down.append((sub, _identity(fd)))
                os.close(fd)
                fd = child
                continue
            if not down:
                break
            name, parent_id = down.pop()
            parent = _up(fd, parent_id)
            os.close(fd)
            fd = parent
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


@dataclass
class _Budget:
    entries: int
    size: int

    def spend(self, entries: int, size: int) -> None:
        self.entries -= entries
        self.size -= size
        if self.entries < 0:
            raise TreeTooLarge("too many entries")
        if self.size < 0:
            raise TreeTooLarge("too many bytes")


def _listing(fd: int) -> List[str]:
    return sorted(os.listdir(fd))


def _walk(root_fd: int, budget: _Budget) -> Iterator[Tuple[str, str, int, os.stat_result]]:
    """(relative path, name, descriptor of its folder, lstat) of every entry, parents first.

    Holds the root descriptor and one more; the descriptor yielded is valid
    until the next step only.
    """
    fd = os.dup(root_fd)
    #: per level below the root: (relative path, identity of the parent, names still to visit)
    stack: List[Tuple[str, Tuple[int, int], Iterator[str]]] = []
    prefix = ""
    names: Iterator[str] = iter(_listing(fd))
    try:
        while True:
            name = next(names, None)
            if name is None:
                if not stack:
                    return
                _, parent_id, names = stack.pop()
                parent = _up(fd, parent_id)
                os.close(fd)
                fd = parent
                prefix = stack[-1][0] + "/" if stack else ""
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            rel = prefix + name
            budget.spend(1, len(rel.encode("utf-8", "surrogateescape")))
            yield rel, name, fd, st
            if stat.S_ISDIR(st.st_mode):
                child = os.open(name, _DIR, dir_fd=fd)
                stack.append((rel, _identity(fd), names))
                os.close(fd)
                fd = child
                prefix = rel + "/"
                names = iter(_listing(fd))
    finally:
        os.close(fd)


def archive_tree(path: str, max_entries: int, max_bytes: int) -> Optional[bytes]:
    """A gzipped tar of what is in folder ``path``; None if it is empty.

    Regular files, folders and symbolic links (as links) are kept; other kinds
    (FIFOs, devices, sockets) are left out.  Raises :class:`TreeTooLarge`
    beyond ``max_entries`` entries or ``max_bytes`` of file data and names,
    counted before anything is compressed.
    """
    root = os.open(path, _DIR)
    budget = _Budget(max_entries, max_bytes)
    buf = io.BytesIO()
    count = 0
    try:
        with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            for rel, name, fd, st in _walk(root, budget):
                info = tarfile.TarInfo(rel)
                info.mode = stat.S_IMODE(st.st_mode)
                info.mtime = int(st.st_mtime)
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif stat.S_ISLNK(st.st_mode):
                    info.type = tarfile.SYMTYPE
                    info.linkname = os.readlink(name, dir_fd=fd)
                    tar.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    budget.spend(0, st.st_size)
                    file_fd = os.open(name, _FILE, dir_fd=fd)
                    with os.fdopen(file_fd, "rb") as f:
                        real = os.fstat(f.fileno())
                        if not stat.S_ISREG(real.st_mode):
                            continue  # swapped for something else since the lstat
                        info.size = min(real.st_size, st.st_size)
                        tar.addfile(info, f)
                else:
                    continue
                count += 1
    finally:
        os.close(root)
    return buf.getvalue() if count else None


def chown_tree(path: str, uid: int, gid: int) -> None:
    """Give folder ``path`` and everything below it to ``uid:gid`` (links themselves, never their targets)."""
    os.chown(path, uid, gid, follow_symlinks=False)
    root = os.open(path, _DIR)
    try:
        for _, name, fd, _ in _walk(root, _Budget(1 << 62, 1 << 62)):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(root)
