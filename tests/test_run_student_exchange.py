"""run_student's exchange folder, as a hostile grader may fill it: the agent reads and writes nothing else."""

from __future__ import annotations

import os
import subprocess
from typing import Any, Dict

import pytest
from docker_support import new_job

from inginious_tx.agent.job_folder import helpers_dir
from inginious_tx.agent.run_student import (
    MAX_QUEUED,
    RequestError,
    StudentOutcome,
    StudentRequest,
    thd_answer,
    thd_take,
)


@pytest.fixture
def ex(tmp_path: Any) -> Dict[str, str]:
    exchange = tmp_path / "ex"
    private = tmp_path / "private"
    exchange.mkdir()
    private.mkdir()
    return {"exchange": str(exchange), "private": str(private), "root": str(tmp_path)}


def _request(exchange: str, rid: str, args: Any = ("echo", "hi"), stdin: bytes = b"in", **options: str) -> str:
    d = os.path.join(exchange, f"req.{rid}")
    os.mkdir(d)
    for i, a in enumerate(args):
        with open(os.path.join(d, f"arg.{i}"), "w") as f:
            f.write(a)
    opts = {"argc": str(len(args)), "cwd": "/job/task/student/../x", **options}
    with open(os.path.join(d, "options"), "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in opts.items()))
    with open(os.path.join(d, "stdin"), "wb") as f:
        f.write(stdin)
    final = os.path.join(exchange, f"ready.{rid}")
    os.rename(d, final)
    return final


def test_a_request_is_read_once(ex: Dict[str, str]) -> None:
    job = new_job(time_limit=10, hard_time_limit=20, mem_limit=100)
    _request(ex["exchange"], "A1", ("sh", "-c", "a  b\nc"), b"data", time="2", memory="500")
    [(rid, req)] = thd_take(ex["exchange"], ex["private"], job)
    assert rid == "A1" and isinstance(req, StudentRequest)
    assert req.argv == ["sh", "-c", "a  b\nc"]
    assert (req.cpu_time, req.hard_time, req.memory_mb, req.share_network) == (2.0, 6.0, 100, False)
    assert req.cwd == "/job/task/x"
    assert open(req.stdin_path, "rb").read() == b"data"
    assert os.path.dirname(req.stdin_path) == ex["private"]
    assert thd_take(ex["exchange"], ex["private"], job) == [], "taken twice"
    thd_answer(ex["exchange"], rid, StudentOutcome(3, b"out", b"err"))
    done = os.path.join(ex["exchange"], "done.A1")
    assert {n: open(os.path.join(done, n), "rb").read() for n in ("stdout", "stderr", "exit")} == {
        "stdout": b"out",
        "stderr": b"err",
        "exit": b"3\n",
    }


def test_hostile_requests(ex: Dict[str, str], tmp_path: Any) -> None:
    job = new_job()
    secret = tmp_path / "secret"
    secret.write_text("host file")
    exchange = ex["exchange"]
    # stdin is a link to a host file
    r1 = _request(exchange, "L1")
    os.unlink(os.path.join(r1, "stdin"))
    os.symlink(str(secret), os.path.join(r1, "stdin"))
    # the request itself is a link to a folder elsewhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(str(elsewhere), os.path.join(exchange, "ready.L2"))
    # stdin is a FIFO (the agent must not block on it)
    r3 = _request(exchange, "F3")
    os.unlink(os.path.join(r3, "stdin"))
    os.mkfifo(os.path.join(r3, "stdin"))
    # a bad argument count, a NUL in an argument
    _request(exchange, "C4", argc="99999")
    taken = dict(thd_take(exchange, ex["private"], job, limit=10))
    assert set(taken) == {"L1", "L2", "F3", "C4"}
    assert all(isinstance(v, RequestError) for v in taken.values()), taken
    assert "cannot read the standard input" in str(taken["L1"])
    assert "not a folder" in str(taken["L2"])
    assert "not a regular file" in str(taken["F3"])
    assert "1 to 4096 arguments" in str(taken["C4"])
    assert os.listdir(ex["private"]) == [], "a stdin copy was left for a refused request"
    # the answer never follows a link planted in the request
    os.symlink(str(secret), os.path.join(exchange, "run.L1", "stdout"))
    thd_answer(exchange, "L1", StudentOutcome(254, b"x", b"y"))
    assert secret.read_text() == "host file"
    thd_answer(exchange, "L2", StudentOutcome(254))
    assert os.listdir(str(elsewhere)) == []


def test_requests_are_taken_a_few_at_a_time(ex: Dict[str, str]) -> None:
    for i in range(MAX_QUEUED + 3):
        _request(ex["exchange"], f"Q{i:02d}")
    first = thd_take(ex["exchange"], ex["private"], new_job())
    assert len(first) == MAX_QUEUED
    assert len(thd_take(ex["exchange"], ex["private"], new_job())) == 3


def test_run_student_helper_misuse(tmp_path: Any) -> None:
    """The helper fails with 254 and a reason, outside a job or with bad options."""
    helper = os.path.join(helpers_dir(), "run_student")
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run(["sh", helper, "true"], env=env, capture_output=True, timeout=10)
    assert (r.returncode, b"not available here" in r.stderr) == (254, True)
    r = subprocess.run(["sh", helper, "--memory", "-3", "true"], env=env, capture_output=True, timeout=10)
    assert r.returncode == 254 and b"--memory takes a positive number" in r.stderr
    r = subprocess.run(["sh", helper], env=env, capture_output=True, timeout=10)
    assert r.returncode == 254 and b"usage: run_student" in r.stderr


def test_both_launchers_provide_the_interface_through_their_shared_base() -> None:
    from zope.interface.verify import verifyObject

    from inginious_tx.agent.run_student import IStudentLauncher
    from inginious_tx.agent.run_student_docker import DockerStudentLauncher
    from inginious_tx.agent.run_student_local import LocalStudentLauncher

    local = LocalStudentLauncher(None, None, None)
    docker = DockerStudentLauncher(None, None, None, "image", "/job")  # type: ignore[arg-type]
    for launcher in (local, docker):
        assert verifyObject(IStudentLauncher, launcher)
        # nothing launched: stop() fires at once
        assert launcher.stop().called
