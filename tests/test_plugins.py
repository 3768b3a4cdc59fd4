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


def test_a_third_party_transport_is_found_by_endpoint_string(tmp_path, monkeypatch):
    """A distribution that declares an entry point is all it takes: no edit here."""
    import sys

    from inginious_tx import transport
    from inginious_tx.testing import MemoryTransport

    monkeypatch.setattr(transport, "_cache", None)
    with pytest.raises(transport.UnknownEndpoint, match="mem:queue"):
        transport.transport_for("mem:queue")

    dist = tmp_path / "third_party_transport-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party-transport\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[inginious_tx.transports]\nmemory = inginious_tx.testing:MemoryTransport\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.setattr(transport, "_cache", None)
    assert isinstance(transport.transport_for("mem:queue"), MemoryTransport)
    assert transport.transport_for("zmq:tcp://127.0.0.1:1").name == "zmq"
    monkeypatch.setattr(transport, "_cache", None)


def test_the_entry_point_groups_are_spelled_once():
    # plugin.py names the groups; the packaging declares the built-ins in the same ones.
    import configparser
    from pathlib import Path

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    declared = {g for g in setup["options.entry_points"] if g.startswith("inginious_tx.")}
    assert declared == set(plugin.GROUPS) == {plugin.TRANSPORTS, plugin.POLICIES, plugin.AGENT_BACKENDS}
    from inginious_tx.agent import tap as agent_tap
    from inginious_tx.backend import policies

    assert (agent_tap.GROUP, policies.GROUP) == (plugin.AGENT_BACKENDS, plugin.POLICIES)
