"""Value checks for the twistd command-line options of the backend and the agent."""

from __future__ import annotations

import sys
from typing import Callable, Iterable, NoReturn, Optional

__all__ = ["at_least_one", "count", "positive_float", "limit", "plugin_listing", "print_and_exit"]


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


def plugin_listing(names: Iterable[str], load: Callable[[str], object], default: str) -> str:
    """One line per installed plugin: its name and the first line of its docstring.

    A plugin that fails to load is listed with the reason, so that ``--list-*``
    shows what is broken instead of failing.
    """
    lines = []
    for name in names:
        try:
            doc = (getattr(load(name), "__doc__", None) or "").strip().splitlines()
            summary = doc[0] if doc else ""
        except Exception as e:
            summary = f"(unavailable: {e})"
        lines.append(f"{name}{' (default)' if name == default else ''}: {summary}\n")
    return "".join(lines)


def print_and_exit(text: str) -> NoReturn:
    """End option parsing after a ``--list-*`` flag: print ``text``, exit 0."""
    sys.stdout.write(text)
    sys.stdout.flush()
    raise SystemExit(0)
