"""The agent's Prometheus metrics (``--metrics ENDPOINT``): the pool's figures per environment.

A collector test on a pool driven by a Clock (bounded labels, values that
add up), then a real ``twistd inginious-agent --kind docker --metrics``
scraped over HTTP while a job misses and the next one hits, with the
endpoint's connection cap at work.
"""

from __future__ import annotations

import re
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Tuple

import pytest
import pytest_twisted
from docker_support import TEST_IMAGE, containers_labelled, make_task, remove_containers, require_docker
from prometheus_client.parser import text_string_to_metric_families
from subprocess_env import child_env
from test_cli_integration import _Collect
from test_container_pool import FakeMaker
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.python import usage
from zope.interface import implementer
from zope.interface.verify import verifyObject

from inginious_tx.agent import tap as agent_tap
from inginious_tx.agent._leftovers import LABEL_OWNER, owner_token
from inginious_tx.agent.container_pool import ContainerPool, IPooledBackend
from inginious_tx.agent.docker_pool import PoolKey
from inginious_tx.agent.metrics import agent_registry
from inginious_tx.backend.service import BackendService
from inginious_tx.client import connect_client

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples: Samples, name: str, **labels: str) -> float:
    labels.setdefault("pool", "grading")
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@implementer(IPooledBackend)
class _Pooled:
    def __init__(self, pool: ContainerPool, *others: ContainerPool) -> None:
        self.pool = pool
        self.others = others

    def container_pools(self) -> List[Any]:
        return [self.pool, *self.others]


def test_collector_sums_the_keys_of_an_environment_and_names_only_its_environments() -> None:
    from prometheus_client.exposition import generate_latest

    clock, maker = Clock(), FakeMaker()
    pool = ContainerPool(clock, maker, max_per_key=2, max_total=4)
    students = ContainerPool(clock, FakeMaker(), max_per_key=1, max_total=1, role="student")
    backend = _Pooled(pool, students)
    assert verifyObject(IPooledBackend, backend)
    registry = agent_registry(backend)
    assert _get(_samples(generate_latest(registry).decode()), "inginious_agent_pool_misses_total") == 0
    keys = [PoolKey("py", "img", None, False), PoolKey("py", "img", None, True), PoolKey("c", "img2", None, False)]
    for key in keys:
        pool.take(key)  # a miss each; one container wanted each
        pool.record_ready(key, 0.3, hit=False)
    maker.finish_all()
    pool.take(keys[0])  # a hit
    pool.record_ready(keys[0], 0.004, hit=True)
    samples = _samples(generate_latest(registry).decode())
    assert _get(samples, "inginious_agent_pool_misses_total", environment="py") == 2, "two keys of py, summed"
    assert _get(samples, "inginious_agent_pool_hits_total", environment="py") == 1
    assert _get(samples, "inginious_agent_pool_made_total", environment="c") == 1
    assert _get(samples, "inginious_agent_pool_creating", environment="py") == 2, "two takes: two wanted"
    assert _get(samples, "inginious_agent_pool_ready", environment="py") == 1, "the other key of py"
    hit = {"environment": "py", "outcome": "hit"}
    miss = {"environment": "py", "outcome": "miss"}
    assert _get(samples, "inginious_agent_pool_ready_seconds_bucket", le="0.005", **hit) == 1
    assert _get(samples, "inginious_agent_pool_ready_seconds_bucket", le="0.25", **miss) == 0
    assert _get(samples, "inginious_agent_pool_ready_seconds_bucket", le="0.5", **miss) == 2
    assert _get(samples, "inginious_agent_pool_ready_seconds_count", **miss) == 2
    assert _get(samples, "inginious_agent_pool_ready_seconds_sum", **miss) == pytest.approx(0.6)
    students.take(PoolKey("py", "img", None, False))
    samples = _samples(generate_latest(registry).decode())
    assert _get(samples, "inginious_agent_pool_misses_total", environment="py", pool="student") == 1
    assert _get(samples, "inginious_agent_pool_misses_total", environment="py") == 2, "apart from grading's"
    environments = {dict(labels).get("environment") for (_, labels) in samples}
    assert environments == {"py", "c"}, "one label value per environment of the agent, nothing else"


