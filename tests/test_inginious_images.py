"""INGInious grading images on our Docker agent give the verdicts INGInious 0.9.2's own agent gives.

Both sides grade the same cases, submitted by the real 0.9.2 client with
tasks built as its webapp builds them (``inginious_grading_driver.py``):

- the real side: ``inginious-backend`` + ``inginious-agent-docker`` of the
  full 0.9.2 virtualenv (``ITX_INGINIOUS_09_FULL``);
- our side: ``twistd inginious-backend`` + ``twistd inginious-agent --kind docker``
  of this working tree, with no ``--environment``: the image is found by its labels.

The image is ``inginious-c-default:0.9.2-local`` (``shared/inginious-0.9.2/build_image.sh``),
the tasks ``shared/inginious-0.9.2/tasks/ingi`` and ``tests/data/inginious_tasks/itx``.
Each side runs once per module, all its cases at once; each case then
compares the two answers field by field and checks the expected verdict
(so that a broken real side cannot make the comparison pass).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from inginious_image_support import (
    INGINIOUS_IMAGE,
    SHARED,
    VENV_FULL,
    inginious_full_program,
    require_inginious_full,
    require_inginious_image,
    require_shared,
)
from inginious_support import OurPrograms, free_port

#: The same variables as .ci/setup-inginious-image.sh (see inginious_image_support).
FULL_VENV = VENV_FULL
IMAGE = INGINIOUS_IMAGE
DRIVER = Path(__file__).resolve().parent / "inginious_grading_driver.py"
OUR_TASKS = Path(__file__).resolve().parent / "data" / "inginious_tasks"

REGEX_OK = {
    "regex1": r"(\d{1,3}\.){3}\d{1,3}",
    "regex2": r"\[.*?\]",
    "regex3": r'"GET\s.*?"',
    "regex4": r"^.*200.*$",
}

ARCHIVE_OK = "#!/bin/sh\necho hi > /archive/generated.txt"

#: ref -> (course, task, inputdata, extra driver fields, expected (result, grade))
CASES: Dict[str, Any] = {
    # submitted in this order: the graders with tight limits (regex: some 16 helper calls in 3 s of
    # CPU, 9 s of wall time; archive: 3 s) first, each alone, so that the other jobs' load cannot push
    # them over their limits
    "regex-ok": ("ingi", "regex", REGEX_OK, {"alone": True}, ("success", 100.0)),
    "regex-wrong": ("ingi", "regex", dict(REGEX_OK, regex2="x", regex3="y"), {"alone": True}, ("success", 100.0)),
    "archive": ("ingi", "archive", {"thecode": ARCHIVE_OK}, {"alone": True}, ("success", 100.0)),
    "archive-wrong": ("ingi", "archive", {"thecode": "#!/bin/bash\ntrue"}, {"alone": True}, ("failed", 0.0)),
    "trivial": ("ingi", "trivial", {"unittest": ["0", "1"]}, {}, ("success", 100.0)),
    "hello": ("ingi", "hello", {}, {}, ("success", 100.0)),
    "hello-debug": ("ingi", "hello", {}, {"debug": True}, ("success", 100.0)),
    "timeout": ("ingi", "timeout", {"thecode": "#!/bin/bash\nwhile true; do :; done"}, {}, ("timeout", 0.0)),
    "parsetemplate-ok": (
        "ingi",
        "parsetemplate",
        {"studentcode": "if x < 0:\n    return -x\nreturn x"},
        {},
        ("success", 100.0),
    ),
    "parsetemplate-wrong": ("ingi", "parsetemplate", {"studentcode": "return x"}, {}, ("failed", 0.0)),
    "random_ipy": ("ingi", "random_ipy", {"test": "4", "@random": [0.5]}, {}, ("success", 100.0)),
    "random_ipy-wrong": ("ingi", "random_ipy", {"test": "5", "@random": [0.5]}, {}, ("failed", 0.0)),
    "runsh": ("ingi", "runsh", {"answer": "42"}, {}, ("success", 100.0)),
    "runsh-wrong": ("ingi", "runsh", {"answer": "41"}, {}, ("failed", 0.0)),
    "common_run": ("ingi", "common_run", {"q": "x"}, {}, ("success", 100.0)),
    "python_api": ("itx", "python_api", {"q": "42"}, {}, ("success", 75.5)),
    "python_api-wrong": ("itx", "python_api", {"q": "7"}, {}, ("failed", 12.25)),
    "grader_crash": ("itx", "grader_crash", {"q": "x"}, {}, ("crash", 0.0)),
    "no_feedback": ("itx", "no_feedback", {"q": "x"}, {}, ("crash", 0.0)),
    "no_run": ("itx", "no_run", {"q": "x"}, {}, ("crash", 0.0)),
    "memory": ("itx", "memory", {"q": "x"}, {}, ("overflow", 0.0)),
    "student_stdin": ("itx", "student_stdin", {"q": "42"}, {}, ("success", 100.0)),
    "student_limits": ("itx", "student_limits", {"q": "x"}, {}, ("success", 100.0)),
    "state": ("itx", "state", {"q": "42", "@state": "before"}, {}, ("success", 100.0)),
    "killed": ("itx", "slow", {"q": "x", "@state": "kept"}, {"kill_after": 4}, ("killed", 0.0)),
}
#: Our agent's grading containers made ahead (``pool_max``, see ``docs/inginious-images.rst``): on, so
#: that the verdicts of jobs run in containers made ahead are the ones compared (``ITX_TEST_POOL_MAX=0``:
#: every job in a container of its own).
OUR_POOL_MAX = os.environ.get("ITX_TEST_POOL_MAX", "2")
#: Results whose text is the agent's own words (INGInious gives none).
AGENT_TEXTS = {"timeout", "overflow", "killed"}


def _requirements() -> str:
    """The full 0.9.2 virtualenv's Python, once the image, the virtualenv and the tasks are there."""
    require_inginious_image()
    inginious_full_program("inginious-agent-docker")
    require_shared("inginious-0.9.2", "tasks", "ingi")
    return require_inginious_full()


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ingi-tasks")
    shutil.copytree(SHARED / "inginious-0.9.2" / "tasks" / "ingi", root / "ingi", symlinks=True)
    shutil.copytree(OUR_TASKS / "itx", root / "itx", symlinks=True)
    return root


