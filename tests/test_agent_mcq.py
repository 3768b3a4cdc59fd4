"""The mcq agent kind: its grading rules, translations, plugin contract, the
agent path of a 0.9 job's ``task_problems``, ``twistd --kind mcq`` and
``inginious-tx-agent-mcq``.

The rules are checked against INGInious 0.9.2's own mcq agent, case by case,
in tests/test_mcq_interop.py; here each rule has a small test of its own.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict

import mcq_cases
import pytest
import pytest_twisted
from test_agent_dialect import Harness
from twisted.internet.task import Clock
from twisted.python import usage
from zope.interface.verify import verifyClass, verifyObject

from inginious_tx.agent import mcq_command
from inginious_tx.agent.mcq import MCQBackend
from inginious_tx.agent.mcq_i18n import MoCache, agent_catalog, agent_text, task_files
from inginious_tx.agent.mcq_rules import NO_PROBLEMS, TASK_UNAVAILABLE, UNKNOWN_ERROR, grade
from inginious_tx.agent.result import AgentConfig
from inginious_tx.agent.tap import Options
from inginious_tx.interfaces import IAgentBackend, ITaskProblemsBackend
from inginious_tx.messages import v06, v09

SINGLE = mcq_cases.ITX_TASKS["single"]
MULTI = mcq_cases.ITX_TASKS["multi"]
EN = agent_text("en")


def same(text: Any) -> Any:
    return text


def g(problems: Dict[str, Any], lang: Any = "en", translate: Any = same, **answers: Any) -> Any:
    inputdata = {**answers, "@lang": lang, "@state": "before"}
    return grade(problems, inputdata, agent_text(lang), translate)


# -- rules --------------------------------------------------------------------


def test_single_choice_right_and_wrong() -> None:
    right = g(SINGLE, q="0")
    assert (right.result, right.grade, right.text) == ("success", 100.0, "")
    assert right.problems == {"q": ("success", "Well done\n\nGood choice!")}
    assert right.state == json.dumps({"q": ""}) and right.reason is None
    wrong = g(SINGLE, q="1")
    assert (wrong.result, wrong.grade) == ("failed", 0.0)
    assert wrong.problems == {"q": ("failed", "Try again\n\nNot this one")}
    assert wrong.text == (
        "You have 1 wrong answer(s).\n\n\nAmong them, you have 1 invalid answers in the multiple choice questions"
    )


def test_single_choice_reads_the_answer_as_an_integer() -> None:
    assert g(SINGLE, q=" 0 ").result == "success"
    assert g(SINGLE, q=0).result == "success"
    for bad in ("7", "abc", ["0"], None):
        verdict = g(SINGLE, q=bad)
        assert (verdict.result, verdict.text, verdict.state) == ("crash", UNKNOWN_ERROR, "before"), bad
        assert verdict.reason


def test_multiple_choice_needs_every_valid_choice_and_counts_invalid_ones() -> None:
    assert g(MULTI, q=["1", "0"]).result == "success"
    assert g(MULTI, q=[0, 1]).result == "success"
    half = g(MULTI, q=["0"])
    assert half.problems["q"] == (
        "failed",
        "Wrong answer. Make sure to select all the valid possibilities\n\nGood choice!",
    )
    everything = g(MULTI, q=["0", "1", "2", "3"])
    assert "you have 2 invalid answers" in everything.text
    assert g(MULTI, q=[]).text.endswith("you have 2 invalid answers in the multiple choice questions")
    # a string is no list of choices, an unknown choice fails the job
    assert g(MULTI, q="01").result == "crash"
    assert g(MULTI, q=["0", "1", "9"]).result == "crash"
    # each chosen choice's feedback, in the order given, duplicates included
    assert g(MULTI, q=["0", "0", "1"]).problems["q"] == ("success", "Good choice!\n\nGood choice!")


def test_centralize_hides_the_problem_text_not_the_main_text() -> None:
    central = mcq_cases.ITX_TASKS["multi_central"]
    wrong = g(central, q=["1"])
    assert wrong.problems == {} and wrong.text.startswith("You have 1 wrong answer(s).")
    match = mcq_cases.ITX_TASKS["match_central"]
    assert g(match, q="y").problems == {} and g(match, q="x").result == "success"


def test_match_strips_the_answer_and_compares_text() -> None:
    match = mcq_cases.ITX_TASKS["match"]  # answer: 42 (an int in the task)
    assert g(match, q=" 42\t\n").problems == {"q": ("success", "Correct answer")}
    wrong = g(match, q="43")
    assert wrong.problems == {"q": ("failed", "Wrong answer")} and wrong.text == "You have 1 wrong answer(s)."
    assert g(match, q=42).result == "crash"  # not a string


def test_grade_is_the_share_of_right_problems() -> None:
    mixed = mcq_cases.ITX_TASKS["mixed"]
    verdict = g(mixed, q1="1", q2=" yes ", q3=["0"])
    assert (verdict.result, verdict.grade) == ("failed", 66.67)
    assert verdict.state == '{"q1": "", "q2": "", "q3": ""}'
    assert g(mixed, q1="1", q2="yes", q3=["0", "1"]).grade == 100.0


def test_what_cannot_be_graded_crashes_with_the_state() -> None:
    for name, problems in mcq_cases.RAW.items():
        if name in ("limit_ok", "marker_feedback", "float_answer", "list_answer"):
            continue
        verdict = g(problems, q="0", **{"q 1": "a"})
        assert (verdict.result, verdict.text, verdict.grade, verdict.state) == ("crash", UNKNOWN_ERROR, 0.0, "before")
    assert g(mcq_cases.ITX_TASKS["withcode"], q1="a", q2="x").result == "crash"
    assert g(mcq_cases.ITX_TASKS["mixed"], q1="1", q3=["0", "1"]).result == "crash"  # q2 missing
    assert g(SINGLE, lang={"fr": 1}, q="0").result == "crash"  # a language INGInious cannot look up
    assert g(SINGLE, lang=("fr",), q="0").result == "success"  # an array (decoded as a tuple) can be
    assert g({"q\n": {"type": "match", "answer": "a"}}, **{"q\n": "a"}).result == "success"  # INGInious' id rule


def test_hostile_answers_are_bounded() -> None:
    from inginious_tx.agent.mcq_rules import MAX_ANSWER_ITEMS, MAX_FEEDBACK_CHARS

    long = {"q": {"type": "multiple_choice", "multiple": True,
                  "choices": [{"text": "A", "valid": True, "feedback": "x" * 1000}]}}  # fmt: skip
    assert g(long, q=["0"] * 900).result == "success"  # 900 kB of feedback: still INGInious' verdict
    too_much = g(long, q=["0"] * 2000)
    assert (too_much.result, too_much.state) == ("crash", "before")
    assert too_much.text.startswith("This submission cannot be graded: its feedback would have")
    assert str(MAX_FEEDBACK_CHARS) in too_much.text
    too_long = g(MULTI, q=["0"] * (MAX_ANSWER_ITEMS + 1))
    assert too_long.result == "crash" and f"more than {MAX_ANSWER_ITEMS} entries" in too_long.text
    assert g(SINGLE, q="9" * 100_000).text == UNKNOWN_ERROR  # Python refuses such an integer


def test_no_problems_is_crashed_with_the_state() -> None:
    verdict = g({})
    assert (verdict.result, verdict.text, verdict.grade, verdict.state) == ("crashed", NO_PROBLEMS, 0.0, "before")


def test_agent_messages_in_every_shipped_language() -> None:
    assert sorted(agent_catalog()) == ["de", "es", "fr", "he", "nb_NO"]
    for lang, texts in agent_catalog().items():
        assert len(texts) == 5, lang
        verdict = g(MULTI, lang=lang, q=["2"])
        assert verdict.text.startswith(texts["You have {} wrong answer(s)."].format(1))
        assert verdict.problems["q"][1].startswith(
            texts["Wrong answer. Make sure to select all the valid possibilities"]
        )
    assert agent_text("fr_BE") is agent_text("en") is agent_text(5)


def test_task_texts_are_translated_by_the_task_catalog() -> None:
    french = {"Try again": "Réessayez", "Not this one": "Pas celle-ci"}
    verdict = g(SINGLE, lang="fr", translate=lambda t: french.get(t, t), q="1")
    assert verdict.problems == {"q": ("failed", "Réessayez\n\nPas celle-ci")}
    # a feedback that is one of the agent's markers becomes its text
    assert g(mcq_cases.RAW["marker_feedback"], lang="fr", q="0").problems == {"q": ("success", "Réponse incorrecte")}


# -- task folder and catalogs ------------------------------------------------------


def test_task_files(tmp_path: Path) -> None:
    tasks = mcq_cases.write_courses(tmp_path, inginious_course=False)
    cache = MoCache()
    fr = task_files(str(tasks), "itx", "i18n", "fr", cache)
    assert fr.error is None and fr.translate("Try again") == "Réessayez"
    assert task_files(str(tasks), "itx", "i18n", "fr", cache).translate("Well done") == "Bravo"  # cached
    # the task's $i18n wins over the course's, even without the language
    assert task_files(str(tasks), "itx", "i18n", "de", cache).translate("Try again") == "Try again"
    assert task_files(str(tasks), "itx", "single", "de", cache).translate("Try again") == "Nochmal"
    assert task_files(str(tasks), "itx", "missing", "fr", cache).error == TASK_UNAVAILABLE
    for course, task in (("..", "itx"), ("itx", "../itx/single"), ("/etc", "x"), ("itx", " single")):
        assert task_files(str(tasks), course, task, "fr", cache).error == UNKNOWN_ERROR
    assert task_files(str(tasks), "itx", "single", 5, cache).error == UNKNOWN_ERROR  # INGInious: "5" + ".mo" fails
    hostile = task_files(str(tasks), "itx", "single", "../../i18n/$i18n/fr", cache)
    assert hostile.error is None and hostile.translate("Try again") == "Try again"
    (tasks / "itx" / "i18n" / "$i18n" / "es.mo").write_bytes(b"not a catalog")
    assert task_files(str(tasks), "itx", "i18n", "es", cache).error == UNKNOWN_ERROR
    os.mkfifo(tasks / "itx" / "i18n" / "$i18n" / "he.mo")  # never opened: not a regular file
    assert task_files(str(tasks), "itx", "i18n", "he", cache).error == UNKNOWN_ERROR


def test_catalog_cache_rereads_changed_files_within_its_budget(tmp_path: Path) -> None:
    one, two = tmp_path / "one.mo", tmp_path / "two.mo"
    one.write_bytes(mcq_cases.mo_bytes({"a": "A1"}))
    two.write_bytes(mcq_cases.mo_bytes({"a": "A2"}))
    cache = MoCache(budget=one.stat().st_size + 10)  # room for one catalog
    assert cache.get(str(one))("a") == "A1" and cache.get(str(two))("a") == "A2"
    assert list(cache._entries) == [str(two)] and cache._used == two.stat().st_size
    one.write_bytes(mcq_cases.mo_bytes({"a": "A1, changed"}))
    os.utime(one, ns=(1, 1))  # another modification time
    assert cache.get(str(one))("a") == "A1, changed"


# -- plugin and agent --------------------------------------------------------------


def test_plugin_contract() -> None:
    verifyClass(IAgentBackend, MCQBackend)
    verifyClass(ITaskProblemsBackend, MCQBackend)
    backend = MCQBackend(Clock(), AgentConfig())
    verifyObject(ITaskProblemsBackend, backend)
    assert backend.name == "mcq" and backend.dialect == "0.9" and backend.runs_code is False
    with pytest.raises(ValueError, match="only the environment 'mcq'"):
        MCQBackend(Clock(), AgentConfig(environments=["default"]))
    with pytest.raises(ValueError, match="no --option"):
        MCQBackend(Clock(), AgentConfig(options={"x": "1"}))


def mcq_job(n: int, problems: Any, **inputdata: Any) -> Any:
    return v09.BackendNewJob(f"job-{n}", "itx", "single", problems, inputdata, "mcq", "mcq", {}, False)


def test_agent_hands_the_job_problems_to_the_mcq_backend() -> None:
    h = Harness(MCQBackend(Clock(), AgentConfig()), environment_type=None)
    [hello] = h.of(v09.AgentHello)
    assert hello.available_environments == {"mcq": {"mcq": {"runtime": "mcq", "id": "mcq", "created": 0, "ports": ()}}}
    h.send(mcq_job(1, SINGLE, q="0", **{"@state": "s"}))
    h.send(mcq_job(2, {}, **{"@state": "kept"}))
    h.send(mcq_job(3, SINGLE, q="zzz", **{"@state": "crash-state"}))
    h.send(mcq_job(4, mcq_cases.ITX_TASKS["match"], q="42", **{"@lang": "fr"}))
    done = {m.job_id: m for m in h.of(v09.AgentJobDone)}
    assert done["job-1"].result == ("success", "") and done["job-1"].problems == {
        "q": ("success", "Well done\n\nGood choice!")
    }
    assert done["job-1"].state == '{"q": ""}'
    assert (done["job-2"].result, done["job-2"].state) == (("crashed", NO_PROBLEMS), "kept")
    assert (done["job-3"].result, done["job-3"].state) == (("crash", UNKNOWN_ERROR), "crash-state")
    assert done["job-4"].problems == {"q": ("success", "Réponse correcte")}
    assert len(h.of(v09.AgentJobStarted)) == 4
    edge = h.agent._sink
    assert edge.keep_problems and not edge._problems  # nothing left behind


def test_other_agents_do_not_keep_problems() -> None:
    h = Harness()
    assert h.agent._sink.keep_problems is False


@pytest_twisted.ensureDeferred
async def test_mcq_backend_reads_the_task_folder_in_threads(tmp_path: Path) -> None:
    from twisted.internet import reactor

    tasks = mcq_cases.write_courses(tmp_path, inginious_course=False)
    backend = MCQBackend(reactor, AgentConfig(tasks_dir=str(tasks)))

    def job(task: str, **inputdata: Any) -> Any:
        return v06.BackendNewJob((b"a", task), "itx", task, inputdata, "mcq", False, 1, None, 1, False, None)

    try:
        fr = await backend.run_with_problems(job("i18n", q="1", **{"@lang": "fr"}), mcq_cases.ITX_TASKS["i18n"])
        missing = await backend.run_with_problems(job("missing", q="1"), mcq_cases.ITX_TASKS["i18n"])
        v06_job = await backend.run(job("i18n", q="1"))  # the 0.6 dialect: no problems
    finally:
        await backend.close()
    assert fr.problems == {"q": ("failed", "Réessayez\n\nPas celle-ci")}
    assert (missing.result, missing.text) == ("crash", TASK_UNAVAILABLE)
    assert v06_job.result == "crash" and "0.9 dialect" in v06_job.text


# -- command lines -----------------------------------------------------------------


def test_twistd_kind_mcq_implies_the_09_dialect(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--backend", "zmq:tcp://127.0.0.1:2001", "--kind", "mcq"])
    assert options["dialect"] == "0.9"
    assert options["maxima"].allow_network and options["maxima"].allow_run_cmd  # nothing runs
    mock = Options()
    mock.parseOptions(["--backend", "zmq:tcp://127.0.0.1:2001", "--kind", "mock"])
    assert mock["dialect"] == "0.6" and not mock["maxima"].allow_network
    with pytest.raises(usage.UsageError, match="only the 0.9 dialect"):
        Options().parseOptions(["--backend", "zmq:tcp://127.0.0.1:2001", "--kind", "mcq", "--dialect", "0.6"])


def test_inginious_command_line_maps_onto_twistd(tmp_path: Path) -> None:
    args = mcq_command.twistd_arguments(
        ["tcp://10.0.0.1:2001", "--friendly-name", "m1", "--tasks", str(tmp_path), "--concurrency", "16", "-v",
         "--disable-autorestart", "--", "--silence-timeout", "5"]
    )  # fmt: skip
    assert args == [
        "-n", "--pidfile=", "inginious-agent", "--kind", "mcq", "--dialect", "0.9",
        "--backend", "zmq:tcp://10.0.0.1:2001", "--tasks", str(tmp_path), "--name", "m1", "--slots", "16",
        "--silence-timeout", "5",
    ]  # fmt: skip
    assert mcq_command.endpoint_of("tcp:host=h:port=1") == "tcp:host=h:port=1"
    assert mcq_command.endpoint_of("zmq:ipc:///run/a") == "zmq:ipc:///run/a"
    refused = [
        ["--ptype", "x.Y"], ["--fs", "local"], ["--tasks", "/nonexistent"],
        ["--tasks", str(tmp_path), "--concurrency", "0"],
    ]  # fmt: skip
    for bad in (["tcp://h:1", *extra] for extra in refused):
        with pytest.raises(SystemExit) as e:
            mcq_command.twistd_arguments(bad)
        assert e.value.code == 2


def test_console_script_help_runs() -> None:
    import subprocess

    from subprocess_env import child_env

    out = subprocess.run(
        [sys.executable, "-m", "inginious_tx.agent.mcq_command", "--help"], capture_output=True, text=True,
        env=child_env(), timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and "--friendly-name" in out.stdout and "--concurrency" in out.stdout
