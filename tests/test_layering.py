"""The package's layering, read from its import statements (no import is run).

Lower layers never import higher ones; the backend and agent packages know
nothing of each other (``inginious_tx.embedded`` composes them); no module
reaches into another module's private names.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parent.parent / "inginious_tx"

#: package -> packages it must not import (directly, lazily or not)
FORBIDDEN = {
    "inginious_tx.messages": {"inginious_tx.transport", "inginious_tx.backend", "inginious_tx.agent",
                              "inginious_tx.client", "inginious_tx.cli", "inginious_tx.embedded"},
    "inginious_tx.transport": {"inginious_tx.backend", "inginious_tx.agent", "inginious_tx.client",
                               "inginious_tx.cli", "inginious_tx.embedded"},
    "inginious_tx.backend": {"inginious_tx.agent", "inginious_tx.client", "inginious_tx.cli"},
    "inginious_tx.agent": {"inginious_tx.backend", "inginious_tx.client", "inginious_tx.cli",
                           "inginious_tx.embedded"},
    "inginious_tx.client": {"inginious_tx.backend", "inginious_tx.agent", "inginious_tx.cli",
                            "inginious_tx.embedded"},
}  # fmt: skip
#: module -> modules it must not import (agent backends share helpers, not each other)
FORBIDDEN_MODULES = {
    "inginious_tx.agent.local": {"inginious_tx.agent.mock", "inginious_tx.agent.docker"},
    "inginious_tx.agent.docker": {"inginious_tx.agent.mock", "inginious_tx.agent.local"},
    "inginious_tx.agent.mcq": {"inginious_tx.agent.mock", "inginious_tx.agent.local", "inginious_tx.agent.docker"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[Tuple[str, List[str], int]]:
    """(imported module, names imported from it, line) for every import in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if node.module is None:  # from . import x: x is a module
                for name in names:
                    yield f"{target}.{name}", [], node.lineno
            else:
                yield target, names, node.lineno


def _graph() -> Dict[str, List[Tuple[str, List[str], int]]]:
    return {_module_name(p): list(_imports(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_import_goes_up_or_across() -> None:
    wrong: List[str] = []
    for module, imports in _graph().items():
        for target, _, line in imports:
            for package, forbidden in FORBIDDEN.items():
                if _within(module, package):
                    wrong += [f"{module}:{line} imports {target}" for f in forbidden if _within(target, f)]
            for f in FORBIDDEN_MODULES.get(module, ()):
                if _within(target, f):
                    wrong.append(f"{module}:{line} imports {target}")
    assert wrong == []


def _private_module(module: str) -> bool:
    return module.rsplit(".", 1)[-1].startswith("_")


def test_no_module_imports_another_modules_private_names() -> None:
    modules: Set[str] = set(_graph())
    wrong = [
        f"{module}:{line} imports {name} from {target}"
        for module, imports in _graph().items()
        for target, names, line in imports
        if target in modules and target != module
        for name in names
        if name.startswith("_")
        and not name.startswith("__")
        # a package's own private modules (foo/_bar.py) are its implementation,
        # and may share private names with the package's other modules
        and target + "." + name not in modules
        and not (_private_module(module) and module.rsplit(".", 1)[0] == target.rsplit(".", 1)[0])
    ]
    assert wrong == []


def test_the_composition_module_is_the_one_that_knows_both() -> None:
    targets = {t for t, _, _ in _graph()["inginious_tx.embedded"]}
    assert any(_within(t, "inginious_tx.backend") or _within(t, "inginious_tx.agent") for t in targets)
    assert any(_within(t, "inginious_tx.agent") for t in targets)
