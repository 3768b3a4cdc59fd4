"""Host-wide leases on the uids local jobs run as.

A local agent running as root gives each job uids of its own, and at the end
of the job kills every process still running as them.  Two agents on one
machine (or two local backends in one process) with the same uid range would
then share uids and kill each other's jobs.  A lease is an exclusive,
non-blocking ``flock`` on one file per uid in a folder on ``/run`` (a tmpfs):
the kernel drops it when its holder exits, so a killed agent leaves nothing
that blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from typing import Dict, Optional

from twisted.logger import Logger

__all__ = ["UidLeases", "LEASE_DIR"]

#: Where the lease files are (one per uid, empty).
LEASE_DIR = "/run/inginious-tx/job-uids"


class UidLeases:
    """Exclusive leases on uids, shared by every agent of the host."""

    log = Logger()

    def __init__(self, directory: str = LEASE_DIR) -> None:
        self._directory: Optional[str] = directory
        self._held: Dict[int, int] = {}

    def take(self, uid: int) -> bool:
        """Lease ``uid``; False when another holder has it (a few non-blocking syscalls on a tmpfs)."""
        if uid in self._held:
            return False
        if self._directory is None:
            return True
        try:
            os.makedirs(self._directory, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(self._directory, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            self.log.warn(
                "job uid leases unavailable in {directory} ({error}): agents on this host must not share a uid range",
                directory=self._directory, error=e.strerror,
            )  # fmt: skip
            self._directory = None
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._held[uid] = fd
        return True

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)  # the lock goes with the last descriptor of its open file

    def release_all(self) -> None:
        for uid in list(self._held):
            self.release(uid)
