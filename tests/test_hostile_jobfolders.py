"""Hostile-peer suite, job folders (issue 16): a grader swaps ``task/student`` for a link, a job floods its output.

Real parts: the real Docker and local agent backends behind a real :class:`Agent`
and backend over TCP, real Docker (runc; (a) and (d) under gVisor too).

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
from docker_support import TEST_IMAGE, containers_labelled, remove_containers, until_left_clean
from test_agent_docker_runtimes import require_runtime
from test_hostile_agents import _grader, _job_mounts, _local_grader_backend, _reactor, _root_only
from twisted.internet import threads

from inginious_tx.agent.docker import LABEL_AGENT, DockerBackend
from inginious_tx.agent.limits import JobMaxima
from inginious_tx.agent.result import AgentConfig

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
    # (d) SIZE bytes of 50-byte lines on each of stdout and stderr
    "flood": """\
size=$(getinput size)
echo FIRST-OUT; echo FIRST-ERR >&2
line=$(printf '%046d' 0)
yes "out$line" | head -c "$size"
yes "err$line" | head -c "$size" >&2
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


def _docker(tasks_dir: str, work: str, closers: list, runtime: str = "runc") -> Any:
    _root_only()  # the agent binds what it checked: root, as in production
    require_runtime(runtime)
    env = f"default={TEST_IMAGE},runtime={runtime}"
    backend = DockerBackend(_reactor(), AgentConfig(tasks_dir, [env], 2, {"work_dir": work, "poll_interval": 0.2}))
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


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
@pytest_twisted.ensureDeferred
async def test_docker_run_student_link_to_the_hosts_root_is_refused(
    runtime: str, tasks_dir: str, tmp_path: Path, closers: list, until: Any, within: Any
) -> None:
    """(a) task/student -> / : the engine mounts nothing of the host; the call answers 254 and says why."""
    tag = f"itx-pwn-{uuid.uuid4().hex}"
    closers.append(lambda: os.path.lexists(f"/tmp/{tag}") and os.unlink(f"/tmp/{tag}"))
    work = str(tmp_path / "work")
    backend = _docker(tasks_dir, work, closers, runtime)
    client = await _grader(closers, within, until, backend, JobMaxima())
    result = await within(client.new_job("hostile", "pwn", {"tag": tag}), 90)
    assert not os.path.lexists(f"/tmp/{tag}"), "run_student wrote on the host through the grader's link"
    assert result.result == "success", result
    fields = _fields(result.text)
    assert fields["rc"] == "254" and "TOUCHED" not in result.text, result.text
    assert "not a folder of the job" in result.text, result.text
    assert fields["again"] == "fine", result.text  # the agent and the job's run_student go on
    # (but the folders of containers made ahead for the next jobs, empty)
    await until_left_clean(work, backend.instance_id)


async def _victim_and_thief(client: Any, work: str, until: Any, within: Any, secret: str) -> Any:
    victim = client.new_job("hostile", "victim", {"secret": secret})
    roots: List[str] = []

    def started() -> bool:
        names = os.listdir(work) if os.path.isdir(work) else []
        # the victim's (folders made ahead for containers of the pool have no started mark)
        roots[:] = [os.path.join(work, n) for n in names if os.path.exists(os.path.join(work, n, "tmp", "started"))]
        return len(roots) == 1

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


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
@pytest_twisted.ensureDeferred
async def test_docker_output_flood_is_cut_in_the_job_not_by_the_engine(
    runtime: str, tasks_dir: str, tmp_path: Path, closers: list, until: Any, within: Any
) -> None:
    """(d) 2 x 100 MB of 50-byte lines: dockerd spends < 2 CPU-s on it (7 s before; the bound
    leaves room for the engine's other work meanwhile), and the job's stdout/stderr keep their
    first bytes, the cut marked.  Under gVisor (slower pipes) 2 x 10 MB, for the output only."""
    cpu = _dockerd_cpu()
    backend = _docker(tasks_dir, str(tmp_path / "work"), closers, runtime)
    client = await _grader(closers, within, until, backend, JobMaxima())
    size = 100_000_000 if runtime == "runc" else 10_000_000
    before = cpu()
    result = await within(client.new_job("hostile", "flood", {"size": str(size)}, debug=True), 240)
    spent = cpu() - before
    print(f"dockerd CPU for the job's 2 x {size} bytes of output ({runtime}): {spent:.2f} s")
    assert result.result == "success", result
    out, err = result.stdout or "", result.stderr or ""
    assert out.startswith("FIRST-OUT\nout000") and err.startswith("FIRST-ERR\nerr000"), (out[:50], err[:50])
    assert "[output cut at" in out[-100:] and "[output cut at" in err[-100:], (out[-100:], err[-100:])
    # what the job could open to write to the engine directly, PID 1's output: /dev/null (or
    # its FIFOs while the shell waits on the command), never the engine's pipe
    held = result.text.strip().split("=", 1)[1].split(",")
    assert all(t == "/dev/null" or t.startswith("/job/.output/pipe/") for t in held), result.text
    if runtime == "runc":
        assert spent < 2.0, f"dockerd spent {spent:.2f} CPU-s on the job's 200 MB of output"


