"""A thread pool of one agent backend, for its blocking calls.

Agent backends block on files (job folders, cgroups) and on the Docker SDK.
Each gets its own pool rather than the reactor's shared one, so that its slow
calls (a big folder copied, an engine that hangs) cannot starve other users
of the reactor's pool (name resolution, ``deferToThread`` elsewhere), and its
size follows the backend's slots.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = ["BackendThreads"]

_T = TypeVar("_T")


class BackendThreads:
    """Runs blocking calls in a pool of ``maxthreads`` threads named ``name``.

    Started on first use; stopped by :meth:`stop` or, at the latest, during
    the shutdown of ``reactor`` (when it provides ``IReactorCore``).
    """

    def __init__(self, reactor: IReactorFromThreads, name: str, maxthreads: int) -> None:
        self._reactor = reactor
        self.name = name
        self.maxthreads = maxthreads
        self._pool: Optional[ThreadPool] = None
        self._trigger: Any = None

    @property
    def pool(self) -> Optional[ThreadPool]:
        """The running pool, or None before the first call and after :meth:`stop`."""
        return self._pool

    def call(self, f: Callable[..., _T], *args: Any, **kwargs: Any) -> Deferred[_T]:
        """``f(*args, **kwargs)`` in a thread of this pool; a Deferred of its result."""
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=self.maxthreads, name=self.name)
            self._pool.start()
            core = IReactorCore(self._reactor, None)
            if core is not None:
                self._trigger = core.addSystemEventTrigger("during", "shutdown", self.stop)
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)

    def stop(self) -> None:
        """Stop the pool (waits for the calls running in it); the next call starts a new one."""
        pool, self._pool = self._pool, None
        trigger, self._trigger = self._trigger, None
        core = IReactorCore(self._reactor, None)
        if trigger is not None and core is not None:
            try:
                core.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):  # already run: we are in it
                pass
        if pool is not None:
            pool.stop()
