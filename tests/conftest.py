"""Shared fixtures: short socket paths, log capture, bounded waiting, cleanup."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, Callable, List

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import formatEvent, globalLogPublisher


@pytest.fixture
def short_tmp() -> Any:
    """A directory with a short path (Unix socket paths are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="itx-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class LogCapture(list):
    """Every Twisted log event emitted during the test."""

    def texts(self) -> List[str]:
        return [formatEvent(e) for e in self]

    def has(self, *fragments: str) -> bool:
        """True if one event's text contains every fragment."""
        return any(all(f in t for f in fragments) for t in self.texts())


@pytest.fixture
def log_events() -> Any:
    events = LogCapture()
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def _until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Deferred:
    """A Deferred that fires once ``predicate()`` is true, checked every
    reactor turn (at most every 2 ms); fails after ``timeout`` seconds."""
    from twisted.internet import reactor

    d: Deferred = Deferred()
    deadline = reactor.seconds() + timeout

    def check() -> None:
        try:
            if predicate():
                d.callback(None)
                return
        except Exception:
            d.errback()
            return
        if reactor.seconds() > deadline:
            d.errback(AssertionError(f"timed out after {timeout}s waiting for {what}"))
            return
        reactor.callLater(0.002, check)

    check()
    return d


def _within(d: Deferred, timeout: float = 5.0) -> Deferred:
    """``d``, failing with TimeoutError if it takes longer than ``timeout`` seconds."""
    from twisted.internet import reactor

    return d.addTimeout(timeout, reactor)


@pytest.fixture
def until() -> Callable[..., Deferred]:
    """``until(predicate, timeout=5.0, what=...)``: see :func:`_until`."""
    return _until


@pytest.fixture
def within() -> Callable[..., Deferred]:
    """``within(deferred, timeout=5.0)``: see :func:`_within`."""
    return _within


@pytest.fixture
def closers() -> Any:
    """Append stop callables (returning Deferreds); they run after the test."""
    items: List[Callable[[], Any]] = []
    yield items
    if items:
        pytest_twisted.blockon(
            gatherResults([maybeDeferred(c) for c in reversed(items)], consumeErrors=True).addErrback(lambda _: None)
        )
