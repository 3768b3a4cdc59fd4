"""Plugin discovery: built-ins are found through the same entry points as third-party plugins."""

from __future__ import annotations

import pytest

from inginious_tx import plugin


def test_unknown_plugin_name_lists_the_available_ones():
    with pytest.raises(plugin.PluginError) as e:
        plugin.load("inginious_tx.policies", "no-such-policy")
    assert "no-such-policy" in str(e.value)
    assert "priority" in str(e.value)


@pytest.mark.parametrize(
    "group,names",
    [
        ("inginious_tx.transports", {"zmq", "stream"}),
        ("inginious_tx.policies", {"priority", "fair", "shortest-first"}),
        ("inginious_tx.agent_backends", {"mock", "local", "docker"}),
    ],
)
def test_builtins_are_registered_and_load(group, names):
    assert names <= set(plugin.available(group))
    for name in names:
        assert plugin.load(group, name) is not None
