"""The golden wire vectors of tests/data (copies of /work/shared/protocol), for the message tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

__all__ = ["vectors", "from_json"]

DATA = Path(__file__).parent / "data"


def vectors(dialect: str) -> List[Dict[str, Any]]:
    """The vectors of ``dialect`` ("0.6" or "0.9"), as written in ``wire-vectors-<dialect>.json``."""
    loaded: List[Dict[str, Any]] = json.loads((DATA / f"wire-vectors-{dialect}.json").read_text())
    return loaded


def from_json(value: Any, sequence: Callable[[Iterator[Any]], Any] = tuple) -> Any:
    """The JSON writing of the vectors (and of the INGInious driver's events) back to
    Python values: ``{"$bytes_hex": ...}`` as bytes, lists as ``sequence`` (tuples)."""
    if isinstance(value, dict):
        if set(value) == {"$bytes_hex"}:
            return bytes.fromhex(value["$bytes_hex"])
        return {k: from_json(v, sequence) for k, v in value.items()}
    if isinstance(value, list):
        return sequence(from_json(v, sequence) for v in value)
    return value
