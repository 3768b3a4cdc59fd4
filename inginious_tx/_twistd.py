"""The root service of the ``twistd`` commands: a service that cannot start ends the process, non-zero.

twistd exits 0 whenever its reactor stops, even when the application could
not start (Twisted issues #4762 and #11335: there is no way to hand twistd
an exit status), so a port in use looked like a clean stop to systemd and
``Restart=on-failure`` never fired.  :class:`StartGuard` starts its
children; when one raises in ``startService`` or its ``ready`` Deferred
fails (it could not listen), it stops the reactor and records the status.
Once twistd has shut down, stopped its logging and removed its pid file,
an ``atexit`` hook ends the process with that status (``os._exit``, after
flushing: the only way left to set an exit status after twistd's ``run``
returns); it is registered when the failure happens, so it runs first of
the exit hooks, after flushing the standard streams.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Callable, List, Optional

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["StartGuard", "EXIT_START_FAILED"]

#: Exit status of a twistd command whose service could not start (port in use, unreachable file...).
EXIT_START_FAILED = 1


def _exit_now(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


class StartGuard(MultiService):
    """A ``MultiService`` for twistd: a child that cannot start stops the
    reactor and makes the process exit with :data:`EXIT_START_FAILED`.

    A child's own failure message (a service with ``ready`` logs why it
    could not listen) is the one line logged; a child that raises in
    ``startService`` gets one critical line here, without a traceback.
    ``register`` and ``exit`` are for tests (``atexit.register``, ``os._exit``).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorCore,
        name: str,
        register: Callable[[Callable[[], None]], Any] = atexit.register,
        exit: Callable[[int], None] = _exit_now,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self.name = name  # type: ignore[assignment]
        self._exit = exit
        self._register = register
        #: the status the process ends with, once a child failed to start
        self.status: Optional[int] = None
        self._started: List[IService] = []

    def startService(self) -> None:
        self.running = 1  # MultiService.startService, with each child guarded
        self._started = []
        for child in list(self):
            if self.status is not None:
                return  # an earlier child failed at once: start nothing more (no agent registers)
            self._started.append(child)
            try:
                child.startService()
            except Exception as e:
                what = getattr(child, "name", None) or type(child).__name__
                self.log.critical("{name} cannot start: {error}", name=what, error=_describe(e))
                self.failed()
                return
            ready: Optional[Deferred] = getattr(child, "ready", None)
            if isinstance(ready, Deferred):
                ready.addErrback(self._not_ready)

    def stopService(self) -> Deferred:
        """Stop the children that were started, last first."""
        self.running = 0
        started, self._started = self._started, []
        stops = [maybeDeferred(child.stopService) for child in reversed(started)]
        return DeferredList(stops, consumeErrors=True).addCallback(lambda _: None)

    def _not_ready(self, failure: Failure) -> None:
        # the child has logged why (one line); only the exit is ours
        self.failed()

    def failed(self, status: int = EXIT_START_FAILED) -> None:
        """Stop the reactor; the process will end with ``status``."""
        if self.status is None:
            self.status = status
            self._register(self._at_exit)  # only now: a guard that never fails leaves no trace
        self._reactor.callWhenRunning(self._stop)

    def _stop(self) -> None:
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass

    def _at_exit(self) -> None:
        if self.status is not None:
            self._exit(self.status)


def _describe(error: BaseException) -> str:
    """The error as one line: its own words when they say it all (a port taken, a bad value), else with its type."""
    from twisted.internet.error import BindError

    text = str(error) or type(error).__name__
    return text if isinstance(error, (OSError, ValueError, BindError)) else f"{type(error).__name__}: {text}"


def guarded(reactor: Any, name: str, *services: IService) -> StartGuard:
    """A :class:`StartGuard` holding ``services`` (started in that order)."""
    top = StartGuard(IReactorCore(reactor), name)
    for service in services:
        service.setServiceParent(top)
    return top
