"""The configuration file of ``twistd inginious-backend`` and ``twistd inginious-agent``.

A TOML file, one table per command (``[backend]``, ``[agent]``), whose keys
are the commands' long option names::

    [backend]
    clients = ["zmq:tcp://127.0.0.1:2000"]
    agents = ["zmq:tcp://127.0.0.1:2001"]
    policy = "fair"
    max-waiting = 5000

``--config FILE`` turns the table into options placed *before* the command
line, so every option can be set, each value goes through the same checks
as on the command line (an error names the file, the table and the key),
and the command line wins: a value given there replaces the file's, and a
repeatable option given there (``--clients``, ``--environment``...)
replaces the file's whole list.

TOML rather than YAML: Python reads it with its standard library
(``tomllib``, 3.11; the ``tomli`` backport on 3.10), so the commands need no
YAML parser, and its values have explicit types (``"no"`` stays a string,
``0.10`` stays ``0.10``), which suits a file of endpoints and numbers.
"""

from __future__ import annotations

import getopt
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

from twisted.python import usage

__all__ = ["load_section", "with_config", "config_argv", "SECTIONS"]

if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - Python 3.10
    import tomli as _toml

#: The tables a configuration file may hold, one per command.
SECTIONS = ("backend", "agent")
#: Options that do something rather than set something (and ``--list-*``): not in a file.
_ACTIONS = frozenset({"config", "help", "version"})


def _take_config(argv: List[str]) -> Tuple[Optional[str], List[str]]:
    """The value of the last ``--config`` in ``argv`` (None without), and ``argv`` without them."""
    path: Optional[str] = None
    rest: List[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg == "--config":
            if i + 1 >= len(argv):
                raise usage.UsageError("--config requires a value (a TOML file)")
            path = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            path = arg[len("--config=") :]
        else:
            rest.append(arg)
        i += 1
    return path, rest


def load_section(path: str, section: str) -> Dict[str, Any]:
    """The ``[section]`` table of the TOML file at ``path`` (UsageError naming the file otherwise)."""
    try:
        with open(path, "rb") as f:
            document = _toml.load(f)
    except OSError as e:
        raise usage.UsageError(f"--config {path!r}: {e.strerror}") from None
    except _toml.TOMLDecodeError as e:
        raise usage.UsageError(f"--config {path!r}: not valid TOML: {e}") from None
    stray = [key for key, value in document.items() if key not in SECTIONS and not isinstance(value, dict)]
    if stray:
        raise usage.UsageError(
            f"{path}: {', '.join(map(repr, stray))} outside a table: options go under "
            + " or ".join(f"[{s}]" for s in SECTIONS)
        )
    table = document.get(section)
    if table is None:
        raise usage.UsageError(f"{path}: no [{section}] table")
    if not isinstance(table, dict):
        raise usage.UsageError(f"{path}: {section} must be a table ([{section}])")
    return table


def _option_kinds(options: usage.Options) -> Dict[str, bool]:
    """Long option name -> whether it takes a value."""
    kinds: Dict[str, bool] = {}
    for name in options.longOpt:
        kinds[name.rstrip("=")] = name.endswith("=")
    return kinds


def _canonical(options: usage.Options, name: str) -> str:
    mangled = name.replace("-", "_")
    return str(options.synonyms.get(mangled, options.synonyms.get(name, name))).replace("_", "-")


def _on_command_line(options: usage.Options, argv: List[str]) -> set:
    """The canonical names of the options ``argv`` gives (empty if it does not parse: the real parse says why)."""
    try:
        given, _ = getopt.getopt(argv, options.shortOpt, options.longOpt)
    except getopt.error:
        return set()
    return {_canonical(options, opt.lstrip("-")) for opt, _ in given}


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise usage.UsageError(f"{where}: expected a string or a number, not {type(value).__name__} {value!r}")
    return str(value)


def _setting(value: Any, where: str) -> str:
    """A value of a KEY=VALUE table (``[agent.option]``): a string, a number, or true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _scalar(value, where)


def _checked(options: usage.Options, name: str, value: str, where: str) -> str:
    """``value`` if the option's own check accepts it; else a UsageError naming the file and key."""
    dispatch = getattr(options, "_dispatch", {})
    handler = dispatch.get(name, dispatch.get(name.replace("-", "_")))
    coerce = getattr(handler, "coerce", None)
    if coerce is not None:
        try:
            coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"{where} = {value!r}: {e}") from None
    return value


def config_argv(options: usage.Options, table: Mapping[str, Any], path: str, command_line: List[str]) -> List[str]:
    """The options ``table`` (a configuration section) sets, as command-line arguments,
    without the repeatable ones that ``command_line`` gives itself."""
    section = getattr(options, "config_section", "?")
    command = getattr(options, "command", "?")
    repeatable = set(getattr(options, "repeatable", ()))
    kinds = _option_kinds(options)
    given = _on_command_line(options, command_line)
    argv: List[str] = []
    for raw_key, value in table.items():
        key = raw_key.replace("_", "-")
        where = f"{path}: [{section}] {raw_key}"
        if key not in kinds:
            raise usage.UsageError(f"{where}: no such option (see twistd {command} --help)")
        if key in _ACTIONS or key.startswith("list-"):
            raise usage.UsageError(f"{where}: --{key} is a command-line action, not a setting")
        name = _canonical(options, key)
        if not kinds[key]:
            if not isinstance(value, bool):
                raise usage.UsageError(f"{where}: expected true or false, not {value!r}")
            if value:
                argv.append(f"--{key}")
            continue
        if name in repeatable:
            if name in given:
                continue  # the command line's list replaces the file's
            if isinstance(value, dict):  # KEY=VALUE pairs, e.g. [agent.option]
                items = [f"{k}={_setting(v, f'{where}.{k}')}" for k, v in value.items()]
            elif isinstance(value, list):
                items = [_scalar(v, where) for v in value]
            else:
                items = [_scalar(value, where)]
            argv += [f"--{key}={item}" for item in items]
            continue
        if isinstance(value, (list, dict)):
            raise usage.UsageError(f"{where}: takes one value, not a {type(value).__name__}")
        argv.append(f"--{key}={_checked(options, name, _scalar(value, where), where)}")
    return argv


def with_config(options: usage.Options, argv: List[str]) -> List[str]:
    """``argv`` with the options of its ``--config FILE`` (if any) placed before it, ``--config`` removed."""
    path, rest = _take_config(argv)
    if path is None:
        return rest
    table = load_section(path, getattr(options, "config_section", ""))
    from_file = config_argv(options, table, path, rest)
    if hasattr(options, "config_file"):
        options.config_file = path
    return from_file + rest
