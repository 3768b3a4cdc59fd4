"""Status page, status.json and /metrics show each peer's dialect, environments
as type and name, and which clients are still active.

A real backend core on the in-memory transport (0.6 and 0.9 peers through
the same dialect detection as the network transports), a fake clock, and a
:class:`StatusRecorder` sampling it.
"""

from __future__ import annotations

from typing import Any, Dict

from prometheus_client.exposition import generate_latest
from test_backend_core import World
from test_backend_dialects import agent09, client09, job09
from test_status import samples, value

from inginious_tx.backend.metrics import backend_registry
from inginious_tx.backend.status import render_html, status_snapshot
from inginious_tx.backend.testing import new_job
from inginious_tx.backend.timeseries import ACTIVE_SECONDS, StatusRecorder
from inginious_tx.messages import Ping


def _world() -> tuple[World, StatusRecorder]:
    world = World()
    world.clock.advance(1000)
    recorder = StatusRecorder(world.backend, world.clock, seconds=120)
    recorder.start()
    return world, recorder


def _metrics(world: World, recorder: StatusRecorder) -> Dict[Any, float]:
    return samples(generate_latest(backend_registry(world.backend, recorder)).decode())


def test_dialects_and_environment_types_everywhere() -> None:
    world, recorder = _world()
    old = world.client("old-frontend")
    new = client09(world, "new-frontend")
    world.agent("agent06", 1, ["default"])
    agent09(world, "agent09", 2, {"docker": ["default"], "ssh": ["py"]})
    new.send(job09("w1", env="nope", kind="mcq"))  # nobody offers mcq/nope: it waits
    old.send(new_job("w2", environment="gone"))  # a docker environment nobody offers
    world.pump()
    world.tick()

    snap = status_snapshot(world.backend, world.clock.seconds(), recorder=recorder)
    agents = {a["name"]: a for a in snap["agents"]}
    assert (agents["agent06"]["dialect"], agents["agent09"]["dialect"]) == ("0.6", "0.9")
    assert agents["agent06"]["environment_ids"] == ["docker/default"]
    assert agents["agent09"]["environment_ids"] == ["docker/default", "ssh/py"]
    assert agents["agent09"]["environments"] == ["default", "ssh/py"]  # the old labels, unchanged
    clients = {c["name"]: c for c in snap["clients"]}
    assert (clients["old-frontend"]["dialect"], clients["new-frontend"]["dialect"]) == ("0.6", "0.9")
    envs = {e["id"]: (e["type"], e["name"], e["waiting"], e["agents"]) for e in snap["environments"]}
    assert envs == {
        "docker/default": ("docker", "default", 0, 2),
        "docker/gone": ("docker", "gone", 1, 0),
        "mcq/nope": ("mcq", "nope", 1, 0),
        "ssh/py": ("ssh", "py", 0, 1),
    }
    assert snap["queue"] == {"default": 0, "gone": 1, "mcq/nope": 1, "ssh/py": 0}  # unchanged keys

    page = render_html(snap, recorder.history.view(60))
    assert "<td>agent09</td><td>0.9</td>" in page and "<td>agent06</td><td>0.6</td>" in page
    assert "<td>new-frontend</td><td>0.9</td>" in page
    assert "docker/default, ssh/py" in page and "<td>docker</td><td>gone</td><td>1</td>" in page
    assert "dialect 0.6: 1 agent, 1 client; dialect 0.9: 1 agent, 1 client" in page

    parsed = _metrics(world, recorder)
    assert value(parsed, "inginious_jobs_waiting", environment="gone", environment_type="docker") == 1
    assert value(parsed, "inginious_jobs_waiting", environment="mcq/nope", environment_type="mcq") == 1
    assert value(parsed, "inginious_jobs_waiting", environment_type="mcq", environment_name="nope") == 1
    assert value(parsed, "inginious_environment_agents", environment="default", environment_type="docker") == 2
    assert value(parsed, "inginious_environment_slots", environment_type="ssh", environment_name="py") == 2
    assert value(parsed, "inginious_peers", role="agent", dialect="0.9") == 1
    assert value(parsed, "inginious_peers", role="client", dialect="0.6") == 1
    assert value(parsed, "inginious_agent_info", agent="agent09", dialect="0.9") == 1
    # the old label alone still selects one series
    assert value(parsed, "inginious_jobs_waiting", environment="gone") == 1
    # without a recorder the same labels (from the offered environments)
    parsed = samples(generate_latest(backend_registry(world.backend)).decode())
    assert value(parsed, "inginious_jobs_waiting", environment_type="mcq", environment_name="nope") == 1
    assert value(parsed, "inginious_environment_agents", environment_type="ssh", environment_name="py") == 1
    recorder.stop()


def test_clients_that_went_quiet_are_not_counted_active() -> None:
    world, recorder = _world()
    world.agent("agent", 1, ["default"])
    gone = world.client("gone")  # says hello, then nothing: as a ZeroMQ client that left
    alive = world.client("alive")
    busy = world.client("busy")
    busy.send(new_job("waits", environment="nobody"))
    for _ in range(int(ACTIVE_SECONDS) + 5):
        alive.send(Ping())
        busy.send(Ping())
        world.tick()
    del gone
    snap = status_snapshot(world.backend, world.clock.seconds(), recorder=recorder)
    totals = snap["totals"]
    assert totals["clients"] == 3 and totals["clients_active"] == 2
    rows = {c["name"]: c for c in snap["clients"]}
    assert rows["gone"]["active"] is False and rows["gone"]["idle_seconds"] >= ACTIVE_SECONDS
    assert rows["alive"]["active"] is True and rows["alive"]["idle_seconds"] <= 2
    assert rows["busy"]["jobs"] == 1
    page = render_html(snap)
    assert "<b>2</b> clients active" in page and "<b>3</b> registered" in page
    parsed = _metrics(world, recorder)
    assert value(parsed, "inginious_clients_connected") == 3  # registered, as always
    assert value(parsed, "inginious_clients_active", dialect="0.6") == 2
    recorder.stop()


def test_page_wording() -> None:
    world, recorder = _world()
    world.agent("agent", 2, ["default"])
    world.tick()
    snap = status_snapshot(world.backend, world.clock.seconds(), recorder=recorder)
    page = render_html(snap, recorder.history.view(60), refresh=2)
    assert "idle busy" not in page and ">idle<" in page and "\u2264 25 % busy" in page
    assert "(stop" not in page and "stop reloading</a>" in page
    page = render_html(snap, recorder.history.view(60), refresh=0)
    assert "reload every 2 s</a>" in page and "(<a" not in page
    recorder.stop()
