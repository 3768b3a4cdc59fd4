"""The documentation builds with warnings as errors, and the code its
tutorials show (docs/examples/, included verbatim by the pages) works."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import pytest_twisted
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage
from zope.interface.verify import verifyClass, verifyObject

from inginious_tx import plugin
from inginious_tx.agent import Agent, AgentConfig
from inginious_tx.agent.mock import MockBackend
from inginious_tx.backend import Backend, PriorityPolicy, load_policy
from inginious_tx.backend import tap as backend_tap
from inginious_tx.client import Client
from inginious_tx.interfaces import IAgentBackend, ISchedulingPolicy
from inginious_tx.messages import BackendNewJob
from inginious_tx.testing import MemoryTransport

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
POLICY_DIR = EXAMPLES / "exam_policy"
QUIZ_DIR = EXAMPLES / "quiz_agent"
QUIZ_TASKS = QUIZ_DIR / "tasks"
DEMO_TASKS = ROOT / "examples" / "tasks"


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """docs/examples and its plugin folders importable, as they would be once installed."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # leave no __pycache__ in docs/
    for path in (EXAMPLES, POLICY_DIR, QUIZ_DIR):
        monkeypatch.syspath_prepend(str(path))
    yield
    for name in ("itx_exam_policy", "itx_quiz_agent", "policy_sim", "grading_client"):
        sys.modules.pop(name, None)


def entry_points_of(folder: Path) -> List[EntryPoint]:
    """The entry points a plugin's pyproject.toml declares."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(folder / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    return [
        EntryPoint(name, value, group)
        for group, names in project["entry-points"].items()
        for name, value in names.items()
    ]


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, examples: None) -> None:
    """The example plugins' entry points visible to plugin discovery, as after ``pip install``."""
    extra = entry_points_of(POLICY_DIR) + entry_points_of(QUIZ_DIR)
    real = plugin.entry_points

    def entry_points(group: str) -> List[EntryPoint]:
        return [*real(group=group), *(ep for ep in extra if ep.group == group)]

    monkeypatch.setattr(plugin, "entry_points", entry_points)


# ---------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    out = tmp_path / "html"
    run = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for page in ("index", "architecture", "protocol", "running", "policies", "agent_backends", "embedding"):
        assert (out / f"{page}.html").is_file(), page
    for page in ("tasks", "cli", "api"):
        assert (out / f"{page}.html").is_file(), page
    # the tutorials show the tested code itself
    policies = (out / "policies.html").read_text()
    assert "ExamFirstPolicy" in policies and "_forget_one" in policies
    assert "QuizBackend" in (out / "agent_backends.html").read_text()
    # autodoc found the modules (an import error would leave the page empty)
    api = (out / "api.html").read_text()
    assert "ISchedulingPolicy" in api and "BackendService" in api and "MemoryTransport" in api


# ---------------------------------------------------------------------------
# Command-line options: the pages document every option, and only real ones
# ---------------------------------------------------------------------------

_OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")


def documented_options(page: str) -> set:
    return set(_OPTION.findall((DOCS / page).read_text()))


def long_options(options: usage.Options) -> set:
    return {name.rstrip("=") for name in options.longOpt} - {"help", "version"}


