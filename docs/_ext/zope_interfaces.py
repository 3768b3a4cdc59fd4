"""Document the zope interfaces of a module: ``.. zope-interfaces:: MODULE``.

autodoc skips interfaces (they are ``InterfaceClass`` instances, not
classes), and its documenter classes changed in Sphinx 9, so this small
directive writes the ``py:class`` / ``py:method`` / ``py:attribute``
descriptions itself, in definition order, from the interfaces' own docs.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, List

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from zope.interface import Interface
from zope.interface.interface import InterfaceClass, Method


def _indented(text: str, prefix: str) -> List[str]:
    return [prefix + line if line else "" for line in inspect.cleandoc(text or "").splitlines()]


def interface_lines(module_name: str) -> List[str]:
    """reST describing every interface defined in ``module_name``."""
    module = importlib.import_module(module_name)
    lines: List[str] = []
    for name, iface in vars(module).items():
        if not isinstance(iface, InterfaceClass) or iface.__module__ != module_name:
            continue
        lines += [f".. py:class:: {name}", f"   :module: {module_name}", ""]
        lines += _indented(iface.__doc__, "   ") + [""]
        bases = [b for b in iface.__bases__ if b is not Interface]
        if bases:
            names = ", ".join(f":class:`{b.__module__}.{b.__name__}`" for b in bases)
            lines += [f"   Extends {names}.", ""]
        own: Dict[str, Any] = {n: iface[n] for n in iface.names()}  # definition order
        for member, desc in own.items():
            if isinstance(desc, Method):
                lines += [f"   .. py:method:: {member}{desc.getSignatureString()}", ""]
            else:
                lines += [f"   .. py:attribute:: {member}", ""]
            lines += _indented(desc.getDoc(), "      ") + [""]
    return lines


class ZopeInterfaces(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> List[nodes.Node]:
        module_name = self.arguments[0]
        source = inspect.getsourcefile(importlib.import_module(module_name))
        if source:
            self.env.note_dependency(source)  # rebuild the page when the interfaces change
        container = nodes.container()
        self.state.nested_parse(StringList(interface_lines(module_name), source=f"<{module_name}>"), 0, container)
        return container.children


def setup(app: Any) -> Dict[str, Any]:
    app.add_directive("zope-interfaces", ZopeInterfaces)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