def _submit(python: str, clients: str, tasks: Path, work: Path) -> Dict[str, Dict[str, Any]]:
    """Run every case through the real client against the backend at ``clients``; answers by ref."""
    cases = [dict(ref=ref, course=c, task=t, inputdata=inp, **extra) for ref, (c, t, inp, extra, _) in CASES.items()]
    path = work / "cases.json"
    path.write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [python, str(DRIVER), "--backend", clients, "--tasks", str(tasks), "--cases", str(path), "--timeout", "300"],
        capture_output=True, text=True, timeout=420, env=env,
    )  # fmt: skip
    answers = {}
    for line in proc.stdout.splitlines():
        event = json.loads(line)
        if event.get("event") == "done":
            answers[event["ref"]] = event
    assert answers, f"no answer at all\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    return answers


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def real_answers(tasks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """INGInious 0.9.2's backend and docker agent, once per module."""
    python = _requirements()
    work = tmp_path_factory.mktemp("real")
    cport, aport = free_port(), free_port()
    bin_dir = FULL_VENV / "bin"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    logs = [open(work / "backend.log", "w"), open(work / "agent.log", "w")]
    procs: List[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [str(bin_dir / "inginious-backend"), f"tcp://127.0.0.1:{aport}", f"tcp://127.0.0.1:{cport}"],
            stdout=logs[0], stderr=subprocess.STDOUT, env=env,
        ))  # fmt: skip
        _wait_port(aport)
        procs.append(subprocess.Popen(
            [str(bin_dir / "inginious-agent-docker"), f"tcp://127.0.0.1:{aport}", "--tasks", str(tasks_dir),
             "--concurrency", "2", "--tmpdir", str(work / "agent_tmp"), "--debug-host", "127.0.0.1",
             "--friendly-name", "real-0.9.2"],
            stdout=logs[1], stderr=subprocess.STDOUT, env=env, cwd=str(work),
        ))  # fmt: skip
        yield _submit(python, f"tcp://127.0.0.1:{cport}", tasks_dir, work)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs:
            f.close()


@pytest.fixture(scope="module")
def our_answers(tasks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """Our backend and our docker agent (no --environment: the image is found by its labels), once per module."""
    python = _requirements()
    work = tmp_path_factory.mktemp("ours")
    cport, aport = free_port(), free_port()
    with OurPrograms() as ours:
        backend = ours.twistd(
            "inginious-backend", "--clients", f"zmq:tcp://127.0.0.1:{cport}", "--agents", f"zmq:tcp://127.0.0.1:{aport}"
        )
        agent = ours.twistd(
            "inginious-agent", "--backend", f"zmq:tcp://127.0.0.1:{aport}", "--kind", "docker",
            "--tasks", str(tasks_dir), "--slots", "2", "--name", "ours",
            "--option", f"work_dir={work / 'jobs'}", "--option", f"pool_max={OUR_POOL_MAX}",
        )  # fmt: skip
        agent.wait_for_line("registered with the backend", timeout=60)
        try:
            yield _submit(python, f"tcp://127.0.0.1:{cport}", tasks_dir, work)
        finally:
            (work / "backend.log").write_text(backend.output())
            (work / "agent.log").write_text(agent.output())


def _problems(problems: Dict[str, Any]) -> Dict[str, List[str]]:
    """A problem given a message but no result is a bare text in INGInious, ("", text) here."""
    return {k: ["", v] if isinstance(v, str) else list(v) for k, v in problems.items()}


def _expected(ref: str, answer: Dict[str, Any], side: str) -> None:
    want = CASES[ref][4]
    got = (answer["result"][0], answer["grade"])
    assert got == want, f"{side}: {ref} answered {got}, expected {want}: {answer}"


@pytest.mark.parametrize("ref", sorted(CASES))
def test_same_verdict_as_inginious(ref: str, real_answers: Dict[str, Any], our_answers: Dict[str, Any]) -> None:
    assert ref in real_answers, f"the real 0.9.2 agent gave no answer for {ref}"
    assert ref in our_answers, f"our agent gave no answer for {ref}"
    real, ours = real_answers[ref], our_answers[ref]
    _expected(ref, real, "INGInious 0.9.2")
    _expected(ref, ours, "ours")
    assert ours["result"][0] == real["result"][0]
    if real["result"][0] not in AGENT_TEXTS:
        assert ours["result"][1] == real["result"][1]
    assert ours["grade"] == real["grade"]
    assert _problems(ours["problems"]) == _problems(real["problems"])
    assert ours["archive"] == real["archive"]
    assert ours["custom"] == real["custom"]
    assert ours["tests"] == real["tests"]
    assert ours["state"] == real["state"]
    assert (ours["stdout"] or "") == (real["stdout"] or "")
    assert (ours["stderr"] or "") == (real["stderr"] or "")
