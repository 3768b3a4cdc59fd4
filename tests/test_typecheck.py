"""The package type-checks: plain ``mypy`` in the repository root succeeds.

mypy reads its configuration (files, the mypy-zope plugin, the modules
without stubs) from pyproject.toml, so this is exactly what a developer
and ``tox -e typecheck`` run.  mypy caches in .mypy_cache: a run after the
first takes well under a second.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from host_tools import missing_setup

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "inginious_tx"
#: Seconds a cold run (no cache) may take; one takes about 4 s here.
TIMEOUT = 300


def _require_tools() -> None:
    missing = [name for name in ("mypy", "mypy_zope") if importlib.util.find_spec(name) is None]
    if missing:
        missing_setup(f"{' and '.join(missing)} not installed (pip install -e '.[test]' -c constraints.txt)")


def test_package_type_checks() -> None:
    _require_tools()
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


def _strict_modules() -> list[str]:
    """The modules pyproject.toml holds to the flags of ``mypy --strict``."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    for override in config["tool"]["mypy"].get("overrides", []):
        if override.get("disallow_untyped_defs") and override.get("disallow_any_generics"):
            return list(override["module"])
    return []


def test_strict_modules_pass_mypy_strict() -> None:
    _require_tools()
    modules = _strict_modules()
    assert {"inginious_tx.interfaces", "inginious_tx.dispatch", "inginious_tx.messages.*"} <= set(modules)
    paths = []
    for module in modules:
        base = module.removesuffix(".*").replace(".", "/")
        path = REPO / (base + ".py")
        paths.append(str(path.relative_to(REPO)) if path.exists() else base + "/")
    paths = sorted(set(paths))
    # The modules they import are analysed, not reported (they are held to the normal configuration).
    command = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", *paths]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stdout + run.stderr
