"""Give freed memory back to the system after large releases of queued input.

glibc's allocator keeps the memory of freed objects in its arenas: once
clients that held hundreds of MB of queued input leave, the backend's
resident size stays near its peak although nothing holds that memory any
more (measured: 400 MB kept after 800 MB were freed; ``malloc_trim(0)``
brings it back to about 60 MB).  :class:`MemoryTrimmer` watches the bytes
of input the backend holds (:attr:`Backend.held_bytes`) through the job
events and, when they have fallen by at least ``threshold`` since their
last peak, calls ``malloc_trim(0)`` on the reactor, at most once per
``interval`` seconds.  Where there is no glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IJobObserver

__all__ = ["MemoryTrimmer", "malloc_trim", "DEFAULT_TRIM_THRESHOLD", "DEFAULT_TRIM_INTERVAL"]

log = Logger()

#: Bytes of held input that must have been released since the last peak before trimming.
DEFAULT_TRIM_THRESHOLD = 64 << 20
#: Least time between two trims, in seconds (a trim of a large heap takes some milliseconds).
DEFAULT_TRIM_INTERVAL = 5.0

_trim: Optional[Callable[[int], int]] = None
_looked = False


def malloc_trim() -> bool:
    """Ask glibc to return free heap memory to the system; False where that is not possible."""
    global _trim, _looked
    if not _looked:
        _looked = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _trim = libc.malloc_trim
                _trim.argtypes = [ctypes.c_size_t]
                _trim.restype = ctypes.c_int
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                _trim = None
    if _trim is None:
        return False
    _trim(0)
    return True


@implementer(IJobObserver)
class MemoryTrimmer:
    """An :class:`~inginious_tx.interfaces.IJobObserver` that trims the heap after large releases.

    ``backend`` is anything with a ``held_bytes`` attribute (the backend
    core); ``trim`` is :func:`malloc_trim` unless a test gives another.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        backend: Any,
        threshold: int = DEFAULT_TRIM_THRESHOLD,
        interval: float = DEFAULT_TRIM_INTERVAL,
        trim: Callable[[], bool] = malloc_trim,
    ) -> None:
        self._reactor = reactor
        self._backend = backend
        self.threshold = threshold
        self.interval = interval
        self._trim = trim
        self._peak = 0
        self._last = -interval
        self._check_call: Optional[IDelayedCall] = None
        #: Trims done so far (tests, metrics).
        self.trims = 0

    def job_queued(self, job: Any) -> None:
        held = self._backend.held_bytes
        if held > self._peak:
            self._peak = held

    def job_refused(self, client_name: str, job_id: str, reason: str) -> None:
        pass

    def job_started(self, job: Any, agent_name: str) -> None:
        pass

    def job_requeued(self, job: Any, agent_name: str, reason: str) -> None:
        pass

    def job_finished(self, job: Any, kind: str, agent_name: Optional[str]) -> None:
        # Looked at once the core is done (it may release the job's bytes
        # after telling observers), and once for a whole departure's jobs.
        if self._check_call is None and self._peak - self._backend.held_bytes + job_size(job) >= self.threshold:
            self._check_call = self._reactor.callLater(0, self._check)

    def _check(self) -> None:
        self._check_call = None
        held = self._backend.held_bytes
        if self._peak - held < self.threshold:
            return
        wait = self._last + self.interval - self._reactor.seconds()
        if wait > 0:
            self._check_call = self._reactor.callLater(wait, self._check)
            return
        self._last = self._reactor.seconds()
        self._peak = held
        if self._trim():
            self.trims += 1
            log.debug("gave freed memory back to the system (input held now: {held} bytes)", held=held)

    def stop(self) -> None:
        """Cancel a pending trim."""
        call, self._check_call = self._check_call, None
        if call is not None and call.active():
            call.cancel()


def job_size(job: Any) -> int:
    """The bytes of input ``job`` holds, if it says (``size``), else 0."""
    size = getattr(job, "size", 0)
    return size if isinstance(size, int) else 0
