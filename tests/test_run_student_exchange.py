"""run_student's exchange folder, as a hostile grader may fill it: the agent reads and writes nothing else."""

from __future__ import annotations

import os
import subprocess
from typing import Any, Dict

import pytest
import pytest_twisted
from docker_support import TEST_IMAGE, make_task, new_job

from inginious_tx.agent.job_folder import helpers_dir
from inginious_tx.agent.run_student import (
    MAX_MEMORY_MB,
    MAX_QUEUED,
    MAX_STDIN,
    MAX_STDIN_TOTAL,
    MAX_TIME,
    RequestError,
    StudentOutcome,
    StudentRequest,
    limits_for,
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


def test_bad_fields_are_refused_and_the_batch_is_read_whole(ex: Dict[str, str]) -> None:
    """memory=inf (and other non-finite or out-of-range values) is refused; its neighbours are still read."""
    job = new_job(time_limit=10, hard_time_limit=20, mem_limit=100)
    exchange = ex["exchange"]
    _request(exchange, "B1", stdin=b"x" * (1 << 20))
    _request(exchange, "B2", memory="inf")
    _request(exchange, "B3", time="nan")
    _request(exchange, "B4", hard_time="1e400")
    _request(exchange, "B5", memory=str(MAX_MEMORY_MB * 2))
    _request(exchange, "B6", time=str(MAX_TIME * 2))
    taken = dict(thd_take(exchange, ex["private"], job, limit=10))
    assert set(taken) == {"B1", "B2", "B3", "B4", "B5", "B6"}
    assert isinstance(taken["B1"], StudentRequest) and taken["B1"].stdin_size == 1 << 20
    for rid, field in (("B2", "memory"), ("B3", "time"), ("B4", "hard_time"), ("B5", "memory"), ("B6", "time")):
        assert isinstance(taken[rid], RequestError) and f"invalid {field}" in str(taken[rid]), taken[rid]
    assert os.listdir(ex["private"]) == [os.path.basename(taken["B1"].stdin_path)]
    with pytest.raises(RequestError, match="invalid memory"):
        limits_for(job, None, None, float("inf"))


def test_the_copies_of_a_job_are_bounded_in_bytes(ex: Dict[str, str]) -> None:
    """Copies of standard input beyond the job's budget are refused, not written."""
    job = new_job()
    for i in range(3):
        _request(ex["exchange"], f"S{i}", stdin=b"z" * MAX_STDIN)
    taken = thd_take(ex["exchange"], ex["private"], job)
    kinds = [type(item).__name__ for _, item in taken]
    assert kinds == ["StudentRequest", "StudentRequest", "RequestError"], kinds
    assert "too much standard input" in str(taken[2][1])
    held = sum(os.path.getsize(os.path.join(ex["private"], n)) for n in os.listdir(ex["private"]))
    assert held == 2 * MAX_STDIN <= MAX_STDIN_TOTAL
    # a smaller budget (copies already held by the job): refused at once
    _request(ex["exchange"], "S9", stdin=b"z" * 10)
    [(_, item)] = thd_take(ex["exchange"], ex["private"], job, stdin_budget=5)
    assert isinstance(item, RequestError) and "too much standard input" in str(item)


def test_an_unexpected_failure_is_that_request_s_answer_only(ex: Dict[str, str], monkeypatch: Any) -> None:
    """An exception inside the reading of one request does not lose the others (nor their copies)."""
    import inginious_tx.agent.run_student as rs

    real = rs.limits_for

    def flaky(job: Any, cpu: Any, hard: Any, memory: Any) -> Any:
        if memory == 7:
            raise OverflowError("boom")
        return real(job, cpu, hard, memory)

    monkeypatch.setattr(rs, "limits_for", flaky)
    _request(ex["exchange"], "U1")
    _request(ex["exchange"], "U2", memory="7")
    _request(ex["exchange"], "U3")
    taken = dict(thd_take(ex["exchange"], ex["private"], new_job()))
    assert isinstance(taken["U1"], StudentRequest) and isinstance(taken["U3"], StudentRequest)
    assert isinstance(taken["U2"], RequestError) and isinstance(taken["U2"].unexpected, OverflowError)
    assert "could not read the request" in str(taken["U2"])


# A grader forging requests as the audit's reproducer did: a 16 MiB standard input, then memory=inf, in one batch,
# again and again; it waits for each answer (the agent must give them all) and reports what it got.
FORGER = r"""
B=$INGINIOUS_RUN_STUDENT
wait_done() { n=0; while [ ! -f "$B/done.$1/exit" ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n + 1)); done; }
codes=""
i=0
while [ $i -lt 6 ]; do
  for n in a$i b$i; do
    d=$B/req.$n; mkdir $d
    if [ ${n#a} != $n ]; then
      printf 'sh' > $d/arg.0; printf -- '-c' > $d/arg.1; printf 'wc -c' > $d/arg.2
      printf "argc=3\nmemory=\ncwd=/job/task/student\n" > $d/options
      dd if=/dev/zero of=$d/stdin bs=1048576 count=16 2>/dev/null
    else
      printf 'true' > $d/arg.0; printf "argc=1\nmemory=inf\ncwd=/job/task\n" > $d/options; : > $d/stdin
    fi
  done
  mv $B/req.a$i $B/ready.a$i; mv $B/req.b$i $B/ready.b$i
  wait_done a$i; wait_done b$i
  codes="$codes $(cat $B/done.a$i/exit 2>/dev/null || echo none):$(tr -d ' \n' < $B/done.a$i/stdout 2>/dev/null)"
  codes="$codes $(cat $B/done.b$i/exit 2>/dev/null || echo none)"
  feedback-custom why "$(cat $B/done.b$i/stderr 2>/dev/null)"
  rm -rf $B/done.a$i $B/done.b$i $B/run.a$i $B/run.b$i
  i=$((i + 1))
done
feedback-custom codes "$codes"
feedback-custom legit "$(printf 'hello' | run_student sh -c 'tr a-z A-Z')"
feedback-result success
"""


@pytest.mark.docker
@pytest.mark.parametrize("kind", ["docker", "local"])
@pytest_twisted.ensureDeferred
async def test_forged_requests_cannot_grow_the_agent_s_disk(tmp_path: Any, kind: str) -> None:
    """Real agent, real grader: every forged request is answered, the copies stay within the bound."""
    from test_agent_docker_runtimes import require_runtime
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    from inginious_tx.agent.docker import DockerBackend
    from inginious_tx.agent.local import LocalBackend
    from inginious_tx.agent.result import AgentConfig

    tasks = str(tmp_path / "tasks")
    make_task(tasks, "rs", "forge", FORGER)
    work = str(tmp_path / "work")
    backend: Any
    if kind == "local":
        if os.geteuid() != 0:
            pytest.skip("run_student under the local backend is tested as root (a separate student user)")
        backend = LocalBackend(reactor, AgentConfig(tasks, ["default"], 2, {"work_dir": work}))
    else:
        require_runtime("runc")
        opts: Dict[str, Any] = {"work_dir": work, "poll_interval": 0.2}
        backend = DockerBackend(reactor, AgentConfig(tasks, [f"default={TEST_IMAGE},runtime=runc"], 2, opts))
    peak = [0]

    def sample() -> None:
        total = 0
        for d in os.listdir(work) if os.path.isdir(work) else []:
            if d.endswith(".stdin"):
                for e in os.scandir(os.path.join(work, d)):
                    if e.name.startswith("stdin-"):
                        total += e.stat(follow_symlinks=False).st_size
        peak[0] = max(peak[0], total)

    sampler = LoopingCall(sample)
    sampler.clock = reactor
    sampler.start(0.02)
    try:
        job = new_job("rs", "forge", time_limit=60, hard_time_limit=120, mem_limit=512)
        result = await backend.run(job).addTimeout(150, reactor)
    finally:
        sampler.stop()
        await backend.close()
    assert result.result == "success", result
    assert result.custom["codes"].split() == ["0:16777216", "254"] * 6, result.custom
    assert "invalid memory 'inf'" in result.custom["why"], result.custom
    assert result.custom["legit"] == "HELLO"
    assert 0 < peak[0] <= MAX_STDIN_TOTAL, peak[0]
    assert not os.path.exists(work) or os.listdir(work) == [], "a job folder was left behind"
