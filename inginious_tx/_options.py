"""Value checks for the twistd command-line options of the backend and the agent."""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, List, NoReturn, Optional

from twisted.python import usage

__all__ = [
    "at_least_one", "count", "positive_float", "limit", "plugin_listing", "print_and_exit", "CommandOptions",
    "EXIT_USAGE",
]  # fmt: skip

#: Exit status of ``twistd inginious-*`` on a bad command line or configuration file
#: (twistd itself uses 1, which the services keep for "could not start": see :mod:`._exit`).
EXIT_USAGE = 2


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("not a whole number")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError("not a whole number") from None


def at_least_one(value: str) -> int:
    """An integer >= 1 (slots, retries of a heartbeat, byte sizes)."""
    number = _whole(value)
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def count(value: str) -> int:
    """An integer >= 0."""
    number = _whole(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def positive_float(value: str) -> float:
    """A number of seconds > 0."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError("not a number") from None
    if not number > 0:
        raise ValueError("must be > 0")
    return number


def limit(value: str) -> Optional[int]:
    """A non-negative count, or ``none`` for no limit."""
    if str(value).strip().lower() in ("none", "unlimited"):
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


class _NamedCoerce(usage.CoerceParameter):
    """Twisted's value check, with the option and the value in the message
    (Twisted says only "Parameter type enforcement failed: must be >= 0")."""

    def dispatch(self, parameterName: str, value: Optional[str]) -> None:
        if value is None:
            raise usage.UsageError(f"--{parameterName} requires a value")
        try:
            self.options.opts[parameterName] = self.coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"--{parameterName} {value!r}: {e}") from None


class CommandOptions(usage.Options):
    """The options of a ``twistd`` command of this project.

    A value that fails its check names the option; run by twistd (as a
    subcommand), a usage error prints one line and a pointer to ``--help``
    and exits with :data:`EXIT_USAGE`, instead of twistd's whole help
    followed by the error.  ``--config FILE`` reads defaults from a
    configuration file (:mod:`inginious_tx.config`): the command line wins.
    """

    #: the twistd subcommand, for messages
    command = ""
    #: the section of the configuration file this command reads
    config_section = ""
    #: options that may be given several times (a list in the configuration file)
    repeatable: tuple = ()

    def __init__(self) -> None:
        super().__init__()
        for name, handler in list(self._dispatch.items()):
            if type(handler) is usage.CoerceParameter:
                self._dispatch[name] = _NamedCoerce(self, handler.coerce)

    def opt_config(self, path: str) -> None:
        """TOML file whose [backend] or [agent] table sets options by their long names; the command line wins"""
        # read by parseOptions, before the command line; here for --help only

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        if options is None:
            options = sys.argv[1:]
        try:
            from .config import with_config

            super().parseOptions(with_config(self, list(options)))
        except usage.UsageError as e:
            if self.parent is None:  # embedded use: the caller reports it
                raise
            name = f"twistd {self.command}"
            sys.stderr.write(f"{name}: {e}\nRun '{name} --help' for the options.\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_USAGE) from None
