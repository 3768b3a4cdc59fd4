"""The golden wire vectors of tests/data (copies of /work/shared/protocol), for the message tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["vectors", "from_json"]

DATA = Path(__file__).parent / "data"


def vectors(dialect: str) -> List[Dict[str, Any]]:
    """The vectors of ``dialect`` ("0.6" or "0.9"), as written in ``wire-vectors-<dialect>.json``."""
    loaded: List[Dict[str, Any]] = json.loads((DATA / f"wire-vectors-{dialect}.json").read_text())
    return loaded


def from_json(value: Any) -> Any:
    """The JSON writing of the vectors back to Python values (bytes, tuples)."""
    if isinstance(value, dict):
        if set(value) == {"$bytes_hex"}:
            return bytes.fromhex(value["$bytes_hex"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(from_json(v) for v in value)
    return value
