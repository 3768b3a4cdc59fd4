"""Our backend's core with the real INGInious 0.9.2 and 0.6 peers (PROTOCOL-0.9.md).

Uses the interop harness of tests/test_interop_inginious.py (the real
releases in their own virtualenvs, made by .ci/setup-inginious.sh): a real
0.9.2 frontend client and docker-agent subclass run everything through our
backend; then the dialects cross (0.9 client with a 0.6 agent, 0.6 client
with a 0.9 agent), and both dialects share one backend at once.
"""

from __future__ import annotations

from typing import Any

from inginious_support import InginiousPeers, OurPrograms, inginious_fixture, ours_fixture, zmq_address  # noqa: F401
from test_interop_inginious import LIMITS, exercise, has_default


def backend(ours: OurPrograms) -> Any:
    clients, agents = zmq_address(), zmq_address()
    process = ours.twistd("inginious-backend", "--clients", f"zmq:{clients}", "--agents", f"zmq:{agents}")
    return process, clients, agents


def test_real_09_client_and_agent_through_our_backend(inginious: InginiousPeers, ours: OurPrograms) -> None:
    process, clients, agents = backend(ours)
    agent = inginious.agent("0.9", agents, ["docker/default"], slots=1)
    client = inginious.client("0.9", clients)
    exercise("0.9", agent, client)
    assert "Traceback" not in process.output()


def run_one_job(client: Any, client_dialect: str, ref: str) -> Any:
    client.wait_for("environments", has_default(client_dialect))
    client.send("submit", ref=ref, inputdata={"q1": "x", "@state": "st"}, environment_parameters=LIMITS)
    return client.wait_for("done", ref=ref)


def test_crossed_dialects_share_one_backend(inginious: InginiousPeers, ours: OurPrograms) -> None:
    process, clients, agents = backend(ours)
    # Only a 0.6 agent: the 0.9 client's docker job runs on it.
    agent06 = inginious.agent("0.6", agents, ["default"], name="agent06", slots=1)
    client09 = inginious.client("0.9", clients)
    done = run_one_job(client09, "0.9", "a")
    assert done["result"] == ["success", "from agent06"] and done["problems"] == {"q1": ["success", "q1 text"]}
    [job] = agent06.matching("job")
    assert job["fields"]["time_limit"] == 10 and job["fields"]["hard_time_limit"] == 30
    assert job["fields"]["mem_limit"] == 100
    agent06.send("exit")
    # Then only a 0.9 agent: a 0.6 client's job runs on it, with 0.9 limits.
    agent09 = inginious.agent("0.9", agents, ["docker/default"], name="agent09", slots=1)
    client06 = inginious.client("0.6", clients)
    client06.wait_for("environments", lambda e: "default" in e["value"])
    done = run_one_job(client06, "0.6", "b")
    assert done["result"] == ["success", "from agent09"]
    [job] = agent09.matching("job")
    assert job["fields"]["environment_type"] == "docker" and job["fields"]["task_problems"] == {}
    assert job["fields"]["environment_parameters"]["limits"]["time"] > 0
    # Both clients at once, on the one 0.9 agent.
    assert run_one_job(client09, "0.9", "c")["result"] == ["success", "from agent09"]
    assert "Traceback" not in process.output()
