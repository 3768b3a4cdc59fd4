"""A scheduling policy from another distribution: plugins/example_policy.

The first tests import it from its source folder; the slow one installs it
with pip, as a user would, and runs a backend that picks it by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from subprocess_env import child_env
from zope.interface.verify import verifyClass, verifyObject

from inginious_tx.interfaces import ISchedulingPolicy

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "plugins" / "example_policy"
DIST = "inginious-tx-example-policy"


@pytest.fixture
def example_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(SOURCE))
    import inginious_tx_example_policy

    return inginious_tx_example_policy


class J:
    def __init__(self, n: int, env: str = "env", priority: int = 0) -> None:
        self.key = (b"c", f"j{n}")
        self.environment = env
        self.course_id = "c"
        self.task_id = "t"
        self.priority = priority
        self.time_limit = 10
        self.submitted_at = float(n)
        self.sequence = n


def test_example_policy_provides_the_interface(example_module: Any) -> None:
    cls = example_module.NewestFirstPolicy
    verifyClass(ISchedulingPolicy, cls)
    verifyObject(ISchedulingPolicy, cls())
    assert cls.name == "newest-first"


def test_example_policy_orders_newest_first(example_module: Any) -> None:
    policy = example_module.NewestFirstPolicy()
    jobs = [J(0), J(1), J(2, priority=-1), J(3), J(4, env="other")]
    for j in jobs:
        policy.add(j)
    policy.remove(jobs[1])
    assert len(policy) == 4 and policy.waiting("env") == 3
    assert [j.key[1] for j in policy.ordered()] == ["j2", "j4", "j3", "j0"]
    assert [policy.pop_next(["env", "other"]).key[1] for _ in range(4)] == ["j2", "j4", "j3", "j0"]
    assert policy.pop_next(["env", "other"]) is None
    # many removals do not leave the heap full of dead entries
    many = [J(100 + i) for i in range(500)]
    for j in many:
        policy.add(j)
    for j in many[:-5]:
        policy.remove(j)
    assert len(policy._heaps["env"]) < 100
    assert [policy.pop_next(["env"]).sequence for _ in range(5)] == [599, 598, 597, 596, 595]


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[None]:
    """The example distribution pip-installed (from a copy, so that the build
    leaves nothing in the source tree), uninstalled afterwards."""
    copy = tmp_path / "example_policy"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    install = [*pip, "install", "--no-deps", str(copy)]
    done = subprocess.run([*install, "--no-build-isolation"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "bdist_wheel" in done.stdout + done.stderr:
        # setuptools < 70.1 without the `wheel` package cannot build a wheel
        # in this environment: let pip build in an isolated one instead.
        done = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", DIST], capture_output=True, timeout=120)


# Runs in a fresh interpreter, which sees the newly installed distribution.
SCRIPT = r"""
import json
from twisted.internet.task import Clock
from inginious_tx.backend import Backend, available_policies, load_policy
from inginious_tx.backend.testing import FakePeer, agent_hello, job_done, new_job
from inginious_tx.messages import BackendNewJob, ClientHello

policy = load_policy("newest-first")
backend = Backend(Clock(), policy)
client, agent = FakePeer(b"client"), FakePeer(b"agent")
backend.client_handler.client_hello(client, ClientHello("me"))
for i in range(4):
    backend.client_handler.client_new_job(client, new_job(f"j{i}"))
backend.agent_handler.agent_hello(agent, agent_hello("a", 1, ["default"]))
for _ in range(4):
    backend.agent_handler.agent_job_done(agent, job_done(agent.of_type(BackendNewJob)[-1].job_id))
print(json.dumps({
    "policies": available_policies(),
    "class": type(policy).__module__,
    "order": [m.job_id[1] for m in agent.of_type(BackendNewJob)],
}))
"""


@pytest.mark.slow
def test_installed_policy_is_chosen_by_name(installed: None) -> None:
    env = child_env()
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, env=env, cwd=str(ROOT)
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "newest-first" in report["policies"] and "priority" in report["policies"]
    assert report["class"] == "inginious_tx_example_policy"
    assert report["order"] == ["j3", "j2", "j1", "j0"]

    # and twistd lists it
    code = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    listing = subprocess.run(
        [sys.executable, "-c", code, "-n", "inginious-backend", "--list-policies"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(ROOT),
    )
    assert listing.returncode == 0, listing.stderr
    assert "newest-first: Lower ``priority`` value first, then the newest job first." in listing.stdout
