"""Value checks for the twistd command-line options of the backend and the agent."""

from __future__ import annotations

from typing import Optional

__all__ = ["at_least_one", "count", "positive_float", "limit"]


def at_least_one(value: str) -> int:
    """An integer >= 1 (slots, retries of a heartbeat, byte sizes)."""
    number = int(value)
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def count(value: str) -> int:
    """An integer >= 0."""
    number = int(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def positive_float(value: str) -> float:
    """A number of seconds > 0."""
    number = float(value)
    if not number > 0:
        raise ValueError("must be > 0")
    return number


def limit(value: str) -> Optional[int]:
    """A non-negative count, or ``none`` for no limit."""
    if value.strip().lower() in ("none", "unlimited"):
        return None
    return count(value)


limit.coerceDoc = "A number >= 0, or 'none' for no limit."  # type: ignore[attr-defined]
