"""Hostile-peer suite, job folders (issue 16): a grader swaps ``task/student`` for a link, a job floods its output.

Real parts: the real Docker and local agent backends behind a real :class:`Agent`
and backend over TCP, real Docker (runc).

- (a) a Docker grader replaces ``task/student`` by a link to ``/`` and asks
  run_student to write through it: nothing appears on the host, the call
  answers 254 saying why, the agent goes on;
- (b) a Docker grader points the link at another running job's folder, then
  at its ``task/student``: the victim's input stays unread, its feedback and
  submission untouched (its honest ``failed``/0 stays so);
- (c) the same against the local agent;
- (d) a Docker job writing 2 x 100 MB: the engine (dockerd) spends a bounded
  CPU time on it, and the job's result keeps the first bytes with the cut marked.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import pytest_twisted
from docker_support import containers_labelled, remove_containers
from test_hostile_agents import _docker_backend, _grader, _job_mounts, _local_grader_backend, _root_only
from twisted.internet import threads

from inginious_tx.agent.docker import LABEL_AGENT
from inginious_tx.agent.limits import JobMaxima

TASKS = {
    # (a) the link to / : run_student writes $INGINIOUS_STUDENT/tmp/TAG
    "pwn": """\
tag=$(getinput tag)
cd "$INGINIOUS_TASK" && mv student student.orig && ln -s / student || exit 1
out=$(run_student sh -c 'touch "$INGINIOUS_STUDENT/tmp/$1" && echo TOUCHED' sh "$tag" 2>&1)
rc=$?
rm student && mv student.orig student
again=$(run_student sh -c 'echo fine')
feedback-msg -m "rc=$rc again=$again out=$out"
feedback-result success
""",
    # the victim: an honest failed/0 written at once, then the submission checked after the go
    "victim": """\
echo 0 > "$INGINIOUS_STUDENT/answer"
feedback-result failed
feedback-grade 0
touch "$INGINIOUS_JOB/tmp/started"
while [ ! -e "$INGINIOUS_JOB/tmp/go" ]; do sleep 0.05; done
if [ "$(cat "$INGINIOUS_STUDENT/answer")" = 42 ]; then feedback-result success; feedback-grade 100; fi
""",
    # (b, c) links to the victim's folder, then to its task/student
    "steal": """\
