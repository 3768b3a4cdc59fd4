"""Plugin discovery through entry points, for every plugin point.

Built-in plugins are declared in ``setup.cfg`` under the same entry point
groups as third-party ones, so both are found the same way.  Each loaded
plugin is checked against its interface with ``verifyClass``/``verifyObject``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Dict

from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyClass, verifyObject

__all__ = ["PluginError", "available", "load", "TRANSPORTS", "POLICIES", "AGENT_BACKENDS"]

#: The entry point groups (the one place they are spelled; setup.cfg and
#: third-party packaging name them too, tests/test_plugins.py checks setup.cfg).
TRANSPORTS = "inginious_tx.transports"
POLICIES = "inginious_tx.policies"
AGENT_BACKENDS = "inginious_tx.agent_backends"

#: entry point group -> interface its plugins provide
GROUPS = {
    TRANSPORTS: "ITransport",
    POLICIES: "ISchedulingPolicy",
    AGENT_BACKENDS: "IAgentBackend",
}


#: entry point group -> what one of its plugins is called, for messages
NOUNS = {
    TRANSPORTS: "transport",
    POLICIES: "scheduling policy",
    AGENT_BACKENDS: "agent backend",
}


class PluginError(LookupError):
    """A plugin name is unknown, or the plugin is broken."""


def _interface(group: str) -> InterfaceClass:
    from . import interfaces

    interface: InterfaceClass = getattr(interfaces, GROUPS[group])
    return interface


def available(group: str) -> Dict[str, Any]:
    """Name -> entry point, for every plugin installed in ``group``."""
    return {ep.name: ep for ep in entry_points(group=group)}


def load(group: str, name: str) -> Any:
    """The plugin object (usually a class or a factory) registered as ``name``.

    The object is checked against the group's interface: a class with
    ``verifyClass`` (``implementer`` declarations), an instance with
    ``verifyObject``.
    """
    eps = available(group)
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise PluginError(f"no {NOUNS.get(group, group + ' plugin')} named {name!r} (available: {known})")
    try:
        obj = eps[name].load()
    except Exception as e:
        raise PluginError(f"plugin {name!r} of {group} failed to load: {e}") from e
    iface = _interface(group)
    try:
        if isinstance(obj, type):
            verifyClass(iface, obj)
        else:
            verifyObject(iface, obj)
    except Exception as e:
        raise PluginError(f"plugin {name!r} of {group} does not provide {iface.__name__}: {e}") from e
    return obj