def test_metrics_options() -> None:
    def parse(*argv: str) -> Any:
        options = agent_tap.Options()
        options.parseOptions(["--backend", "tcp:127.0.0.1:2001", "--kind", "mock", *argv])
        return options

    options = parse()
    assert options["metrics"] is None and options["metrics-max-connections"] == 64
    assert parse("--metrics", "9101", "--metrics-idle-timeout", "5")["metrics-idle-timeout"] == 5.0
    with pytest.raises(usage.UsageError, match="--metrics"):
        parse("--metrics", "nonsense:thing")
    with pytest.raises(usage.UsageError):
        parse("--metrics", "9101", "--metrics-max-connections", "0")


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.headers["content-type"].startswith("text/plain")
        return _samples(answer.read().decode())


@pytest_twisted.ensureDeferred
async def test_a_real_agent_serves_its_pool_metrics(tmp_path: Any, short_tmp: str, closers: list, within: Any) -> None:
    """twistd inginious-agent --kind docker --metrics tcp:0: a job misses, the next hits, and the scraped
    counters and histogram say so; a connection over the cap closes the oldest idle one."""
    require_docker()
    from twisted.internet import reactor

    tasks = str(tmp_path / "tasks")
    make_task(tasks, "course", "ok", "feedback-result success\n")
    service = BackendService(reactor, ["tcp:0:interface=127.0.0.1"], ["tcp:0:interface=127.0.0.1"], shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    clients, agents = await within(service.ready)
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "inginious-agent", "--backend", agents.connect_endpoint, "--kind", "docker", "--tasks", tasks,
            "--slots", "1", "--option", f"work_dir={short_tmp}/work", "--environment", f"default={TEST_IMAGE}",
            "--metrics", "tcp:0", "--metrics-max-connections", "2", "--metrics-idle-timeout", "300"]  # fmt: skip
    proto = _Collect()
    process = reactor.spawnProcess(proto, sys.executable, argv, env=child_env(), path=short_tmp)
    owner = owner_token(process.pid)

    def stop() -> Any:
        if process.pid is not None:
            process.signalProcess("TERM")
        return proto.done

    closers.append(lambda: deferToThread(lambda: remove_containers(containers_labelled(LABEL_OWNER, owner))))
    closers.append(stop)
    deadline = time.monotonic() + 60
    while not (found := re.search(r"agent metrics on http://127\.0\.0\.1:(\d+)/metrics", "".join(
            b.decode() for b in proto.out + proto.err))):  # fmt: skip
        assert time.monotonic() < deadline and not proto.done.called, (proto.out, proto.err)
        await deferLater(reactor, 0.05, lambda: None)
    url = f"http://127.0.0.1:{found.group(1)}/metrics"
    client = connect_client(reactor, clients.connect_endpoint, "student")
    closers.append(client.stop)
    assert (await within(client.new_job("course", "ok", {}), 120)).result == "success"
    deadline = time.monotonic() + 60
    while _get(samples := await deferToThread(_scrape, url), "inginious_agent_pool_ready", environment="default") < 1:
        assert time.monotonic() < deadline, "no container made ahead after the first job"
        await deferLater(reactor, 0.1, lambda: None)
    assert _get(samples, "inginious_agent_pool_misses_total", environment="default") == 1
    assert _get(samples, "inginious_agent_pool_made_total", environment="default") >= 1
    assert _get(samples, "inginious_agent_pool_target", environment="default") >= 1
    assert (await within(client.new_job("course", "ok", {}), 120)).result == "success"
    samples = await deferToThread(_scrape, url)
    assert _get(samples, "inginious_agent_pool_hits_total", environment="default") == 1
    assert _get(samples, "inginious_agent_pool_misses_total", environment="default") == 1
    for outcome in ("hit", "miss"):
        labels = {"environment": "default", "outcome": outcome}
        assert _get(samples, "inginious_agent_pool_ready_seconds_count", **labels) == 1, outcome
        assert _get(samples, "inginious_agent_pool_ready_seconds_sum", **labels) > 0
    with pytest.raises(urllib.error.HTTPError, match="404"):
        await deferToThread(urllib.request.urlopen, url.replace("/metrics", "/nothing"), None, 30)

    def over_the_cap() -> bytes:
        port = int(found.group(1))
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        try:
            _scrape(url)  # a third connection: the oldest idle one makes room
            idle[0].settimeout(20)  # well under the idle timeout: only the cap closes it
            try:
                return idle[0].recv(1)  # b"": closed by the agent
            except ConnectionResetError:  # aborted: closed too
                return b""
        finally:
            for s in idle:
                s.close()

    assert await deferToThread(over_the_cap) == b""
    assert not proto.done.called, "the agent stays up"
