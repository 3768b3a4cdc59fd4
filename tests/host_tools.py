"""What some tests need from the host (busybox, dash, a Docker engine...):
skip outside CI, fail under CI.

A fresh machine with nothing but Python has none of them; ``.ci/run``
installs them, so under ``CI`` a missing one is an error, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def missing_setup(problem: str) -> NoReturn:
    """Skip the test for ``problem`` (one line), or fail it when ``CI`` is set."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {problem}", pytrace=False)
    pytest.skip(problem)


def require_program(name: str) -> str:
    """The path of ``name`` on PATH; skips the test (outside CI) or fails it (under CI) when missing."""
    path = shutil.which(name)
    if path is not None:
        return path
    missing_setup(f"{name} is not installed (apt-get install {PACKAGES.get(name, name)}; .ci/run does)")


#: The Debian package of each program, for the skip message.
PACKAGES = {"busybox": "busybox-static", "dash": "dash"}


def require_wget() -> None:
    """The example network task fetches with wget, or busybox's."""
    if shutil.which("wget") is None and shutil.which("busybox") is None:
        missing_setup("neither wget nor busybox is installed (apt-get install busybox-static; .ci/run does)")
