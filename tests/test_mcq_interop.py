"""Our mcq agent against INGInious 0.9.2's own, verdict by verdict.

The same MCQ submissions (tests/mcq_cases.py: INGInious' test course, our
tasks, odd inputs, hand-made problems) are sent by the real 0.9.2 client,
with tasks loaded by the real 0.9.2 frontend code (tests/inginious_mcq_driver.py),

- once to the real ``inginious-agent-mcq`` behind the real 0.9.2 backend,
- once to our ``inginious-tx-agent-mcq`` behind our ``twistd inginious-backend``,
- once to INGInious' agent behind our backend,

and every answer must be the same: result, text, grade, problem results and
texts, state (and the empty tests and custom).  Needs the full INGInious
0.9.2 virtualenv (``ITX_INGINIOUS_09_FULL``, made by .ci/setup-inginious.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import mcq_cases
from host_tools import missing_setup
from inginious_support import InginiousPeers, OurPrograms, inginious_fixture, ours_fixture, zmq_address  # noqa: F401

#: The virtualenv with inginious==0.9.2 and its dependencies (frontend, mcq agent).
FULL = Path(os.environ.get("ITX_INGINIOUS_09_FULL", "/opt/itx-inginious-0.9.2-full"))
DRIVER = Path(__file__).resolve().parent / "inginious_mcq_driver.py"
TIMEOUT = 120


def _full_venv() -> Path:
    python = FULL / "bin" / "python"
    if not python.exists() or not (FULL / "bin" / "inginious-agent-mcq").exists():
        missing_setup(f"no full INGInious 0.9.2 virtualenv at {FULL} (run .ci/setup-inginious.sh)")
    return python


def _package(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import inginious, os; print(os.path.dirname(inginious.__file__))"],
        capture_output=True, text=True, check=True, env=_clean_env(),
    )  # fmt: skip
    return Path(out.stdout.strip())


def _clean_env() -> Dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # nothing of ours in INGInious' processes
    return env


class _Real:
    """A process of the full virtualenv; its output kept for the failure message."""

    def __init__(self, argv: List[str], log: Path) -> None:
        self.log = log
        self._file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(argv, stdout=self._file, stderr=subprocess.STDOUT, env=_clean_env())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._file.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _submit_all(python: Path, clients: str, tasks: Path, cases: Path, logs: str) -> Dict[str, Dict[str, Any]]:
    """Every case through the real client and frontend tasks; ref -> answer."""
    run = subprocess.run(
        [str(python), str(DRIVER), "--backend", clients, "--tasks", str(tasks), "--cases", str(cases),
         "--timeout", str(TIMEOUT)],
        capture_output=True, text=True, timeout=TIMEOUT * 2 + 30, env=_clean_env(),
    )  # fmt: skip
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert {"event": "all-done"} in lines, f"driver failed ({run.returncode}):\n{run.stderr[-4000:]}\n{logs}"
    return {line["ref"]: line for line in lines if "ref" in line}


def test_our_mcq_agent_gives_the_verdicts_of_inginious_own(
    tmp_path: Path, inginious: InginiousPeers, ours: OurPrograms
) -> None:
    python = _full_venv()
    tasks = mcq_cases.write_courses(tmp_path, _package(python))
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(mcq_cases.CASES))

    # INGInious 0.9.2: its backend, its inginious-agent-mcq
    clients, agents = zmq_address(), zmq_address()
    inginious.backend("0.9", clients, agents)
    real_agent = _Real(
        [str(FULL / "bin" / "inginious-agent-mcq"), agents, "--tasks", str(tasks)], tmp_path / "real.log"
    )
    try:
        theirs = _submit_all(python, clients, tasks, cases, f"real agent:\n{real_agent.tail()}\n{inginious.logs()}")
    finally:
        real_agent.stop()

    # ours: twistd inginious-backend, inginious-tx-agent-mcq (INGInious' command line)
    clients, agents = zmq_address(), zmq_address()
    backend = ours.twistd("inginious-backend", "--clients", f"zmq:{clients}", "--agents", f"zmq:{agents}")
    agent = ours.run(
        [sys.executable, "-m", "inginious_tx.agent.mcq_command", agents, "--tasks", str(tasks),
         "--friendly-name", "our-mcq", "--concurrency", "8"],
        "inginious-tx-agent-mcq",
    )  # fmt: skip
    mine = _submit_all(python, clients, tasks, cases, f"ours:\n{agent.output()[-3000:]}\n{backend.output()[-3000:]}")

    # and INGInious' agent behind our backend (what our backend carries: task_problems, "crashed"...)
    agent.stop()
    real_agent = _Real(
        [str(FULL / "bin" / "inginious-agent-mcq"), agents, "--tasks", str(tasks)], tmp_path / "real2.log"
    )
    try:
        mixed = _submit_all(
            python, clients, tasks, cases, f"real agent:\n{real_agent.tail()}\n{backend.output()[-3000:]}"
        )
    finally:
        real_agent.stop()

    (tmp_path / "answers.json").write_text(json.dumps({"inginious": theirs, "ours": mine, "mixed": mixed}, indent=1))
    refs = [case["ref"] for case in mcq_cases.CASES]
    assert sorted(theirs) == sorted(mine) == sorted(mixed) == sorted(refs)
    fields = ("result", "grade", "problems", "state", "tests", "custom")
    differences = [
        f"{ref}: {name}: INGInious {theirs[ref][name]!r} != {label} {other[ref][name]!r}"
        for label, other in (("ours", mine), ("INGInious' agent behind our backend", mixed))
        for ref in refs
        for name in fields
        if theirs[ref][name] != other[ref][name]
    ]
    assert not differences, "\n".join(differences)

    # The cases cover what they mean to (else an equal failure everywhere would pass).
    results = {ref: theirs[ref]["result"][0] for ref in refs}
    assert {"success", "failed", "crash", "crashed"} <= set(results.values())
    assert results["t2-spaces"] == "success" and results["multi-right"] == "success"
    assert theirs["i18n-fr-wrong"]["problems"]["q"][1] == "Réessayez\n\nPas celle-ci"
    assert theirs["single-de-common-catalog"]["problems"]["q"][1] == "Nochmal\n\nNot this one"
    assert (
        theirs["raw-missing-task"]["result"][0] == "crash" and "unavailable" in theirs["raw-missing-task"]["result"][1]
    )
    assert "Traceback" not in agent.output() and "Traceback" not in backend.output()
