"""The inputdata of the jobs to submit, from ``--input`` pairs and ``--input-file`` files."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Sequence

__all__ = ["UsageError", "load_inputs"]


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 64."""


def _read_text(path: str, what: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path} is not UTF-8 text: {e}")


def _input_pairs(pairs: Sequence[str]) -> Dict[str, Any]:
    data: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--input expects KEY=VALUE, got {pair!r}")
        if value.startswith("@") and len(value) > 1:
            value = _read_text(value[1:], "input value file")
        data[key] = value
    return data


def _input_file(path: str) -> Dict[str, Any]:
    text = _read_text(path, "input file")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UsageError(f"input file {path} is not valid JSON: {e}")
    if not isinstance(data, dict):
        raise UsageError(f"input file {path} must hold a JSON object (KEY: VALUE), not a {_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


def load_inputs(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The inputdata of every job to submit, in order (before --repeat)."""
    pairs = _input_pairs(args.input)
    bases = [_input_file(p) for p in args.input_file] or [{}]
    return [{**base, **pairs} for base in bases]
