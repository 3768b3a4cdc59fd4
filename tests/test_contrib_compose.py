"""contrib/compose/compose.yaml, brought up with real containers of the image
contrib/docker/Dockerfile builds: a job is graded through its backend and its
Docker agent, and its Prometheus scrapes the backend and loads our alerts.

The images come from ``.ci/setup-contrib-images.sh`` (offline: a mmdebstrap
base, wheels, Debian's prometheus package).  Grafana (profile ``grafana``) is
not brought up: no Grafana image can be had without a registry.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from subprocess_env import REPO, child_env

COMPOSE_FILE = REPO / "contrib" / "compose" / "compose.yaml"
IMAGE = os.environ.get("INGINIOUS_TX_IMAGE", "inginious-tx:local")
PROMETHEUS_IMAGE = os.environ.get("INGINIOUS_TX_PROMETHEUS_IMAGE", "inginious-tx/prometheus:bookworm")
JOB_IMAGE = os.environ.get("INGINIOUS_TX_TEST_IMAGE", "inginious-tx/busybox:test")

pytestmark = pytest.mark.docker


def _missing(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}: .ci/run sets it up (.ci/docker-setup.sh, .ci/setup-contrib-images.sh)")
    pytest.skip(f"{why} (.ci/docker-setup.sh and .ci/setup-contrib-images.sh make it)")


def _compose_command() -> List[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    _missing("neither docker-compose nor the docker compose plugin is installed")
    return []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _eventually(probe: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str]) -> Any:
    """``probe()``'s first true value, tried every half second (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})\n{logs()}")


def _query(port: int, expr: str) -> List[Dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return list(_get_json(url)["data"]["result"])


def test_compose_grades_a_job_and_prometheus_scrapes_the_backend() -> None:
    compose = _compose_command()
    for image in (IMAGE, PROMETHEUS_IMAGE, JOB_IMAGE):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            _missing(f"the image {image} is missing")

    # the job folders: a path the engine sees, the same in the agent's container
    work = tempfile.mkdtemp(prefix="itx-compose-")
    ports = {name: _free_port() for name in ("client", "status", "prometheus")}
    project = f"itxcompose{os.getpid()}"
    env = {
        **os.environ,
        "INGINIOUS_TX_IMAGE": IMAGE,
        "INGINIOUS_TX_PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
        "INGINIOUS_TX_JOB_IMAGE": JOB_IMAGE,
        "INGINIOUS_TX_WORK": work,
        "INGINIOUS_TX_SLOTS": "2",
        "INGINIOUS_TX_CLIENT_PORT": str(ports["client"]),
        "INGINIOUS_TX_STATUS_PORT": str(ports["status"]),
        "INGINIOUS_TX_PROMETHEUS_PORT": str(ports["prometheus"]),
    }
    base = [*compose, "--project-name", project, "--file", str(COMPOSE_FILE)]

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=timeout)

    def logs() -> str:
        return run("logs", "--no-color", "--tail", "40", timeout=60).stdout

    try:
        up = run("up", "--detach", "--no-build")
        assert up.returncode == 0, up.stdout + up.stderr

        # the agent registers with the backend (seen on the status page)
        def agent_ready() -> bool:
            status = _get_json(f"http://127.0.0.1:{ports['status']}/status.json")
            return len(status["agents"]) == 1 and "default" in json.dumps(status["agents"])

        _eventually(agent_ready, 120, "the agent to register", logs)

        # a job, from this machine, through the published client port
        submit = subprocess.run(
            [sys.executable, "-m", "inginious_tx.cli", "submit", "demo/pass", "-i", "answer=42",
             "--backend", f"zmq:tcp://127.0.0.1:{ports['client']}", "--connect-timeout", "30"],
            env=child_env(), capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stdout + submit.stderr + logs()
        assert submit.stdout.splitlines()[:2] == ["result: success", "grade: 100"]
        assert "You answered: 42" in submit.stdout
        # graded by the Docker agent in a container of the job image (its own user, not root)
        ps = run("ps", "--quiet", "agent", timeout=60).stdout.strip()
        assert ps, logs()
        agent_log = run("logs", "--no-color", "agent", timeout=60).stdout
        assert "(docker, 2 slots)" in agent_log, agent_log
        user = subprocess.run(
            ["docker", "inspect", "--format", "{{.Config.User}}", f"{project}_backend_1"],
            capture_output=True, text=True,
        )  # fmt: skip
        if user.returncode == 0:  # compose v1 names; the plugin names containers with dashes
            assert user.stdout.strip() in ("", "inginious") or user.stdout.strip().isdigit()

        # Prometheus scrapes the backend (the agent and the finished job) and loaded our alerts
        prom = ports["prometheus"]
        _eventually(lambda: _query(prom, "inginious_agents_connected == 1"), 90, "the scraped agent gauge", logs)
        finished = _eventually(
            lambda: _query(prom, "sum(inginious_jobs_finished_total) >= 1"), 90, "the scraped job counter", logs
        )
        assert float(finished[0]["value"][1]) >= 1
        # and the agent's own metrics (--metrics): its job took a container made ahead or not
        taken = _eventually(
            lambda: _query(prom, "sum(inginious_agent_pool_hits_total) + sum(inginious_agent_pool_misses_total) >= 1"),
            90, "the agent's pool counters", logs,
        )  # fmt: skip
        assert float(taken[0]["value"][1]) >= 1
        rules = _get_json(f"http://127.0.0.1:{prom}/api/v1/rules")["data"]["groups"]
        names = {rule["name"] for group in rules for rule in group["rules"]}
        assert {"InginiousNoAgent", "InginiousQueueStuck"} <= names, names
        # and none of them fires: one agent, nothing waiting
        alerts = _get_json(f"http://127.0.0.1:{prom}/api/v1/alerts")["data"]["alerts"]
        assert [a for a in alerts if a["state"] == "firing"] == []
    finally:
        run("kill", "prometheus", timeout=60)  # its data is thrown away: no need to wait for it to save
        down = run("down", "--volumes", "--remove-orphans", "--timeout", "30")
        shutil.rmtree(work, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr


def test_helpers_in_work_dir_puts_the_helpers_where_the_engine_sees_them(tmp_path: Path) -> None:
    """An agent in a container (the compose file's) mounts the helpers from its work folder,
    which the engine sees, not from its package; without a work folder the option is refused."""
    pytest.importorskip("docker")
    from twisted.internet import reactor

    from inginious_tx.agent.docker import DockerBackend
    from inginious_tx.agent.job_folder import helpers_dir
    from inginious_tx.agent.result import AgentConfig

    with pytest.raises(ValueError, match="helpers_in_work_dir needs work_dir"):
        DockerBackend(reactor, AgentConfig(None, ["default=x"], 1, {"helpers_in_work_dir": "yes"}))
    plain = DockerBackend(reactor, AgentConfig(None, ["default=x"], 1, {"work_dir": str(tmp_path / "a")}))
    assert plain._thd_helpers() == helpers_dir()
    work = tmp_path / "b"
    work.mkdir()
    shared = DockerBackend(
        reactor, AgentConfig(None, ["default=x"], 1, {"work_dir": str(work), "helpers_in_work_dir": "yes"})
    )
    folder = Path(shared._thd_helpers())
    assert folder.parent == work
    assert sorted(p.name for p in folder.iterdir()) == sorted(os.listdir(helpers_dir()))
    assert all(os.access(p, os.X_OK) for p in folder.iterdir())
    assert shared._thd_helpers() == str(folder)  # again (a restarted agent): refreshed in place
