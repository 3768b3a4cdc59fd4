"""JSON log lines (``--json-log FILE``): unit tests of the job events, and a
real ``twistd inginious-backend`` whose JSON log is read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
import pytest_twisted
from test_backend_integration import NetAgent, NetClient
from test_cli_integration import free_port, spawn_twistd
from twisted.internet.task import Clock
from twisted.python import usage
from zope.interface.verify import verifyObject

from inginious_tx.backend.core import Backend, BackendSettings
from inginious_tx.backend.joblog import JOB_KEYS, JobEventLogger
from inginious_tx.backend.policies import FairPolicy
from inginious_tx.backend.tap import Options
from inginious_tx.backend.testing import FakePeer, agent_hello, job_done, new_job
from inginious_tx.interfaces import IJobObserver
from inginious_tx.messages import BackendNewJob, ClientHello, ClientKillJob

KEYS = ("job_id", "client", "agent", "environment", "result")


def test_one_event_per_job_transition_with_its_keys() -> None:
    events: List[Dict[str, Any]] = []
    logger = JobEventLogger(events.append)
    verifyObject(IJobObserver, logger)
    clock = Clock()
    backend = Backend(clock, FairPolicy(), BackendSettings(max_waiting=1))
    backend.add_observer(logger)
    client, agent = FakePeer(b"c"), FakePeer(b"a")
    backend.client_handler.client_hello(client, ClientHello("frontend"))
    backend.client_handler.client_new_job(client, new_job("w", environment="py"))
    backend.client_handler.client_new_job(client, new_job("full", environment="py"))  # queue full
    backend.agent_handler.agent_hello(agent, agent_hello("worker", 1, ["py"]))
    [sent] = agent.of_type(BackendNewJob)
    backend.agent_handler.agent_job_done(agent, job_done(sent.job_id, "failed"))
    backend.client_handler.client_new_job(client, new_job("k", environment="java"))
    backend.client_handler.client_kill_job(client, ClientKillJob("k"))
    seen = [(e["job_event"], e["job_id"], e["client"], e["agent"], e["environment"], e["result"]) for e in events]
    assert seen == [
        ("queued", "w", "frontend", None, "py", None),
        ("refused", "full", "frontend", None, None, "crash"),
        ("started", "w", "frontend", "worker", "py", None),
        ("finished", "w", "frontend", "worker", "py", "failed"),
        ("queued", "k", "frontend", None, "java", None),
        ("finished", "k", "frontend", None, "java", "killed"),
    ]
    assert all(e["log_namespace"] == "inginious_tx.jobs" for e in events)
    assert "queue full" in events[1]["reason"]
    for event in events:  # a fixed, small set of flat keys
        assert tuple(event)[: len(JOB_KEYS)] == JOB_KEYS and set(event) <= {*JOB_KEYS, "reason", "retries"}, event
        assert len(json.dumps(event, separators=(",", ":"))) < 400, event
    assert events[0]["environment_type"] == "docker"


def test_an_unwritable_json_log_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="cannot be written"):
        Options().parseOptions(["--json-log", str(tmp_path / "no" / "such" / "dir.json")])


@pytest_twisted.ensureDeferred
async def test_a_twistd_backend_writes_json_lines(tmp_path: Path, closers: list, until: Any) -> None:
    from twisted.internet import reactor

    log = tmp_path / "backend.json"
    c_port, a_port = free_port(), free_port()
    backend = spawn_twistd(
        "--logfile", str(tmp_path / "backend.log"),
        "inginious-backend",
        "--clients", f"tcp:{c_port}:interface=127.0.0.1",
        "--agents", f"tcp:{a_port}:interface=127.0.0.1",
        "--json-log", str(log),
    )  # fmt: skip

    def stop() -> Any:
        if not backend.done.called:
            backend.process.signalProcess("TERM")  # type: ignore[attr-defined]
        return backend.done.addTimeout(15, reactor)

    closers.append(stop)
    worker = NetAgent(f"tcp:127.0.0.1:{a_port}", "worker", slots=1)
    client = NetClient(f"tcp:127.0.0.1:{c_port}", "frontend")
    for item in (worker, client):
        closers.append(item.connection.stop)
    await until(lambda: client.environments == ("default",), timeout=30, what="backend and agent up")
    client.send(new_job("before", course_id="demo"))
    await until(lambda: "before" in client.results and log.exists() and '"before"' in log.read_text(), what="a result")
    # log rotation: the file is moved away, SIGHUP, the backend writes to a new file at the path
    rotated = tmp_path / "backend.json.1"
    log.rename(rotated)
    backend.process.signalProcess("HUP")  # type: ignore[attr-defined]
    await until(lambda: log.exists() and "reopened" in log.read_text(), what="the JSON log reopened")
    client.send(new_job("ok", course_id="demo"))
    client.send(new_job("lonely", environment="nobody"))
    await until(lambda: "ok" in client.results, what="a result")
    await stop()  # SIGTERM: the waiting job is answered crash, logged too

    old_events = [json.loads(line) for line in rotated.read_text().splitlines()]
    assert {e["job_id"] for e in old_events if e.get("log_namespace") == "inginious_tx.jobs"} == {"before"}
    lines = log.read_text().splitlines()
    job_lines = [line for line in lines if '"inginious_tx.jobs"' in line]
    assert job_lines and max(map(len, job_lines)) < 400, job_lines  # compact: no log_flattened, no log_format
    assert all("log_flattened" not in line and "log_format" not in line for line in job_lines)
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    jobs = [e for e in events if e.get("log_namespace") == "inginious_tx.jobs"]
    by_job = {(e["job_id"], e["job_event"]): e for e in jobs}
    assert {key for key in by_job} == {
        ("ok", "queued"),
        ("ok", "started"),
        ("ok", "finished"),
        ("lonely", "queued"),
        ("lonely", "finished"),
    }
    for event in jobs:
        assert all(key in event for key in KEYS), event
        assert event["client"] == "frontend"
    assert by_job[("ok", "started")]["agent"] == "worker"
    assert by_job[("ok", "finished")]["result"] == "success" and by_job[("ok", "finished")]["agent"] == "worker"
    assert (
        by_job[("lonely", "finished")]["result"] == "crash"
        and by_job[("lonely", "finished")]["environment"] == "nobody"
    )
    # the rest of the log is there too, and the job events stay out of the text log
    assert any(
        "agent 'worker' registered" in (e.get("log_format") or "").replace("{name!r}", "'worker'")
        for e in old_events + events
    )
    text = (tmp_path / "backend.log").read_text()
    assert "registered" in text and "job 'ok'" not in text