def cli_options() -> set:
    from inginious_tx.cli import build_parser

    found = set()
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            found.update(o[2:] for o in action.option_strings if o.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return found - {"help", "version"}


def test_running_page_documents_every_twistd_option() -> None:
    from twisted.scripts.twistd import ServerOptions

    from inginious_tx.agent import tap as agent_tap

    backend, agent = long_options(backend_tap.Options()), long_options(agent_tap.Options())
    documented = documented_options("running.rst")
    assert backend - documented == set(), "options of twistd inginious-backend missing from docs/running.rst"
    assert agent - documented == set(), "options of twistd inginious-agent missing from docs/running.rst"
    known = backend | agent | long_options(ServerOptions()) | cli_options() | {"help"}
    assert documented - known == set(), "docs/running.rst names options that do not exist"


def test_cli_page_documents_every_option() -> None:
    documented, real = documented_options("cli.rst"), cli_options()
    assert real - documented == set(), "options of inginious-tx missing from docs/cli.rst"
    assert documented - real - {"help"} == set(), "docs/cli.rst names options that do not exist"


# ---------------------------------------------------------------------------
# Policy tutorial: docs/examples/exam_policy
# ---------------------------------------------------------------------------


class WaitingJob:
    """Just the attributes IWaitingJob promises a policy."""

    def __init__(self, n: int, course: str = "algo", env: str = "default", priority: int = 0) -> None:
        self.key = (b"client", f"j{n}")
        self.environment = env
        self.course_id = course
        self.task_id = "task"
        self.priority = priority
        self.time_limit = 30
        self.submitted_at = float(n)
        self.sequence = n
        self.launcher = "docs"
        self.retries = 0


def test_exam_policy_provides_the_interface(examples: None) -> None:
    from itx_exam_policy import ExamFirstPolicy

    verifyClass(ISchedulingPolicy, ExamFirstPolicy)
    verifyObject(ISchedulingPolicy, ExamFirstPolicy())
    assert ExamFirstPolicy.name == "exam-first"


def test_exam_policy_reads_the_courses_from_the_environment(examples: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from itx_exam_policy import ENV_VAR, ExamFirstPolicy

    monkeypatch.setenv(ENV_VAR, " db202, algo101 ,,")
    assert ExamFirstPolicy().exam_courses == {"db202", "algo101"}
    monkeypatch.delenv(ENV_VAR)
    assert ExamFirstPolicy().exam_courses == frozenset()


def test_exam_policy_order(examples: None) -> None:
    from itx_exam_policy import ExamFirstPolicy

    policy = ExamFirstPolicy(["exam"])
    jobs = [
        WaitingJob(0),
        WaitingJob(1, priority=-5),
        WaitingJob(2, course="exam", priority=3),
        WaitingJob(3, course="exam", env="java"),
        WaitingJob(4, course="exam"),
        WaitingJob(5, env="java"),
    ]
    for job in jobs:
        policy.add(job)
    with pytest.raises(ValueError):
        policy.add(jobs[0])
    policy.remove(jobs[4])
    policy.remove(jobs[4])  # twice: ignored
    assert len(policy) == 5 and policy.waiting("default") == 3 and policy.waiting("java") == 2
    assert [j.sequence for j in policy.ordered()] == [3, 2, 1, 0, 5]
    assert policy.pop_next(["default"]) is jobs[2]  # java's exam job is not offered
    assert [policy.pop_next(["default", "java"]).sequence for _ in range(4)] == [3, 1, 0, 5]
    assert policy.pop_next(["default", "java"]) is None and len(policy) == 0
    assert policy._heaps == {} and policy.waiting("default") == 0


def test_exam_policy_heaps_stay_small_under_removals(examples: None) -> None:
    from itx_exam_policy import ExamFirstPolicy

    policy = ExamFirstPolicy([])
    jobs = [WaitingJob(n) for n in range(1000)]
    for job in jobs:
        policy.add(job)
    for job in jobs[:-10]:
        policy.remove(job)
    assert len(policy._heaps["default"]) < 100
    assert [policy.pop_next(["default"]).sequence for _ in range(10)] == list(range(990, 1000))


def test_exam_policy_in_the_real_backend_core(examples: None) -> None:
    from itx_exam_policy import ExamFirstPolicy
    from policy_sim import start_order

    jobs = [("h1", "algo", 0), ("h2", "algo", 0), ("e1", "exam", 0), ("h3", "algo", -1), ("e2", "exam", 5)]
    # h1 takes the free slot at once; then the exam, then the rest by priority
    assert start_order(ExamFirstPolicy(["exam"]), jobs) == ["h1", "e1", "e2", "h3", "h2"]
    assert start_order(PriorityPolicy(), jobs) == ["h1", "h3", "h2", "e1", "e2"]


def test_exam_policy_is_chosen_by_name_once_installed(installed: None) -> None:
    from itx_exam_policy import ExamFirstPolicy

    (ep,) = entry_points_of(POLICY_DIR)
    assert (ep.group, ep.name) == ("inginious_tx.policies", "exam-first")
    assert isinstance(load_policy("exam-first"), ExamFirstPolicy)
    options = backend_tap.Options()
    options.parseOptions(["--policy", "exam-first"])
    assert options["policy"] == "exam-first"
    assert "exam-first: Exam courses first" in backend_tap.policy_listing()


# ---------------------------------------------------------------------------
# Agent backend tutorial: docs/examples/quiz_agent
# ---------------------------------------------------------------------------


def quiz_job(inputdata: Dict[str, Any], task: str = "capitals", course: str = "geo", n: int = 1) -> BackendNewJob:
    return BackendNewJob((b"client", f"job{n}"), course, task, inputdata, "default", False, 10, None, 64, False, None)


def quiz_backend(tasks: Path = QUIZ_TASKS) -> Any:
    from itx_quiz_agent import QuizBackend
    from twisted.internet import reactor

    return QuizBackend(reactor, AgentConfig(tasks_dir=str(tasks), environments=["default"]))


def test_quiz_backend_provides_the_interface(examples: None) -> None:
    from itx_quiz_agent import QuizBackend

    verifyClass(IAgentBackend, QuizBackend)
    verifyObject(IAgentBackend, quiz_backend())
    with pytest.raises(ValueError, match="--tasks"):
        QuizBackend(Clock(), AgentConfig())


@pytest_twisted.ensureDeferred
async def test_quiz_backend_grades(examples: None) -> None:
    backend = quiz_backend()
    assert await backend.environments() == {"default": {"id": "quiz:default", "created": 0, "ports": []}}

    right = await backend.run(quiz_job({"france": " paris ", "switzerland": "BERN"}))
    assert (right.result, right.grade, right.text) == ("success", 100.0, "2 of 2 answers are right.")
    assert right.problems == {"france": ("success", "Right."), "switzerland": ("success", "Right.")}

    half = await backend.run(quiz_job({"france": "Lyon", "switzerland": "Berne"}, n=2))
    assert (half.result, half.grade) == ("failed", 50.0)
    assert half.problems["france"] == ("failed", "Wrong answer.")

    missing = await backend.run(quiz_job({}, task="nope", n=3))
    assert missing.result == "crash" and "no quiz.json" in missing.text
    invalid = await backend.run(quiz_job({}, course="../etc", n=4))
    assert invalid.result == "crash" and "invalid" in invalid.text


@pytest_twisted.ensureDeferred
async def test_quiz_backend_reports_a_broken_quiz_as_error(examples: None, tmp_path: Path) -> None:
    (tmp_path / "geo" / "capitals").mkdir(parents=True)
    (tmp_path / "geo" / "capitals" / "quiz.json").write_text("{not json")
    broken = await quiz_backend(tmp_path).run(quiz_job({}))
    assert broken.result == "error" and "quiz.json" in broken.text


@pytest_twisted.ensureDeferred
async def test_quiz_backend_kill_answers_at_once(examples: None, within: Any) -> None:
    backend = quiz_backend()
    job = quiz_job({"france": "Paris"})
    d = backend.run(job)
    backend.kill(job.job_id)  # before the thread is done
    backend.kill(job.job_id)  # twice, and unknown ids: ignored
    backend.kill((b"x", "unknown"))
    result = await within(d, 5)
    assert result.result == "killed"
    # the thread's late grade is dropped; close() with nothing pending is quick
    later = backend.run(quiz_job({"france": "Paris"}, n=2))
    await backend.close()
    assert (await within(later, 5)).result == "killed"


@pytest_twisted.ensureDeferred
async def test_quiz_agent_end_to_end(examples: None, within: Any) -> None:
    """The quiz backend under a real Agent, the real backend core and the real Client."""
    from twisted.internet import reactor

    wire = MemoryTransport(reactor, autopump=True)
    core = Backend(reactor, PriorityPolicy())
    wire.listen(reactor, "mem:c", core.client_sink())
    wire.listen(reactor, "mem:a", core.agent_sink())
    agent = Agent(reactor, quiz_backend(), "quiz-1", 2, "mem:a", transport=wire)
    client = Client(reactor, "mem:c", transport=wire)
    agent.startService()
    client.start()
    try:
        await within(client.wait_for_environment("default"), 5)
        result = await within(client.new_job("geo", "capitals", {"france": "Paris", "switzerland": "Zurich"}), 5)
        assert (result.result, result.grade, result.local) == ("failed", 50.0, False)
        assert result.problems["switzerland"] == ("failed", "Wrong answer.")
    finally:
        await client.stop()
        core.shutdown()
        await within(agent.stopService(), 5)


def test_quiz_agent_is_chosen_with_kind_once_installed(installed: None) -> None:
    from itx_quiz_agent import QuizBackend

    from inginious_tx.agent import tap as agent_tap

    options = agent_tap.Options()
    options.parseOptions(["--backend", "zmq:tcp://127.0.0.1:2001", "--kind", "quiz", "--tasks", str(QUIZ_TASKS)])
    assert options["backend_class"] is QuizBackend
    assert options["config"].tasks_dir == str(QUIZ_TASKS)
    assert "quiz: Grades" in agent_tap.kind_listing()
    with pytest.raises(usage.UsageError, match="quiz"):
        agent_tap.Options().parseOptions(["--backend", "zmq:tcp://127.0.0.1:2001", "--kind", "quizz"])


def test_plugin_folders_declare_their_entry_points(examples: None) -> None:
    for folder in (POLICY_DIR, QUIZ_DIR):
        for ep in entry_points_of(folder):
            iface = getattr(importlib.import_module("inginious_tx.interfaces"), plugin.GROUPS[ep.group])
            verifyClass(iface, ep.load())


# ---------------------------------------------------------------------------
# Embedding tutorial: docs/examples/grading_client.py and grading.tac
# ---------------------------------------------------------------------------


def memory_stack(clock: Clock) -> Tuple[Backend, Agent, Client]:
    """A backend core, a mock agent (2 slots) and a client, in memory on ``clock``."""
    wire = MemoryTransport(clock, autopump=True)
    core = Backend(clock, PriorityPolicy())
    wire.listen(clock, "mem:c", core.client_sink())
    wire.listen(clock, "mem:a", core.agent_sink())
    core.start()
    mock = MockBackend(clock, AgentConfig(environments=["default"]))
    agent = Agent(clock, mock, "mock", 2, "mem:a", transport=wire)
    client = Client(clock, "mem:c", transport=wire)
    agent.startService()
    client.start()
    return core, agent, client


def test_grade_class(examples: None) -> None:
    from grading_client import grade_class

    clock = Clock()
    core, agent, client = memory_stack(clock)
    answers = {
        "ada": {"@mock_result": "success"},
        "alan": {"@mock_result": "failed", "@mock_delay": 3},
        "grace": {"@mock_result": "success", "@mock_delay": 1},
    }
    d = Deferred.fromCoroutine(grade_class(client, "course", "task", answers))
    for _ in range(10):
        clock.advance(1)
    results = d.result
    assert {name: r.result for name, r in results.items()} == {"ada": "success", "alan": "failed", "grace": "success"}
    assert core.running_count == core.waiting_count == 0


def test_grade_before_kills_a_late_job(examples: None) -> None:
    from grading_client import grade_before

    clock = Clock()
    core, agent, client = memory_stack(clock)
    clock.advance(0)
    late = Deferred.fromCoroutine(grade_before(clock, client, "course", "task", {"@mock_delay": 60}, 5))
    quick = Deferred.fromCoroutine(grade_before(clock, client, "course", "task", {"@mock_delay": 1}, 5))
    clock.advance(0)
    assert core.running_count == 2
    for _ in range(6):
        clock.advance(1)
    assert late.result is None and quick.result.result == "success"
    assert core.running_count == 0 and client.pending == ()  # the late job was killed on its agent


@pytest_twisted.ensureDeferred
async def test_grading_tac_runs_a_task(
    examples: None, monkeypatch: pytest.MonkeyPatch, short_tmp: str, within: Any, until: Any
) -> None:
    from twisted.internet import reactor

    monkeypatch.setenv("ITX_TASKS", str(DEMO_TASKS))
    monkeypatch.setenv("ITX_CLIENTS", f"unix:{short_tmp}/clients.sock")
    monkeypatch.setenv("ITX_AGENTS", f"unix:{short_tmp}/agents.sock")
    namespace: Dict[str, Any] = {"__file__": str(EXAMPLES / "grading.tac")}
    exec(compile((EXAMPLES / "grading.tac").read_text(), "grading.tac", "exec"), namespace)
    service = IService(namespace["application"])
    assert [type(s).__name__ for s in service] == ["BackendService", "Agent"]
    namespace["backend"].shutdown_grace = 0
    service.startService()
    client = Client(reactor, f"unix:{short_tmp}/clients.sock")
    client.start()
    try:
        await within(client.wait_for_environment("default"), 10)
        result = await within(client.new_job("demo", "pass", {"answer": "42"}), 30)
        assert result.result == "success", result
        assert "You answered: 42" in result.text
    finally:
        await client.stop()
        await within(service.stopService(), 20)


def test_example_json_files_are_valid() -> None:
    for path in EXAMPLES.rglob("*.json"):
        json.loads(path.read_text())
    assert os.access(DEMO_TASKS / "demo" / "pass" / "run", os.X_OK)
