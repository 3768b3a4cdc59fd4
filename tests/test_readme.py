"""The README's commands are the ones CI runs, and they name files that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _commands(text: str) -> list[str]:
    """The indented one-line command blocks of a Markdown text."""
    return [m.group(1) for m in re.finditer(r"^    (\S.*)$", text, re.M)]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = _commands((REPO / "README.md").read_text())
    tests = [c for c in readme if "pytest tests" in c]
    assert len(tests) == 1, tests
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert ci_lines[-1] == tests[0], "the last line of .ci/run must be the README's test command"


def test_readme_test_command_pins_the_test_tools() -> None:
    (command,) = [c for c in _commands((REPO / "README.md").read_text()) if "pytest tests" in c]
    assert "-c constraints.txt" in command
    pins = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for tool in ("pytest", "pytest-twisted", "hypothesis", "mypy", "sphinx"):
        assert tool in pins, f"{tool} has no known-good version in constraints.txt"


def test_readme_runs_the_backend_in_one_command() -> None:
    assert "python -m pip install . && twistd -n inginious-backend" in _commands((REPO / "README.md").read_text())


def test_readme_says_both_dialects_and_warns_about_the_default() -> None:
    """Both dialects, and the warning: a 0.6 message stops a stock 0.9 backend."""
    text = " ".join((REPO / "README.md").read_text().split())
    assert "0.9" in text.split("## Quick start")[0]
    assert "--dialect 0.9" in text and "KeyError: '@type'" in text


def test_dialect_docs_warn_about_the_default() -> None:
    """docs/cli.rst and docs/inginious09.rst carry the same warning."""
    for page in ("cli.rst", "inginious09.rst"):
        text = " ".join((REPO / "docs" / page).read_text().split())
        warning = text.split(".. warning::", 1)[1][:700]
        assert "``--dialect 0.9``" in warning and "KeyError: '@type'" in warning and "stops" in warning, page
