"""The grading-task contract: job folders, helper scripts, feedback validation."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import tarfile
from typing import Any, Dict, List

import pytest
from host_tools import require_program

from inginious_tx.agent.task import (
    JobFolder,
    OutputLimits,
    TaskError,
    collect_result,
    helpers_dir,
    prepare_job,
    remove_job,
)
from inginious_tx.messages import BackendNewJob

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "tasks")
HELPERS = ["getinput", "feedback-result", "feedback-grade", "feedback-msg", "feedback-custom", "feedback-state"]


def make_job(course: str = "demo", task: str = "pass", inputdata: Any = None, run_cmd: Any = None) -> BackendNewJob:
    return BackendNewJob((b"c", "j"), course, task, inputdata or {}, "default", False, 5, None, 64, False, run_cmd)


def debugged(folder: JobFolder) -> JobFolder:
    """The same job folder for a debug job (whose stdout and stderr come back)."""
    j = folder.job
    job = BackendNewJob(
        j.job_id, j.course_id, j.task_id, j.inputdata, j.environment, j.enable_network,
        j.time_limit, j.hard_time_limit, j.mem_limit, True, j.run_cmd,
    )  # fmt: skip
    return dataclasses.replace(folder, job=job)


def archive_names(archive: Any) -> List[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return tar.getnames()


@pytest.fixture
def tasks(tmp_path: Any) -> str:
    root = tmp_path / "tasks"
    (root / "c1" / "t1" / "student").mkdir(parents=True)
    run = root / "c1" / "t1" / "run"
    run.write_text("#!/bin/sh\nfeedback-result success\n")
    run.chmod(0o644)  # not executable: the private copy is made executable
    (root / "c1" / "t1" / "student" / "template.c").write_text("int main;\n")
    (root / "c1" / "norun").mkdir()
    return str(root)


@pytest.fixture
def folder(tasks: str, tmp_path: Any) -> JobFolder:
    inputdata = {
        "q1": "forty two\n",
        "@lang": "en",
        "mcq": [0, 2],
        "n": 3,
        "code": {"filename": "main.c", "value": b"int main() {}\n"},
        "../evil": "x",
        "bin": b"\x00\x01",
    }
    f = prepare_job(tasks, make_job("c1", "t1", inputdata), str(tmp_path / "work"))
    yield f
    remove_job(f)


def busybox_bin(tmp_path: Any) -> str:
    """A folder where every command is a busybox applet."""
    busybox = require_program("busybox")
    d = tmp_path / "bb"
    d.mkdir(exist_ok=True)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if not (d / a).exists():
            os.symlink(busybox, d / a)
    return str(d)


SHELLS = {
    "busybox": lambda tmp: ([require_program("busybox"), "sh"], busybox_bin(tmp)),
    "dash": lambda tmp: ([require_program("dash")], "/usr/bin:/bin"),
    "bash": lambda tmp: (["bash", "--posix"], "/usr/bin:/bin"),
}


def helper(folder: JobFolder, shell: List[str], path: str, name: str, *args: str, stdin: bytes = b"") -> Any:
    env = folder.env(base_path=path)
    return subprocess.run(
        [*shell, os.path.join(helpers_dir(), name), *args],
        env=env,
        input=stdin,
        capture_output=True,
        cwd=folder.task_dir,
        timeout=20,
    )


# -- preparing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "course,task,why",
    [("..", "t1", "invalid course id"), ("c1", "../c1", "invalid task id"), ("c1", "a/b", "invalid task id"),
     ("c1", "", "invalid task id"), ("c1", "missing", "does not exist"), ("c1", "norun", "has no 'run'")],
)  # fmt: skip
def test_prepare_rejects(tasks: str, tmp_path: Any, course: str, task: str, why: str) -> None:
    with pytest.raises(TaskError, match=why):
        prepare_job(tasks, make_job(course, task), str(tmp_path / "work"))
    assert not os.path.exists(tmp_path / "work") or os.listdir(tmp_path / "work") == []


def test_prepare_layout(folder: JobFolder, tasks: str) -> None:
    assert sorted(os.listdir(folder.root)) == ["archive", "feedback", "input", "input.json", "task", "tmp"]
    assert os.access(os.path.join(folder.task_dir, "run"), os.X_OK)
    assert not os.access(os.path.join(tasks, "c1", "t1", "run"), os.X_OK)  # the original is untouched
    assert os.path.isfile(os.path.join(folder.student_dir, "template.c"))
    assert os.listdir(folder.feedback_dir) == [] and os.listdir(folder.archive_dir) == []
    assert sorted(os.listdir(folder.input_dir)) == [
        "@lang", "bin", "code", "code:filename", "code:value", "mcq", "n", "q1"]  # fmt: skip
    with open(os.path.join(folder.root, "input.json")) as f:
        data = json.load(f)
    assert data["../evil"] == "x" and data["bin"] == {"$base64": "AAE="}
    assert folder.command == ["./run"]
    env = folder.env(mount_root="/job", helpers="/inginious/helpers")
    assert env["PATH"].startswith("/inginious/helpers:")
    assert env["INGINIOUS_FEEDBACK"] == "/job/feedback" and env["INGINIOUS_INPUT"] == "/job/input"
    assert folder.env()["INGINIOUS_JOB"] == folder.root


def test_run_cmd(tasks: str, tmp_path: Any) -> None:
    f = prepare_job(tasks, make_job("c1", "norun", run_cmd="echo hi"), str(tmp_path / "w"))
    assert f.command == ["/bin/sh", "-c", "echo hi"]
    remove_job(f)
    assert not os.path.exists(f.root)


def test_helpers_are_executable() -> None:
    for name in HELPERS:
        assert os.access(os.path.join(helpers_dir(), name), os.X_OK), name


# -- helpers under every shell -------------------------------------------------


@pytest.mark.parametrize("shell_name", sorted(SHELLS))
def test_helpers(folder: JobFolder, tmp_path: Any, shell_name: str) -> None:
    shell, path = SHELLS[shell_name](tmp_path)

    def ok(name: str, *args: str, stdin: bytes = b"") -> bytes:
        r = helper(folder, shell, path, name, *args, stdin=stdin)
        assert r.returncode == 0, (name, args, r.stderr)
        return r.stdout

    def bad(name: str, *args: str) -> bytes:
        r = helper(folder, shell, path, name, *args)
        assert r.returncode != 0, (name, args)
        return r.stderr

    assert ok("getinput", "q1") == b"forty two\n"
    assert ok("getinput", "@lang") == b"en"
    assert json.loads(ok("getinput", "mcq")) == [0, 2]
    assert ok("getinput", "n") == b"3"
    assert ok("getinput", "code") == b"int main() {}\n"
    assert ok("getinput", "code:filename") == b"main.c"
    assert ok("getinput", "bin") == b"\x00\x01"
    assert b"no input named" in bad("getinput", "nothere")
    assert b"invalid input key" in bad("getinput", "../input.json")

    ok("feedback-result", "failed")
    ok("feedback-grade", "42.5")
    ok("feedback-msg", "-m", "Line one\n")
    ok("feedback-msg", "-a", "-m", "tab\\there")
    ok("feedback-msg", "-ae", "-m", "\\nescaped")
    ok("feedback-result", "-i", "q1", "success")
    ok("feedback-msg", "-i", "q1", "-m", "good")
    ok("feedback-msg", "--id=q2", stdin=b"from stdin\n")
    ok("feedback-custom", "name", "some value")
    ok("feedback-custom", "-j", "data", '{"a": [1, 2]}')
    ok("feedback-custom", "-j", "name", '"now json"')
    ok("feedback-state", "state-1")

    assert b"invalid result" in bad("feedback-result", "great")
    assert b"invalid grade" in bad("feedback-grade", "101")
    assert b"invalid grade" in bad("feedback-grade", "-3")
    assert b"invalid grade" in bad("feedback-grade", "abc")
    assert b"invalid problem id" in bad("feedback-result", "-i", "../x", "success")
    assert b"invalid custom key" in bad("feedback-custom", "a/b", "1")
    assert b"usage" in bad("feedback-msg", "-z")

    r = collect_result(folder, 0, b"out", b"err")
    assert r.result == "failed"
    assert r.grade == 42.5
    assert r.text == "Line one\ntab\\there\nescaped"
    assert r.problems == {"q1": ("success", "good"), "q2": ("failed", "from stdin\n")}
    assert r.custom == {"name": "now json", "data": {"a": [1, 2]}}
    assert r.state == "state-1"
    # not a debug job: no output back, and an empty archive (as INGInious: it always sends one)
    assert (r.stdout, r.stderr, archive_names(r.archive)) == ("", "", [""])
    r = collect_result(debugged(folder), 0, b"out", b"err")
    assert (r.result, r.stdout, r.stderr) == ("failed", "out", "err")


def test_helpers_outside_a_job(tmp_path: Any) -> None:
    r = subprocess.run(
        [require_program("busybox"), "sh", os.path.join(helpers_dir(), "feedback-result"), "success"],
        env={"PATH": busybox_bin(tmp_path)},
        capture_output=True,
        timeout=20,
    )
    assert r.returncode == 2 and b"INGINIOUS_FEEDBACK is not set" in r.stderr


# -- collecting ------------------------------------------------------------------


def write(folder: JobFolder, files: Dict[str, Any]) -> None:
    for rel, content in files.items():
        path = os.path.join(folder.feedback_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())


def test_defaults_and_missing_result(folder: JobFolder) -> None:
    r = collect_result(folder, 0)
    assert r.result == "error" and "no result" in r.text
    assert collect_result(folder, 3).text.startswith("The grading script exited with code 3")
    assert "signal 9" in collect_result(folder, -9).text
    write(folder, {"text": "partial"})
    r = collect_result(folder, 0)
    assert r.result == "error" and r.text.endswith("partial")
    write(folder, {"result": "success\n"})
    r = collect_result(folder, 1)  # a result written wins over the exit code
    assert (r.result, r.grade, r.text) == ("success", 100.0, "partial")
    write(folder, {"result": "failed"})
    assert collect_result(folder, 0).grade == 0.0


@pytest.mark.parametrize(
    "files,why",
    [
        ({"result": "great"}, "not one of"),
        ({"result": "success", "grade": "150"}, "not between 0 and 100"),
        ({"result": "success", "grade": "nan"}, "not between 0 and 100"),
        ({"result": "success", "grade": "lots"}, "not a number"),
        ({"result": "success", "text": "x" * 2000}, "larger than 1000 bytes"),
        ({"result": "success", "problems/q1/result": "meh"}, "result of problem q1"),
        ({"result": "success", "problems/bad name/text": "x"}, "invalid name"),
        ({"result": "success", "custom-json/k": "{not json"}, "not valid JSON"),
        ({"result": "success", "custom/k": "y" * 600, "custom/l": "z" * 600}, "custom values"),
    ],
)
def test_bad_feedback_is_an_error(folder: JobFolder, files: Dict[str, str], why: str) -> None:
    write(folder, files)
    r = collect_result(folder, 0, limits=OutputLimits(max_text=1000, max_custom_bytes=1000))
    assert r.result == "error", r
    assert why in r.text
    assert r.grade == 0.0


def test_too_many_problems(folder: JobFolder) -> None:
    write(folder, {"result": "success", **{f"problems/p{i}/text": "x" for i in range(5)}})
    r = collect_result(folder, 0, limits=OutputLimits(max_problems=4))
    assert r.result == "error" and "more than 4" in r.text


def test_symlinks_and_fifos_are_not_followed(folder: JobFolder, tmp_path: Any) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    write(folder, {"result": "success"})
    os.symlink(secret, os.path.join(folder.feedback_dir, "text"))
    r = collect_result(folder, 0)
    assert r.result == "error" and "host secret" not in r.text
    os.unlink(os.path.join(folder.feedback_dir, "text"))
    os.mkfifo(os.path.join(folder.feedback_dir, "text"))  # would block a naive reader
    r = collect_result(folder, 0)
    assert r.result == "error" and "not a regular file" in r.text
    os.unlink(os.path.join(folder.feedback_dir, "text"))
    shutil.rmtree(folder.feedback_dir)
    os.symlink(str(tmp_path), folder.feedback_dir)
    r = collect_result(folder, 0)
    assert r.result == "error" and "not a directory" in r.text


def test_output_caps(folder: JobFolder) -> None:
    write(folder, {"result": "success"})
    r = collect_result(debugged(folder), 0, b"a" * 50, "é" * 5, limits=OutputLimits(max_stdout=10, max_stderr=100))
    assert r.stdout.startswith("a" * 10) and "cut at 10 bytes" in r.stdout
    assert r.stderr == "é" * 5


def test_archive(folder: JobFolder, tmp_path: Any) -> None:
    write(folder, {"result": "success"})
    os.makedirs(os.path.join(folder.archive_dir, "sub"))
    with open(os.path.join(folder.archive_dir, "sub", "a.txt"), "w") as f:
        f.write("hello")
    os.symlink("/etc/passwd", os.path.join(folder.archive_dir, "link"))
    r = collect_result(folder, 0)
    with tarfile.open(fileobj=io.BytesIO(r.archive), mode="r:gz") as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert set(names) == {"sub", "sub/a.txt", "link"}
        assert names["link"].issym()  # stored as a link, not the host file
        assert tar.extractfile("sub/a.txt").read() == b"hello"
    r = collect_result(folder, 0, limits=OutputLimits(max_archive=3))
    assert r.result == "error" and "archive" in r.text
    r = collect_result(folder, None, limits=OutputLimits(max_archive=3), outcome=("timeout", "too slow"))
    assert (r.result, r.text, r.archive) == ("timeout", "too slow", None)


# -- the example course under busybox alone ------------------------------------------


@pytest.fixture(scope="module")
def http_url() -> Any:
    """A tiny HTTP server on 127.0.0.1 (in a thread: these tests do not run the reactor)."""
    import http.server
    import socketserver
    import threading

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hi")

        def log_message(self, *args: Any) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hello)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


BAD_GRADE = "The grading script's feedback is invalid: the grade '150' is not between 0 and 100"


@pytest.mark.parametrize(
    "task,inputdata,expected",
    [
        ("pass", {"answer": "x"}, ("success", 100.0, "Well done! You answered: x")),
        ("quiz", {"q1": "42", "q2": "PARIS"}, ("success", 100.0, "All answers are right.")),
        ("quiz", {"q1": "1"}, ("failed", 0.0, "0 answer(s) out of 2 are right.")),
        ("archive", {"code": "c"}, ("success", 100.0, "See the archive.")),
        ("bad-feedback", {}, ("error", 0.0, BAD_GRADE)),
        ("network", {"url": "URL"}, ("success", 100.0, "Reached URL")),
        ("network", {"url": "http://127.0.0.1:1/"}, ("failed", 0.0, "Could not reach http://127.0.0.1:1/")),
    ],
)  # fmt: skip
def test_examples_under_busybox(
    tmp_path: Any, http_url: str, task: str, inputdata: Dict[str, str], expected: Any
) -> None:
    inputdata = {k: v.replace("URL", http_url) for k, v in inputdata.items()}
    expected = tuple(x.replace("URL", http_url) if isinstance(x, str) else x for x in expected)
    job = BackendNewJob((b"c", "j"), "demo", task, inputdata, "default", True, 10, None, 64, False, None)
    folder = prepare_job(EXAMPLES, job, str(tmp_path / "work"))
    try:
        run = subprocess.run(
            [require_program("busybox"), "sh", "./run"],
            cwd=folder.task_dir,
            env=folder.env(base_path=busybox_bin(tmp_path)),
            capture_output=True,
            timeout=30,
        )
        r = collect_result(folder, run.returncode, run.stdout, run.stderr)
    finally:
        remove_job(folder)
    assert (r.result, r.grade, r.text) == expected, r.stderr
    if task == "archive":
        with tarfile.open(fileobj=io.BytesIO(r.archive), mode="r:gz") as tar:
            assert sorted(tar.getnames()) == ["logs", "logs/build.log", "submission.txt"]
