"""A real Prometheus scrapes a real backend; the shipped alert rules and
Grafana dashboard are checked against what the backend exports.

Needs Debian's ``prometheus`` package (``prometheus`` and ``promtool``;
``.ci/setup-prometheus.sh`` installs it).  Under ``CI=true`` a missing
binary fails the tests; elsewhere they are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Set
from urllib.parse import quote

import pytest_twisted
from host_tools import missing_setup
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from subprocess_env import REPO
from test_backend_integration import NetAgent, NetClient
from test_cli_integration import _Collect, free_port, spawn_twistd
from test_status import fetch
from twisted.internet.task import Clock

from inginious_tx.backend.core import Backend, BackendSettings
from inginious_tx.backend.metrics import backend_registry
from inginious_tx.backend.policies import FairPolicy
from inginious_tx.backend.testing import FakePeer, agent_hello, job_done, new_job
from inginious_tx.backend.timeseries import StatusRecorder
from inginious_tx.messages import BackendNewJob, ClientHello

CONTRIB = REPO / "contrib"
ALERTS = CONTRIB / "prometheus" / "alerts.yml"
DASHBOARD = CONTRIB / "grafana" / "inginious-tx-backend.json"
METRIC = re.compile(r"\binginious_[a-zA-Z0-9_]+")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_setup(f"{name} is not installed (apt-get install prometheus, or run .ci/setup-prometheus.sh)")
    return path


# -- what the backend exports ---------------------------------------------------------------


def exported_names() -> Set[str]:
    """Every metric family and sample name a busy backend with a recorder exports."""
    clock = Clock()
    backend = Backend(clock, FairPolicy(), BackendSettings())
    recorder = StatusRecorder(backend, clock, 60)
    recorder.start()
    client, agent = FakePeer(b"c"), FakePeer(b"a")
    backend.client_handler.client_hello(client, ClientHello("c"))
    backend.agent_handler.agent_hello(agent, agent_hello("a", 1, ["py"]))
    backend.client_handler.client_new_job(client, new_job("1", environment="py"))
    backend.client_handler.client_new_job(client, new_job("2", environment="java"))
    [sent] = agent.of_type(BackendNewJob)
    backend.agent_handler.agent_job_done(agent, job_done(sent.job_id, "crash"))
    clock.advance(1)
    names: Set[str] = set()
    for family in text_string_to_metric_families(generate_latest(backend_registry(backend, recorder)).decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    recorder.stop()
    return names


def dashboard_queries(dashboard: Dict[str, Any]) -> List[str]:
    queries: List[str] = []

    def walk(panels: List[Dict[str, Any]]) -> None:
        for panel in panels:
            queries.extend(target["expr"] for target in panel.get("targets", []))
            walk(panel.get("panels", []))  # rows hold panels

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    exported = exported_names()
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 10
    for query in queries:
        used = set(METRIC.findall(query))
        assert used, f"query names no inginious metric: {query}"
        assert used <= exported, f"{query}: not exported: {sorted(used - exported)}"
    # the panels the status page has: queue, results, percentiles, slots per agent
    used_all = set(METRIC.findall(" ".join(queries)))
    for name in (
        "inginious_jobs_waiting",
        "inginious_jobs_finished_total",
        "inginious_job_queue_wait_seconds_bucket",
        "inginious_job_run_seconds_bucket",
        "inginious_agent_busy_slots",
    ):
        assert name in used_all


def test_alert_rules_name_exported_metrics_and_pass_promtool(tmp_path: Path) -> None:
    promtool = _binary("promtool")
    exported = exported_names()
    used = set(METRIC.findall(ALERTS.read_text()))
    assert used and used <= exported, sorted(used - exported)
    for args in (
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(ALERTS.parent / "alerts_test.yml")],
        ["check", "config", str(ALERTS.parent / "prometheus.yml")],
    ):
        run = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=ALERTS.parent)
        assert run.returncode == 0, f"promtool {' '.join(args)}:\n{run.stdout}\n{run.stderr}"
    # and promtool does reject a broken rule (the check checks something)
    broken = tmp_path / "broken.yml"
    broken.write_text(ALERTS.read_text().replace("increase(inginious_agent_removals_total[15m])", "increase(["))
    run = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0


# -- a real scrape ------------------------------------------------------------------------------


async def query(base: str, expr: str) -> Dict[str, float]:
    """An instant query: {labels as text: value}."""
    code, _, body = await fetch(f"{base}/api/v1/query?query={quote(expr)}")
    assert code == 200, body
    data = json.loads(body)["data"]["result"]
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in data}


async def scalar(base: str, expr: str) -> float:
    result = await query(base, expr)
    return next(iter(result.values())) if len(result) == 1 else float("nan")


@pytest_twisted.ensureDeferred
async def test_prometheus_scrapes_a_twistd_backend_with_agents_at_work(
    tmp_path: Path, closers: list, until: Any, within: Any
) -> None:
    from twisted.internet import reactor

    prometheus = _binary("prometheus")
    c_port, a_port, s_port, p_port = free_port(), free_port(), free_port(), free_port()
    backend = spawn_twistd(
        "--logfile=-",
        "inginious-backend",
        "--clients", f"tcp:{c_port}:interface=127.0.0.1",
        "--agents", f"tcp:{a_port}:interface=127.0.0.1",
        "--status", f"tcp:{s_port}",
        "--ping-interval", "0.2",
    )  # fmt: skip

    def stop(proto: Any) -> Any:
        if not proto.done.called:
            proto.process.signalProcess("TERM")
        return proto.done.addTimeout(15, reactor).addErrback(lambda _: proto.process.signalProcess("KILL"))

    closers.append(lambda: stop(backend))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: inginious-tx\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{s_port}']}}]\n"
    )
    prom = _Collect()
    prom.process = reactor.spawnProcess(  # type: ignore[attr-defined]
        prom,
        prometheus,
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{p_port}",
            "--log.level=warn",
        ],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        path=str(tmp_path),
    )
    closers.append(lambda: stop(prom))

    # agents at work: one answers every job, one holds its job; a client sends jobs
    worker = NetAgent(f"tcp:127.0.0.1:{a_port}", "worker", slots=2)
    holder = NetAgent(f"tcp:127.0.0.1:{a_port}", "holder", slots=1, envs=("evil",), answer=False)
    client = NetClient(f"tcp:127.0.0.1:{c_port}", "client")
    for item in (worker, holder, client):
        closers.append(item.connection.stop)
    await until(lambda: set(client.environments) == {"default", "evil"}, timeout=30, what="backend and agents up")
    for i in range(5):
        client.send(new_job(f"ok-{i}", course_id="demo"))
    client.send(new_job("held", environment="evil"))
    for i in range(2):
        client.send(new_job(f"stuck-{i}", environment="nobody"))
    await until(lambda: len(client.results) == 5 and holder.jobs, timeout=15, what="5 results, 1 held job")

    base = f"http://127.0.0.1:{p_port}"
    expected = {
        'inginious_jobs_finished_total{result="success"}': 5,
        "inginious_jobs_submitted_total": 8,
        'inginious_jobs_waiting{environment="nobody"}': 2,
        'inginious_jobs_waiting{environment="default"}': 0,
        'inginious_jobs_waiting{environment_type="docker",environment_name="nobody"}': 2,
        'inginious_peers{role="agent",dialect="0.6"}': 2,
        'inginious_agent_info{agent="holder",dialect="0.6"}': 1,
        'inginious_clients_active{dialect="0.6"}': 1,
        "inginious_jobs_running": 1,
        "inginious_agents_connected": 2,
        "inginious_agent_slots": 3,
        'inginious_agent_busy_slots{agent="holder"}': 1,
        'inginious_agent_busy_slots{agent="worker"}': 0,
        'inginious_environment_agents{environment="evil"}': 1,
        'inginious_jobs_started_total{environment="default"}': 5,
        "inginious_job_queue_wait_seconds_count": 6,
        "inginious_job_run_seconds_count": 5,
        'up{job="inginious-tx"}': 1,
    }
    got: Dict[str, float] = {}

    async def all_arrived() -> bool:
        for expr in expected:
            got[expr] = await scalar(base, expr)
        return got == expected

    await _until_async(all_arrived, timeout=60, what=lambda: f"the series in Prometheus: {got}")

    # the shipped rules run in Prometheus: jobs wait for "nobody", which no agent offers
    async def alert_pending() -> bool:
        code, _, body = await fetch(f"{base}/api/v1/alerts")
        alerts = json.loads(body)["data"]["alerts"] if code == 200 else []
        return any(
            a["labels"]["alertname"] == "InginiousNoAgentForEnvironment" and a["labels"]["environment"] == "nobody"
            for a in alerts
        )

    await _until_async(alert_pending, timeout=30, what=lambda: "the alert on the environment nobody offers")
    code, _, body = await fetch(f"{base}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    assert [g["name"] for g in groups] == ["inginious-tx"]
    assert all(rule["health"] == "ok" for rule in groups[0]["rules"]), groups


async def _until_async(predicate: Any, timeout: float, what: Any) -> None:
    """Await ``predicate()`` (a coroutine) every 0.3 s until it is true."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not await predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what()}")
        await deferLater(reactor, 0.3, lambda: None)