# -- the pieces, without Docker ---------------------------------------------------------


def _folder(tmp_path: Path) -> Any:
    from inginious_tx.agent.job_folder import JobFolder

    root = tmp_path / "job"
    (root / "task" / "student").mkdir(parents=True)
    (root / "task" / "student" / "prog").write_text("x")
    Path(str(root) + ".stdin").mkdir(mode=0o700)
    return JobFolder(str(root), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "o_nofollow"])
def test_open_job_dir_refuses_links_files_and_dotdot(openat2: bool, tmp_path: Path, monkeypatch: Any) -> None:
    from inginious_tx.agent import _beneath

    monkeypatch.setattr(_beneath, "_has_openat2", None if openat2 else False)
    folder = _folder(tmp_path)
    fd = _beneath.open_job_dir(folder.root, "task/student")
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(folder.student_dir))
    finally:
        os.close(fd)
    student = Path(folder.student_dir)
    student.rename(student.with_name("orig"))
    for target in ("/", str(tmp_path)):  # a link, absolute or to another folder
        student.symlink_to(target)
        with pytest.raises(_beneath.PathEscape, match="not a folder of the job"):
            _beneath.open_job_dir(folder.root, "task/student")
        student.unlink()
    student.write_text("a file")
    with pytest.raises(_beneath.PathEscape):
        _beneath.open_job_dir(folder.root, "task/student")
    student.unlink()
    Path(folder.task_dir).rename(Path(folder.root, "t2"))
    Path(folder.task_dir).symlink_to("t2")  # a link higher up
    with pytest.raises(_beneath.PathEscape):
        _beneath.open_job_dir(folder.root, "task/orig")
    with pytest.raises(_beneath.PathEscape, match="not a path beneath"):
        _beneath.open_job_dir(folder.root, "../job/t2")


def test_stage_without_mount_moves_the_checked_folder_and_back(tmp_path: Path, monkeypatch: Any) -> None:
    """An agent that cannot mount (not root) moves task/student beside the job folder for the
    engine, and back; a link there is refused and left where it was."""
    from inginious_tx.agent import run_student_docker as rsd
    from inginious_tx.agent._beneath import PathEscape

    monkeypatch.setattr(rsd, "can_mount", lambda: False)
    folder = _folder(tmp_path)
    staged = rsd.thd_stage_student(folder, "r1")
    assert staged == (os.path.join(folder.root + ".stdin", "student-r1"), False)
    assert Path(staged[0], "prog").read_text() == "x" and not os.path.lexists(folder.student_dir)
    rsd.thd_unstage_student(folder, "r1", staged)
    assert Path(folder.student_dir, "prog").read_text() == "x" and not os.path.lexists(staged[0])
    student = Path(folder.student_dir)
    student.rename(student.with_name("orig"))
    student.symlink_to("/")
    with pytest.raises(PathEscape):
        rsd.thd_stage_student(folder, "r2")
    assert student.is_symlink() and os.listdir(folder.root + ".stdin") == []


def test_stage_as_root_binds_the_checked_folder(tmp_path: Path) -> None:
    """A root agent binds the folder it opened: swapping task/student afterwards changes nothing
    at the staged path, and unstaging leaves no mount."""
    _root_only()
    from inginious_tx.agent import run_student_docker as rsd

    folder = _folder(tmp_path)
    stage, bound = rsd.thd_stage_student(folder, "r1")
    try:
        assert bound and _job_mounts(stage) == [stage]
        student = Path(folder.student_dir)
        student.rename(student.with_name("orig"))
        student.symlink_to("/")
        assert os.listdir(stage) == ["prog"]  # still the job's own folder, not /
    finally:
        rsd.thd_unstage_student(folder, "r1", (stage, bound))
    assert not os.path.lexists(stage) and _job_mounts(str(tmp_path)) == []
