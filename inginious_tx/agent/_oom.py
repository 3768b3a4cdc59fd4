"""The kernel's count of out-of-memory kills in a container, read from the host without the engine.

The engine learns of an out-of-memory kill through events relayed by
containerd, some milliseconds later, and answers ``inspect`` slowly while it
handles a container that just exited.  The kernel counts each kill at once in
the memory cgroup (``oom_kill`` in ``memory.events`` under cgroup v2, in
``memory.oom_control`` under v1): a job answered as soon as its grading
container's program exits reads that count instead (see :mod:`.inginious_job`),
and asks the engine only when the file cannot be found (another cgroup
layout, a runtime that puts the container elsewhere, the group removed).
Everything here blocks (file reads): call it in a thread.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

__all__ = ["oom_counter", "oom_kills"]


def _mounts() -> Tuple[Optional[Tuple[str, str]], Optional[Tuple[str, str]]]:
    """(the v2 mount, the v1 memory mount), each as (mount point, root), as this process sees them."""
    v2 = v1 = None
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None, None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        if rfields[0] == "cgroup2" and v2 is None:
            v2 = (fields[4], fields[3])
        elif rfields[0] == "cgroup" and "memory" in rfields[2].split(",") and v1 is None:
            v1 = (fields[4], fields[3])
    return v2, v1


def _under(mount: Tuple[str, str], path: str) -> Optional[str]:
    point, root = mount
    if root != "/":
        if path != root and not path.startswith(root + "/"):
            return None
        path = path[len(root) :]
    return os.path.join(point, path.lstrip("/"))


def oom_counter(pid: int) -> Optional[str]:
    """The file that counts the OOM kills of the memory cgroup of process ``pid``; None if not found."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines: List[str] = f.read().splitlines()
    except OSError:
        return None
    v2, v1 = _mounts()
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if v1 is not None and "memory" in parts[1].split(","):
            folder, name = _under(v1, parts[2]), "memory.oom_control"
        elif v2 is not None and parts[0] == "0" and parts[1] == "" and v1 is None:
            folder, name = _under(v2, parts[2]), "memory.events"
        else:
            continue
        if folder is not None and os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def oom_kills(path: str) -> Optional[int]:
    """The ``oom_kill`` count in ``path`` (:func:`oom_counter`); None if it cannot be read (gone)."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        return None
    return None
