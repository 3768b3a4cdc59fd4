"""The package type-checks: plain ``mypy`` in the repository root succeeds.

mypy reads its configuration (files, the mypy-zope plugin, the modules
without stubs) from pyproject.toml, so this is exactly what a developer
and ``tox -e typecheck`` run.  mypy caches in .mypy_cache: a run after the
first takes well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "inginious_tx"
#: Seconds a cold run (no cache) may take; one takes about 4 s here.
TIMEOUT = 300


def _missing_tools() -> list[str]:
    return [name for name in ("mypy", "mypy_zope") if importlib.util.find_spec(name) is None]


def test_package_type_checks() -> None:
    missing = _missing_tools()
    if missing:
        message = f"{' and '.join(missing)} not installed (pip install -e '.[typecheck]')"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must install the typecheck extra")
        pytest.skip(message)
    run = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    found = re.search(r"Success: no issues found in (\d+) source files", output)
    assert found is not None, output
    # Every module of the package was checked (the configuration names it).
    assert int(found.group(1)) == len(list(PACKAGE.rglob("*.py"))), output
