"""``inginious-tx-agent-docker`` and ``inginious-tx-backend``: INGInious 0.9's
command lines running our services (inginious_tx.cli.inginious_compat).

The mapping is checked option by option; then the two programs run as real
processes (``python -m inginious_tx.cli.inginious_compat``, what the console
scripts call), the real INGInious 0.9.2 client submits a job, and the job runs
in a Docker container of our agent.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import List

import pytest
from docker_support import TEST_IMAGE, require_docker
from inginious_support import InginiousPeers, OurPrograms, free_port, inginious_fixture, ours_fixture  # noqa: F401

from inginious_tx.cli.inginious_compat import agent_docker_argv, backend_argv, zmq_endpoint

COMPAT = [sys.executable, "-m", "inginious_tx.cli.inginious_compat"]
LIMITS = {"limits": {"time": 10, "hard_time": 30, "memory": 100}, "run_cmd": "", "network_grading": False}


def _value(argv: List[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def test_agent_options_map_onto_ours(tmp_path: Path) -> None:
    argv = agent_docker_argv(
        [
            "tcp://10.0.0.1:2001", "--tasks", str(tmp_path), "--concurrency", "3", "--friendly-name", "grader-1",
            "--debug-host", "192.0.2.7", "--debug-ports", "64200-64210", "--tmpdir", "agent_data",
            "--runtime", "runsc", "kata", "root", "-v", "--debugmode", "--disable-autorestart", "--ssh",
            "--environment", "default=img", "--", "--max-memory", "512",
        ]
    )  # fmt: skip
    assert argv[:6] == ["--kind", "docker", "--dialect", "0.9", "--backend", "zmq:tcp://10.0.0.1:2001"]
    assert _value(argv, "--tasks") == str(tmp_path)
    assert _value(argv, "--slots") == "3"
    assert _value(argv, "--name") == "grader-1"
    assert (_value(argv, "--ssh-host"), _value(argv, "--ssh-interface")) == ("192.0.2.7", "0.0.0.0")
    assert _value(argv, "--ssh-port") == "64200"
    assert _value(argv, "--option") == f"work_dir={os.path.abspath('agent_data')}"
    assert _value(argv, "--environment-type") == "kata"
    assert _value(argv, "--environment") == "default=img,runtime=runsc"
    assert "--allow-network" in argv and "--allow-run-cmd" in argv
    # the labelled images as INGInious finds them, beside --environment, under the --runtime
    assert "inginious_images=true" in argv and "inginious_runtime=runsc" in argv
    assert argv[-2:] == ["--max-memory", "512"]


def test_agent_defaults_are_inginious_ones() -> None:
    argv = agent_docker_argv(["tcp://127.0.0.1:2001"], cpu_count=4)
    assert _value(argv, "--tasks") == os.path.abspath("tasks")
    assert _value(argv, "--slots") == "8"  # two per core, as INGInious
    assert _value(argv, "--ssh-port") == "64120"
    assert "--ssh-interface" not in argv and "--name" not in argv  # our defaults: 127.0.0.1, HOSTNAME-docker


@pytest.mark.parametrize(
    "args, message",
    [
        (["http://x:1"], "not a ZeroMQ address"),
        (["tcp://h:1", "--debug-ports", "9-1"], "not a port range"),
        (["tcp://h:1", "--runtime", "runc"], "RUNTIME TYPE"),
        (["tcp://h:1", "--runtime", "runc", "docker", "--runtime", "kata", "kata"], "one runtime per agent"),
        (["tcp://h:1", "--concurrency", "0"], "positive"),
    ],
)
def test_agent_refuses_what_it_cannot_map(args: List[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agent_docker_argv(args)


def test_backend_options_map_onto_ours() -> None:
    assert backend_argv(["tcp://*:2001", "ipc:///run/c.sock", "-v", "--", "--policy", "fair"]) == [
        "--agents", "zmq:tcp://*:2001", "--clients", "zmq:ipc:///run/c.sock", "--policy", "fair",
    ]  # fmt: skip
    assert zmq_endpoint("zmq:tcp://h:1", "X") == "zmq:tcp://h:1"
    with pytest.raises(SystemExit):
        backend_argv(["tcp://h:1"])  # both addresses are required, as INGInious'


def test_backend_and_agent_scripts_grade_a_job(tmp_path: Path, inginious: InginiousPeers, ours: OurPrograms) -> None:
    require_docker()
    task = tmp_path / "tasks" / "course" / "hello"
    task.mkdir(parents=True)
    run = task / "run"
    run.write_text('#!/bin/sh\nfeedback-msg -m "hello $(getinput name) from $(id -u)"\nfeedback-result success\n')
    run.chmod(0o755)
    agents, clients = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    backend = ours.run([*COMPAT, "backend", agents, clients], "inginious-tx-backend")
    backend.wait_for_line("backend ready")
    ssh = free_port()
    agent = ours.run(
        [
            *COMPAT, "agent-docker", agents, "--tasks", str(tmp_path / "tasks"), "--concurrency", "1",
            "--friendly-name", "compat-agent", "--debug-ports", f"{ssh}-{ssh}", "--tmpdir", str(tmp_path / "work"),
            "--environment", f"default={TEST_IMAGE}",
        ],
        "inginious-tx-agent-docker",
    )  # fmt: skip
    client = inginious.client("0.9", clients)
    client.wait_for("environments", lambda e: "default" in e["value"].get("docker", ()), timeout=60)
    client.send(
        "submit", ref="j", course_id="course", task_id="hello", environment="default",
        inputdata={"name": "ada"}, environment_parameters=LIMITS,
    )  # fmt: skip
    done = client.wait_for("done", ref="j", timeout=90)
    assert done["result"][0] == "success", (done, agent.output()[-3000:])
    assert done["result"][1] == f"hello ada from {4242 if os.geteuid() == 0 else os.geteuid()}"
    assert "compat-agent" in backend.output()
    assert agent.process.poll() is None and backend.process.poll() is None


def test_start_failures_exit_non_zero(tmp_path: Path, ours: OurPrograms) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        backend = ours.run([*COMPAT, "backend", f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{port}"], "b")
        assert backend.process.wait(60) == 1, backend.output()
    assert "cannot listen" in backend.output()

    missing = ours.run([*COMPAT, "agent-docker", "tcp://127.0.0.1:1", "--tasks", str(tmp_path / "none")], "a")
    assert missing.process.wait(60) != 0
    assert "is not a folder" in missing.output()

    bad = ours.run([*COMPAT, "agent-docker", "udp://127.0.0.1:1"], "a2")
    assert bad.process.wait(60) == 2
    assert "not a ZeroMQ address" in bad.output()