victim=$(getinput victim)
cd "$INGINIOUS_TASK" && mv student student.orig || exit 1
ln -s "$victim" student
out1=$(run_student sh -c 'cat "$INGINIOUS_STUDENT/input.json"; echo success > "$INGINIOUS_STUDENT/feedback/result";
  echo 100 > "$INGINIOUS_STUDENT/feedback/grade"; echo 42 > "$INGINIOUS_STUDENT/task/student/answer"' 2>&1)
rc1=$?
rm student; ln -s "$victim/task/student" student
out2=$(run_student sh -c 'rm -f "$INGINIOUS_STUDENT/answer"; echo 42 > "$INGINIOUS_STUDENT/answer" && echo WROTE' 2>&1)
rc2=$?
feedback-msg -m "rc1=$rc1 rc2=$rc2 out1=$out1 out2=$out2"
feedback-result success
""",
    # (d) 100 MB of 100-byte lines on each of stdout and stderr
    "flood": """\
echo FIRST-OUT; echo FIRST-ERR >&2
line=$(printf '%096d' 0)
yes "out$line" | head -c 100000000
yes "err$line" | head -c 100000000 >&2
feedback-msg -m "pid1=$(readlink /proc/1/fd/1),$(readlink /proc/1/fd/2)"
feedback-result success
""",
}


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: Any) -> str:
    root = tmp_path_factory.mktemp("hostile-folder-tasks")
    for name, body in TASKS.items():
        task = root / "hostile" / name
        task.mkdir(parents=True)
        (task / "run").write_text("#!/bin/sh\n" + body)
        (task / "run").chmod(0o755)
    return str(root)


def _docker(tasks_dir: str, work: str, closers: list) -> Any:
    _root_only()  # the agent binds what it checked: root, as in production
    backend = _docker_backend(tasks_dir, work)
    closers.append(
        lambda: threads.deferToThread(remove_containers, containers_labelled(LABEL_AGENT, backend.instance_id))
    )
    return backend


def _fields(text: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in text.split(" "):
        key, sep, value = item.partition("=")
        if sep and key.isidentifier():
            out[key] = value
    return out


@pytest_twisted.ensureDeferred
async def test_docker_run_student_link_to_the_hosts_root_is_refused(
    tasks_dir: str, tmp_path: Path, closers: list, until: Any, within: Any
) -> None:
    """(a) task/student -> / : the engine mounts nothing of the host; the call answers 254 and says why."""
    tag = f"itx-pwn-{uuid.uuid4().hex}"
    closers.append(lambda: os.path.lexists(f"/tmp/{tag}") and os.unlink(f"/tmp/{tag}"))
    work = str(tmp_path / "work")
    client = await _grader(closers, within, until, _docker(tasks_dir, work, closers), JobMaxima())
    result = await within(client.new_job("hostile", "pwn", {"tag": tag}), 90)
    assert not os.path.lexists(f"/tmp/{tag}"), "run_student wrote on the host through the grader's link"
    assert result.result == "success", result
    fields = _fields(result.text)
    assert fields["rc"] == "254" and "TOUCHED" not in result.text, result.text
    assert "not a folder of the job" in result.text, result.text
    assert fields["again"] == "fine", result.text  # the agent and the job's run_student go on
    await until(lambda: os.listdir(work) == [] and _job_mounts(work) == [], 20, "the job folders to go")


async def _victim_and_thief(
    client: Any, work: str, until: Any, within: Any, secret: str
) -> Any:
    victim = client.new_job("hostile", "victim", {"secret": secret})
    roots: List[str] = []

    def started() -> bool:
        names = os.listdir(work) if os.path.isdir(work) else []
        roots[:] = [os.path.join(work, n) for n in names if not n.endswith(".stdin")]
        return len(roots) == 1 and os.path.exists(os.path.join(roots[0], "tmp", "started"))

    await until(started, 60, "the victim job to run")
    try:
        thief = await within(client.new_job("hostile", "steal", {"victim": roots[0]}), 90)
    finally:
        Path(roots[0], "tmp", "go").touch()
    return thief, await within(victim, 60)


def _check_untouched(thief: Any, done: Any, secret: str) -> None:
    assert thief.result == "success", thief
    assert secret not in thief.text, "the other job's input was read"
    fields = _fields(thief.text)
    assert (fields["rc1"], fields["rc2"]) == ("254", "254") and "WROTE" not in thief.text, thief.text
    assert (done.result, done.grade) == ("failed", 0.0), done  # the honest verdict, untouched


@pytest_twisted.ensureDeferred
async def test_docker_run_student_link_to_another_job_is_refused(
    tasks_dir: str, tmp_path: Path, closers: list, until: Any, within: Any
) -> None:
    """(b) task/student -> another running job's folder (then its task/student): refused, the victim untouched."""
    work = str(tmp_path / "work")
    client = await _grader(closers, within, until, _docker(tasks_dir, work, closers), JobMaxima())
    secret = f"s3cret-{uuid.uuid4().hex}"
    thief, done = await _victim_and_thief(client, work, until, within, secret)
    _check_untouched(thief, done, secret)


@pytest_twisted.ensureDeferred
async def test_local_run_student_link_to_another_job_is_refused(
    tasks_dir: str, short_tmp: str, closers: list, until: Any, within: Any
) -> None:
    """(c) the same against the local agent: its student sandbox binds only the job's own folder."""
    _root_only()
    work = os.path.join(short_tmp, "work")
    client = await _grader(closers, within, until, _local_grader_backend(tasks_dir, work), JobMaxima())
    secret = f"s3cret-{uuid.uuid4().hex}"
    thief, done = await _victim_and_thief(client, work, until, within, secret)
    _check_untouched(thief, done, secret)
    assert "not a folder of the job" in thief.text, thief.text


def _dockerd_cpu() -> Callable[[], float]:
    """CPU seconds (user + system) used so far by the engine process (from /proc/PID/stat)."""
    pids = [p for p in os.listdir("/proc") if p.isdigit() and _comm(p) == "dockerd"]
    if len(pids) != 1:
        pytest.skip(f"cannot tell the engine's process ({len(pids)} dockerd processes seen)")
    tick = os.sysconf("SC_CLK_TCK")

    def used() -> float:
        with open(f"/proc/{pids[0]}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    return used


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


@pytest_twisted.ensureDeferred
async def test_docker_output_flood_is_cut_in_the_job_not_by_the_engine(
    tasks_dir: str, tmp_path: Path, closers: list, until: Any, within: Any
) -> None:
    """(d) 2 x 100 MB of output: dockerd spends < 1 CPU-s on it (it spent minutes before),
    and the job's stdout/stderr keep their first bytes, the cut marked."""
    cpu = _dockerd_cpu()
    client = await _grader(closers, within, until, _docker(tasks_dir, str(tmp_path / "work"), closers), JobMaxima())
    before = cpu()
    result = await within(client.new_job("hostile", "flood", {}), 240)
    spent = cpu() - before
    assert result.result == "success", result
    # what the job could open to write to the engine directly (PID 1's output): nothing
    assert result.text.strip() == "pid1=/dev/null,/dev/null", result.text
    assert spent < 1.0, f"dockerd spent {spent:.2f} CPU-s on the job's 200 MB of output"
    out, err = result.stdout or "", result.stderr or ""
    print(f"dockerd CPU for the job's 2 x 100 MB of output: {spent:.2f} s")
    assert out.startswith("FIRST-OUT\nout000") and err.startswith("FIRST-ERR\nerr000"), (out[:50], err[:50])
    assert "cut" in out[-200:] and "cut" in err[-200:], (out[-200:], err[-200:])
