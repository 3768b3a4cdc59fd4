"""The pieces of ``inginious-tx`` that need no backend: arguments, inputs, output, exit status.

The command run for real, as a subprocess against a real backend and agent,
is in ``test_cli_integration.py``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, List

import pytest

from inginious_tx import cli
from inginious_tx.client import ClientJobResult, QueueSnapshot, RunningJob, WaitingJob


def parse(argv: List[str]) -> Any:
    return cli.build_parser().parse_args(argv)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.BACKEND_ENV, raising=False)
    args = parse(["submit", "course/task"])
    assert args.backend == "zmq:tcp://127.0.0.1:2000"
    assert args.task == ("course", "task")
    assert (args.environment, args.time_limit, args.mem_limit, args.priority, args.repeat) == ("default", 30, 100, 0, 1)
    assert args.timeout is None and args.connect_timeout == 10.0 and not args.json
    monkeypatch.setenv(cli.BACKEND_ENV, "tcp:127.0.0.1:4000")
    assert parse(["queue"]).backend == "tcp:127.0.0.1:4000"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["submit", "no-slash"], "is not COURSE/TASK"),
        (["submit", "a/b/c"], "is not COURSE/TASK"),
        (["submit", "c/t", "--repeat", "0"], "must be at least 1"),
        (["submit", "c/t", "--time-limit", "soon"], "is not a whole number"),
        (["submit", "c/t", "--connect-timeout", "-1"], "must be more than 0"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_64(argv: List[str], fragment: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == cli.EXIT_USAGE
    assert fragment in capsys.readouterr().err


def test_help_documents_every_exit_status(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        parse(["submit", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for code in (0, 1, 2, 64, 65, 69, 70):
        assert f"{code:>3}  " in out
    assert "zmq:tcp://127.0.0.1:2000" in out


def test_top_level_help_names_both_dialects(capsys: pytest.CaptureFixture) -> None:
    """The command speaks 0.6 and 0.9, and says that a stock 0.9 backend needs --dialect 0.9."""
    with pytest.raises(SystemExit) as e:
        parse(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "0.6" in out and "0.9" in out and "--dialect 0.9" in out
    assert "INGInious 0.6 compatible" not in out


def test_inputs_merge_files_and_pairs(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"q1": "a", "q2": "keep"}))
    (tmp_path / "b.json").write_text(json.dumps({"q1": "b"}))
    (tmp_path / "code.py").write_text("print(42)\n")
    args = parse(
        [
            "submit",
            "c/t",
            "-f",
            str(tmp_path / "a.json"),
            "-f",
            str(tmp_path / "b.json"),
            "-i",
            "q1=override",
            "-i",
            f"code=@{tmp_path / 'code.py'}",
            "-i",
            "eq=a=b",
        ]
    )
    assert cli.load_inputs(args) == [
        {"q1": "override", "q2": "keep", "code": "print(42)\n", "eq": "a=b"},
        {"q1": "override", "code": "print(42)\n", "eq": "a=b"},
    ]
    assert cli.load_inputs(parse(["submit", "c/t"])) == [{}]


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "cannot read input file"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object (KEY: VALUE), not a list"),
        ('"text"', "not a string"),
        (b"\xff\xfe", "is not UTF-8 text"),
    ],
)
def test_bad_input_files(tmp_path: Path, content: Any, fragment: str) -> None:
    path = tmp_path / "in.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(cli.UsageError) as e:
        cli.load_inputs(parse(["submit", "c/t", "-f", str(path)]))
    assert fragment in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("pair", ["novalue", "=value", "code=@/nonexistent/file"])
def test_bad_input_pairs(pair: str) -> None:
    with pytest.raises(cli.UsageError):
        cli.load_inputs(parse(["submit", "c/t", "-i", pair]))


def result(rtype: str = "success", grade: float = 100.0, **kw: Any) -> ClientJobResult:
    return ClientJobResult(job_id=kw.pop("job_id", "j"), result=rtype, grade=grade, **kw)


def test_readable_result() -> None:
    text = cli.format_result(
        result(
            "failed", 50.0, text="Half right.\nSee below.", problems={"q2": ("failed", "wrong"), "q1": ("success", "")}
        )
    )
    assert text == (
        "result: failed\n"
        "grade: 50\n"
        "feedback:\n"
        "    Half right.\n"
        "    See below.\n"
        "problems:\n"
        "  q1: success\n"
        "  q2: failed\n"
        "    wrong"
    )


@pytest.mark.parametrize(
    "types, status",
    [
        (["success"], 0),
        (["success", "failed"], 1),
        (["failed", "error"], 2),
        (["killed"], 2),
        (["timeout", "success"], 2),
    ],
)
def test_exit_status_is_the_worst_result(types: List[str], status: int) -> None:
    assert cli.exit_status([result(t) for t in types]) == status


def test_exit_status_backend_lost_wins() -> None:
    lost = ClientJobResult.made_up("j", "crash", "backend unavailable: connection lost")
    assert cli.exit_status([result("failed"), lost]) == cli.EXIT_UNAVAILABLE
    # A crash the backend itself reported is just "another result".
    assert cli.exit_status([result("crash", text="backend unavailable")]) == cli.EXIT_OTHER


def test_summary_counts_grades_and_latency() -> None:
    outcomes = [
        cli.Outcome(result("success", 100.0), 0.1),
        cli.Outcome(result("failed", 20.0), 0.3),
        cli.Outcome(result("success", 100.0), 0.2),
    ]
    summary = cli.summarize(outcomes)
    assert summary["jobs"] == 3
    assert list(summary["by_result"].items()) == [("success", 2), ("failed", 1)]
    assert summary["mean_grade"] == pytest.approx(73.333, abs=1e-3)
    assert summary["latency_s"] == pytest.approx({"mean": 0.2, "median": 0.2, "max": 0.3})
    text = cli.format_summary(summary)
    lines = text.splitlines()
    assert lines[0].split() == ["RESULT", "JOBS", "SHARE"]
    assert lines[1].split() == ["success", "2", "66.7%"]
    assert lines[3].split() == ["total", "3", "100.0%"]
    assert "mean grade: 73.33" in text and "median 0.200 s" in text


class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_bar_on_a_terminal() -> None:
    stream = FakeTerminal(tty=True)
    progress = cli.Progress(stream, 4)
    progress.start()
    progress.job_done(cli.Outcome(result("success"), 0.1))
    progress.job_done(cli.Outcome(result("failed"), 0.1))
    progress.finish()
    out = stream.getvalue()
    assert out.count("\r[") == 3 and out.endswith("\n") and out.count("\n") == 1
    last = out.rsplit("\r", 1)[1]
    assert last.startswith("[" + "#" * 15 + "-" * 15 + "] 2/4")
    assert "success 1  failed 1" in last


def test_progress_lines_when_not_a_terminal() -> None:
    stream = FakeTerminal(tty=False)
    progress = cli.Progress(stream, 2)
    progress.start()
    progress.job_done(cli.Outcome(result("success", job_id="a"), 0.25))
    progress.job_done(cli.Outcome(result("killed", 0.0, job_id="b"), 1.5))
    progress.finish()
    assert stream.getvalue() == ("[1/2] a: success (grade 100) in 0.250 s\n[2/2] b: killed (grade 0) in 1.500 s\n")


def test_queue_table() -> None:
    snapshot = QueueSnapshot(
        running=(RunningJob("r1", True, "agent-a", "c/t", "cli", 0, -1),),
        waiting=(WaitingJob("w1", False, "c/t2", "web", 20), WaitingJob("w2", True, "c/t", "cli", 5)),
    )
    text = cli.format_queue(snapshot)
    lines = text.splitlines()
    assert lines[0] == "running jobs: 1"
    assert lines[1].split() == ["JOB", "ID", "MINE", "AGENT", "TASK", "LAUNCHER", "STARTED", "ENDS", "BY"]
    assert lines[2].split()[:5] == ["r1", "yes", "agent-a", "c/t", "cli"] and lines[2].endswith("-")
    assert lines[3] == "waiting jobs: 2"
    assert lines[5].split() == ["1", "w1", "c/t2", "web", "20"]
    assert lines[6].split() == ["2", "w2", "yes", "c/t", "cli", "5"]
    assert cli.format_queue(QueueSnapshot()) == "running jobs: 0\nwaiting jobs: 0"


def test_result_json_is_serializable() -> None:
    data = result(archive=b"\x1f\x8b", problems={"q": ("success", "ok")}).to_json()
    assert json.loads(json.dumps(data))["archive"] == "H4s="
    assert data["problems"] == {"q": ["success", "ok"]}


def test_a_task_unknown_to_the_agent_is_not_a_crash(tmp_path: Path) -> None:
    """The texts agents answer for a task they do not have (ours, read from the function that refuses it,
    and INGInious 0.9's) give exit status 66; any other crash stays 2, and a lost backend wins."""
    from inginious_tx.agent.job_folder import TaskError, prepare_job
    from inginious_tx.cli.exit_codes import EXIT_NO_TASK, EXIT_OTHER, EXIT_UNAVAILABLE, exit_status, is_unknown_task
    from inginious_tx.messages import BackendNewJob

    texts = []
    for course, task in (("demo", "nosuch"), ("../x", "pass")):
        job = BackendNewJob((b"c", "j"), course, task, {}, "default", False, 10, None, 100, False, None)
        with pytest.raises(TaskError) as e:
            prepare_job(str(tmp_path), job, str(tmp_path / "work"))
        texts.append(str(e.value))
    texts.append("Task unavailable on agent. Please retry later, the agents should synchronize soon.")
    for text in texts:
        result = ClientJobResult.made_up("j", "crash", text)
        assert is_unknown_task(result), text
        assert exit_status([result]) == EXIT_NO_TASK
    crash = ClientJobResult.made_up("j", "crash", "the job's container could not start")
    assert not is_unknown_task(crash) and exit_status([crash]) == EXIT_OTHER
    assert not is_unknown_task(ClientJobResult.made_up("j", "error", texts[0]))
    from inginious_tx.client.result import UNAVAILABLE

    lost = ClientJobResult.made_up("j", "crash", f"{UNAVAILABLE}: connection lost")
    assert lost.backend_unavailable
    assert exit_status([ClientJobResult("j", "crash", texts[0]), lost]) == EXIT_UNAVAILABLE
