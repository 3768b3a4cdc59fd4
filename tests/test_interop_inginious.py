"""Interoperability with the real INGInious 0.6 and 0.9.2 code.

The harness first proves itself on the real releases alone (their own
backend, client and agent), then drives our backend with real 0.6 peers.
Every message the real peers exchange is also decoded by our codec
(:func:`inginious_tx.messages.load_any`) through the shared golden vectors.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from inginious_support import InginiousPeers, OurPrograms, inginious_fixture, ours_fixture, zmq_address  # noqa: F401

LIMITS = {"limits": {"time": 10, "hard_time": 30, "memory": 100}, "run_cmd": "", "network_grading": False}
ENV = {"0.6": "default", "0.9": "docker/default"}


def has_default(dialect: str) -> Callable[[Any], bool]:
    if dialect == "0.6":
        return lambda e: "default" in e["value"]
    return lambda e: "default" in e["value"].get("docker", ())


def exercise(dialect: str, agent: Any, client: Any, kills_waiting: bool = True) -> None:
    """Jobs, kill of a waiting and of a running job, queue snapshots, one
    agent slot: what every backend must do with real peers (the real 0.6
    backend cannot kill a waiting job: ``kills_waiting=False``)."""
    client.wait_for("environments", has_default(dialect))
    client.send("submit", ref="ok", inputdata={"q1": "x", "@state": "s-ok"}, environment_parameters=LIMITS)
    done = client.wait_for("done", ref="ok")
    assert done["result"] == ["success", "from itx-real-agent"]
    assert (done["grade"], done["state"], done["stdout"]) == (100.0, "s-ok", "out")
    assert done["problems"] == {"q1": ["success", "q1 text"]}

    # One slot: the first job holds it, the second waits.
    client.send("submit", ref="run", inputdata={"itx": "hold", "@state": "s-run"}, environment_parameters=LIMITS)
    running_id = client.wait_for("submitted", ref="run")["job_id"]
    agent.wait_for("job", lambda e: e["fields"]["inputdata"].get("itx") == "hold")
    client.send("submit", ref="wait", inputdata={"itx": "hold", "@state": "s-wait"}, environment_parameters=LIMITS)
    waiting_id = client.wait_for("submitted", ref="wait")["job_id"]

    def both_listed(e: Any) -> bool:
        return [r[0] for r in e["running"]] == [running_id] and [w[0] for w in e["waiting"]] == [waiting_id]

    for _ in range(50):  # the backend may see the submission after the question
        client.send("queue")
        try:
            queue = client.wait_for("queue", both_listed, timeout=0.2)
            break
        except AssertionError:
            continue
    else:
        queue = client.wait_for("queue", both_listed, timeout=1)
    running, waiting = queue["running"][0], queue["waiting"][0]
    assert running[1] is True and running[2] == "itx-real-agent" and running[3] == "course/task"
    assert waiting[1] is True and waiting[2] == "course/task" and waiting[4] == 10

    if kills_waiting:
        client.send("kill", job_id=waiting_id)
        killed = client.wait_for("done", ref="wait")
        assert killed["result"][0] == "killed"
        if dialect == "0.9":
            assert killed["state"] == "s-wait"

    client.send("kill", job_id=running_id)
    kill = agent.wait_for("kill")
    if dialect == "0.9":
        assert kill["fields"]["state"] == "s-run"
    killed = client.wait_for("done", ref="run")
    assert killed["result"][0] == "killed" and killed["state"] == "s-run"
    if kills_waiting:
        # The waiting job never reached the agent.
        assert len(agent.matching("job")) == 2
    else:
        # It runs once the slot is free; killed while running.
        agent.wait_for("job", lambda e: e["fields"]["inputdata"].get("@state") == "s-wait")
        client.send("kill", job_id=waiting_id)
        assert client.wait_for("done", ref="wait")["result"][0] == "killed"


@pytest.mark.parametrize("dialect", ["0.6", "0.9"])
def test_the_harness_drives_the_real_releases_among_themselves(inginious: InginiousPeers, dialect: str) -> None:
    clients, agents = zmq_address(), zmq_address()
    inginious.backend(dialect, clients, agents)
    agent = inginious.agent(dialect, agents, [ENV[dialect]], slots=1)
    client = inginious.client(dialect, clients)
    exercise(dialect, agent, client, kills_waiting=dialect != "0.6")


def test_real_06_client_and_agent_through_our_backend(inginious: InginiousPeers, ours: OurPrograms) -> None:
    clients, agents = zmq_address(), zmq_address()
    backend = ours.twistd("inginious-backend", "--clients", f"zmq:{clients}", "--agents", f"zmq:{agents}")
    agent = inginious.agent("0.6", agents, ["default"], slots=1)
    client = inginious.client("0.6", clients)
    exercise("0.6", agent, client)
    assert "Traceback" not in backend.output()


def test_our_06_agent_serves_the_real_06_backend(inginious: InginiousPeers, ours: OurPrograms) -> None:
    clients, agents = zmq_address(), zmq_address()
    inginious.backend("0.6", clients, agents)
    ours.twistd(
        "inginious-agent", "--kind", "mock", "--backend", f"zmq:{agents}", "--name", "our-agent", "-e", "default",
    )  # fmt: skip
    client = inginious.client("0.6", clients)
    client.wait_for("environments", has_default("0.6"))
    client.send("submit", ref="r", inputdata={"@mock_result": "failed", "@mock_grade": 40.0})
    done = client.wait_for("done", ref="r")
    assert done["result"][0] == "failed" and done["grade"] == 40.0
