"""The environment of the child processes tests start (twistd, the CLI, clients)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

#: The repository root (the working tree under test).
REPO = Path(__file__).resolve().parent.parent


def child_env() -> Dict[str, str]:
    """This environment, with the working tree and its twistd dropin importable
    first (not an older installed copy), no default backend from the caller's
    environment, and unbuffered output so tests read it as it comes."""
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "plugins")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("INGINIOUS_TX_BACKEND", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env
