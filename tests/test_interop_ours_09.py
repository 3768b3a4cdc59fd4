"""Our agent and our client against the REAL INGInious 0.9.2 backend.

The backend, and the peers on the other side, are the real INGInious code
run in its own virtualenv (tests/inginious_support.py); ours are the
working tree's ``twistd inginious-agent --dialect 0.9``, ``inginious-tx
--dialect 0.9`` and :class:`~inginious_tx.client.Client` with
``dialect="0.9"``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest_twisted
from inginious_support import InginiousPeers, OurPrograms, inginious_fixture, ours_fixture, zmq_address  # noqa: F401
from twisted.internet import reactor

from inginious_tx.client import Client

LIMITS = {"limits": {"time": 10, "hard_time": 30, "memory": 100}, "run_cmd": "", "network_grading": False}


def our_agent(ours: OurPrograms, agents: str, *extra: str) -> Any:
    return ours.twistd(
        "inginious-agent", "--dialect", "0.9", "--kind", "mock", "--backend", f"zmq:{agents}",
        "--name", "our-agent", "--slots", "1", *extra,
    )  # fmt: skip


def test_our_agent_serves_the_real_09_backend(inginious: InginiousPeers, ours: OurPrograms) -> None:
    clients, agents = zmq_address(), zmq_address()
    inginious.backend("0.9", clients, agents)
    agent = our_agent(ours, agents, "--environment-type", "docker", "-e", "default", "-e", "python3")
    client = inginious.client("0.9", clients)
    client.wait_for("environments", lambda e: sorted(e["value"].get("docker", ())) == ["default", "python3"])

    # A job: the real backend hands it to our agent, the result comes back.
    inputdata = {"@mock_result": "failed", "@mock_text": "nope", "@mock_grade": 12.5, "@state": "s0"}
    client.send("submit", ref="ok", environment="python3", inputdata=inputdata, environment_parameters=LIMITS)
    done = client.wait_for("done", ref="ok")
    assert done["result"] == ["failed", "nope"] and done["grade"] == 12.5
    job_id = client.wait_for("submitted", ref="ok")["job_id"]
    assert client.matching("started", job_id=job_id)

    # One slot: a hanging job runs, the next one waits; the queue says so.
    hang = {"@mock_fail": "hang", "@state": "s-run"}
    client.send("submit", ref="run", inputdata=hang, environment_parameters=LIMITS)
    running_id = client.wait_for("submitted", ref="run")["job_id"]
    client.wait_for("started", job_id=running_id)
    client.send("submit", ref="wait", inputdata={**hang, "@state": "s-wait"}, environment_parameters=LIMITS)
    waiting_id = client.wait_for("submitted", ref="wait")["job_id"]
    for _ in range(50):
        client.send("queue")
        try:
            queue = client.wait_for("queue", lambda e: e["waiting"], timeout=0.2)
            break
        except AssertionError:
            continue
    else:
        queue = client.wait_for("queue", lambda e: e["waiting"], timeout=1)
    [running] = queue["running"]
    assert (running[0], running[2], running[6]) == (running_id, "our-agent", 10)
    assert [w[0] for w in queue["waiting"]] == [waiting_id]

    # Kill of the running job: our agent gets BackendKillJob and answers killed, state kept.
    client.send("kill", job_id=running_id)
    killed = client.wait_for("done", ref="run")
    assert killed["result"][0] == "killed" and killed["state"] == "s-run"
    # The waiting job now runs on the freed slot; kill it too.
    client.wait_for("started", job_id=waiting_id)
    client.send("kill", job_id=waiting_id)
    assert client.wait_for("done", ref="wait")["state"] == "s-wait"

    # A job of a type our agent does not offer never reaches it (the real
    # client refuses it itself: the backend does not list the environment).
    client.send("submit", ref="mcq", environment_type="mcq", environment="mcq", inputdata={})
    assert client.wait_for("done", ref="mcq")["result"] == ["crash", "Environment not available."]
    assert "Traceback" not in agent.output()


def test_our_agents_announce_their_kind_as_the_environment_type(inginious: InginiousPeers, ours: OurPrograms) -> None:
    clients, agents = zmq_address(), zmq_address()
    inginious.backend("0.9", clients, agents)
    our_agent(ours, agents, "-e", "default")
    client = inginious.client("0.9", clients)
    client.wait_for("environments", lambda e: e["value"] == {"mock": ["default"]})
    client.send("submit", ref="m", environment_type="mock", inputdata={"@mock_result": "success"})
    assert client.wait_for("done", ref="m")["result"][0] == "success"


def test_our_cli_against_the_real_09_backend(inginious: InginiousPeers, ours: OurPrograms) -> None:
    clients, agents = zmq_address(), zmq_address()
    inginious.backend("0.9", clients, agents)
    agent = inginious.agent("0.9", agents, ["docker/default", "mcq/mcq"])
    common = ["--backend", f"zmq:{clients}", "--dialect", "0.9", "--json", "--connect-timeout", "20"]
    cli = [sys.executable, "-m", "inginious_tx.cli"]

    envs = ours.run([*cli, "environments", *common], "inginious-tx environments")
    assert envs.process.wait(60) == 0, envs.output()
    assert sorted(json.loads(envs.output())) == ["docker/default", "mcq/mcq"]

    submit = ours.run([*cli, "submit", "LINFO/hello", "-i", "q1=print(1)", "--time-limit", "7", *common], "submit")
    assert submit.process.wait(60) == 0, submit.output()
    result = json.loads(submit.output())
    assert result["result"] == "success" and result["text"] == "from itx-real-agent"
    job = agent.wait_for("job")["fields"]
    assert (job["course_id"], job["task_id"], job["environment_type"], job["environment"]) == (
        "LINFO", "hello", "docker", "default",
    )  # fmt: skip
    assert job["environment_parameters"]["limits"]["time"] == 7
    assert job["inputdata"] == {"q1": "print(1)"}

    mcq = ours.run([*cli, "submit", "c/t", "--environment-type", "mcq", "-e", "mcq", *common], "submit mcq")
    assert mcq.process.wait(60) == 0, mcq.output()
    assert agent.wait_for("job", lambda e: e["fields"]["environment_type"] == "mcq")


@pytest_twisted.ensureDeferred
async def test_our_client_library_kills_waiting_and_running_jobs_on_the_real_09_backend(
    inginious: InginiousPeers,
) -> None:
    clients, agents = zmq_address(), zmq_address()
    inginious.backend("0.9", clients, agents)
    agent = inginious.agent("0.9", agents, ["docker/default"], slots=1)
    client = Client(reactor, f"zmq:{clients}", "our-client", dialect="0.9", ping_interval=0.5)
    client.start()
    try:
        await client.wait_for_environment("default", timeout=30)
        assert client.environments == ("default",)
        assert client.environments_by_type == {"docker": ("default",)}

        running = client.new_job("c", "t", {"itx": "hold", "@state": "r"}, time_limit=9)
        await agent.when("job")
        waiting = client.new_job("c", "t", {"itx": "hold", "@state": "w"}, time_limit=8)
        for _ in range(100):
            snapshot = await client.get_queue()
            if snapshot.waiting:
                break
        [run] = snapshot.running
        [wait] = snapshot.waiting
        assert run.is_mine and run.agent_name == "itx-real-agent" and run.max_end == run.started_at + 9
        assert wait.is_mine and wait.time_limit == 8 and wait.task == "c/t"

        client.kill_job(wait.job_id)
        result = await waiting
        assert (result.result, result.state) == ("killed", "w")
        client.kill_job(run.job_id)
        result = await running
        assert (result.result, result.state) == ("killed", "r")
        # The waiting job never reached the agent.
        assert len(agent.matching("job")) == 1

        done = await client.new_job("c", "t", {}, environment_parameters={"limits": {"time": 3}})
        assert done.result == "success" and done.problems == {"q1": ("success", "q1 text")}
        job = agent.matching("job")[-1]["fields"]
        assert job["environment_parameters"] == {"limits": {"time": 3}}
    finally:
        await client.stop()
