"""A result many may wait for, each with a Deferred of its own.

Services expose ``ready`` (listening has succeeded or failed).  One shared
Deferred that fails with nobody waiting on it is reported a second time, as
"Unhandled error in Deferred", after the service has logged the failure
itself; a Deferred per waiter is only created when someone waits.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["ReadyResult"]

_PENDING = object()


class ReadyResult:
    """The outcome of the current start: pending, a value, or a :class:`Failure`."""

    def __init__(self) -> None:
        self._result: Any = _PENDING
        self._waiters: List[Deferred[Any]] = []

    def reset(self) -> None:
        """A new start: forget the last outcome (waiters still pending stay)."""
        self._result = _PENDING

    def fire(self, result: Any) -> None:
        """Settle with ``result`` (a Failure fails every waiter)."""
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._deliver(d)

    def wait(self) -> Deferred[Any]:
        """A new Deferred, firing with the outcome (at once if settled)."""
        d: Deferred[Any] = Deferred()
        if self._result is _PENDING:
            self._waiters.append(d)
        else:
            self._deliver(d)
        return d

    def _deliver(self, d: Deferred[Any]) -> None:
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(self._result)
