"""Helper mode (images without INGInious' program) does what INGInious does
where a task can tell: the run file is found as INGInious finds it (``run``,
``run.py``, ``run.py3``, ``run.sh``, then the course's ``$common``), the
course's ``$common`` is at ``/course/common`` (read-only), the grader runs in
``/task`` with ``HOME=/task`` (Docker), a reported result always comes with
an archive, and the output comes back only for debug jobs.

Real local agent (child processes) and real Docker agent (busybox image).
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path
from typing import Any, Dict, List

import pytest
import pytest_twisted
from docker_support import TEST_IMAGE, assert_left_clean, new_job, require_docker
from host_tools import require_program
from inginious_image_support import require_shared

from inginious_tx.agent.job_folder import TaskError, find_run_file, prepare_job, remove_job
from inginious_tx.agent.local import LocalBackend
from inginious_tx.agent.result import AgentConfig, JobResult

#: A grader that says where it runs and what it sees of the course's common folder.
PROBE = """\
data=$(cat "$INGINIOUS_COMMON/data" 2>&1)
if touch "$INGINIOUS_COMMON/written" 2>/dev/null; then ro=writable; else ro=read-only; fi
feedback-msg -m "cwd=$(pwd) home=$HOME common=$INGINIOUS_COMMON data=$data $ro"
echo probe-output
feedback-result success
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture
def tasks(tmp_path: Path) -> Path:
    """Course ``c``: tasks with each kind of run file, and a ``$common`` with a run file and data."""
    root = tmp_path / "tasks"
    _write(root / "c" / "$common" / "run", "#!/bin/sh\n" + PROBE, 0o644)  # not executable: made so
    _write(root / "c" / "$common" / "data", "shared-data")
    (root / "c" / "uses-common").mkdir(parents=True)
    # no shebang, not executable: run with sh (bash where the image has it)
    _write(root / "c" / "shell" / "run.sh", 'feedback-msg -m "run.sh in $(pwd)"\nfeedback-result success\n')
    _write(root / "c" / "py" / "run.py", PY_RUN)
    _write(root / "c" / "py" / "run.sh", "feedback-result failed\n")  # run.py comes first
    _write(root / "c" / "both" / "run", "#!/bin/sh\nfeedback-result success\n", 0o755)
    _write(root / "c" / "both" / "run.py", "raise SystemExit(1)\n")
    _write(root / "other" / "none" / "readme", "no run file here\n")
    return root


PY_RUN = """\
import os, subprocess
subprocess.run(["feedback-msg", "-m", "run.py as " + os.path.basename(__file__)], check=True)
subprocess.run(["feedback-result", "success"], check=True)
"""


@pytest.mark.parametrize(
    "task, found",
    [
        ("uses-common", ("common", "run")),
        ("shell", ("task", "run.sh")),
        ("py", ("task", "run.py")),
        ("both", ("task", "run")),
    ],
)
def test_run_file_order(tasks: Path, task: str, found: Any) -> None:
    common = tasks / "c" / "$common"
    assert find_run_file(str(tasks / "c" / task), str(common)) == found


def test_no_run_file_anywhere_is_a_task_error(tasks: Path, tmp_path: Path) -> None:
    assert find_run_file(str(tasks / "other" / "none"), None) is None
    with pytest.raises(TaskError, match="has no 'run' file .*run.py.*\\$common"):
        prepare_job(str(tasks), new_job("other", "none"), str(tmp_path / "work"))
    assert not (tmp_path / "work").exists(), "nothing is made for a task that cannot run"


def test_common_is_copied_and_its_run_made_executable(tasks: Path, tmp_path: Path) -> None:
    folder = prepare_job(str(tasks), new_job("c", "uses-common"), str(tmp_path / "work"))
    try:
        assert folder.run_file == ("common", "run")
        assert open(os.path.join(folder.common_dir, "data")).read() == "shared-data"
        assert os.access(os.path.join(folder.common_dir, "run"), os.X_OK)
        assert folder.command == ["/bin/sh", "-c", 'exec "$INGINIOUS_COMMON/run"']
        assert folder.env()["INGINIOUS_COMMON"] == folder.common_dir
    finally:
        remove_job(folder)


# -- the local agent ---------------------------------------------------------


@pytest.fixture
def local(tasks: Path, tmp_path: Path, closers: List[Any]) -> LocalBackend:
    from twisted.internet import reactor

    backend = LocalBackend(reactor, AgentConfig(tasks_dir=str(tasks), options={"work_dir": str(tmp_path / "lw")}))
    closers.append(backend.close)
    return backend


async def _local(backend: LocalBackend, task: str, within: Any, debug: bool = False) -> JobResult:
    result = await within(backend.run(new_job("c", task, debug=debug)), 30)
    assert isinstance(result, JobResult)
    return result


@pytest_twisted.ensureDeferred
async def test_local_agent_runs_each_kind_of_run_file(local: LocalBackend, tasks: Path, within: Any) -> None:
    require_program("python3")
    common = await _local(local, "uses-common", within, debug=True)
    assert common.result == "success", common
    text = dict(part.split("=", 1) for part in common.text.split(" ")[:-1])
    assert text["data"] == "shared-data" and text["common"].endswith("/common")
    assert text["cwd"] == text["home"] and text["cwd"].endswith("/task")
    assert common.stdout == "probe-output\n"
    assert not (tasks / "c" / "$common" / "written").exists(), "the course's own folder is never written"
    shell = await _local(local, "shell", within)
    assert (shell.result, shell.text.split(" in ")[0]) == ("success", "run.sh"), shell
    assert shell.stdout == "", "not a debug job: no output back"
    py = await _local(local, "py", within)
    assert (py.result, py.text) == ("success", "run.py as run.py"), py
    both = await _local(local, "both", within)
    assert both.result == "success", both
    # a result always comes with an archive: here the empty archive/ folder alone
    with tarfile.open(fileobj=io.BytesIO(both.archive or b""), mode="r:gz") as tar:
        assert tar.getnames() == [""]


# -- the Docker agent --------------------------------------------------------


@pytest.fixture
def docker_backend(tasks: Path, tmp_path: Path) -> Any:
    require_docker()
    from twisted.internet import reactor

    from inginious_tx.agent.docker import DockerBackend

    work = str(tmp_path / "dw")
    options: Dict[str, Any] = {"work_dir": work, "pids_limit": 64, "poll_interval": 0.2}
    backend = DockerBackend(
        reactor, AgentConfig(tasks_dir=str(tasks), environments=[f"default={TEST_IMAGE}"], options=options)
    )
    yield backend
    pytest_twisted.blockon(backend.close())
    assert_left_clean(backend.instance_id, work)


@pytest_twisted.ensureDeferred
async def test_docker_agent_as_inginious(docker_backend: Any, within: Any) -> None:
    common = await within(docker_backend.run(new_job("c", "uses-common")), 60)
    assert common.result == "success", common
    assert common.text == "cwd=/task home=/task common=/course/common data=shared-data read-only"
    assert (common.stdout, common.stderr) == ("", "")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(common.archive)), mode="r:") as tar:
        assert tar.getnames() == [""]
    shell = await within(docker_backend.run(new_job("c", "shell", debug=True)), 60)
    assert (shell.result, shell.text) == ("success", "run.sh in /task"), shell


# -- INGInious' own tasks (shared/inginious-0.9.2/tasks) on the local agent ---

ABS_RIGHT = "    if x < 0:\n        return -x\n    return x"
ABS_WRONG = "    return x"


@pytest_twisted.ensureDeferred
async def test_inginious_tasks_in_helper_mode(tmp_path: Path, closers: List[Any], within: Any) -> None:
    """Tasks written for INGInious that need none of its image's program: its ``$common/run``,
    a ``run.sh``, ``parsetemplate``'s prefix form with ``run_student``, a plain ``run``."""
    require_program("bash")
    require_program("python3")
    import shutil

    from twisted.internet import reactor

    shared = require_shared("inginious-0.9.2", "tasks")
    tasks = tmp_path / "tasks"
    shutil.copytree(shared, tasks, symlinks=True)
    backend = LocalBackend(reactor, AgentConfig(tasks_dir=str(tasks), options={"work_dir": str(tmp_path / "w")}))
    closers.append(backend.close)

    async def grade(task: str, inputdata: Dict[str, Any]) -> JobResult:
        result = await within(backend.run(new_job("ingi", task, inputdata=inputdata)), 60)
        assert isinstance(result, JobResult)
        return result

    common = await grade("common_run", {"q": "x"})
    assert (common.result, common.text) == ("success", "graded by the course's common run file for task task")
    assert [(await grade("runsh", {"answer": a})).result for a in ("42", "41")] == ["success", "failed"]
    right = await grade("parsetemplate", {"studentcode": ABS_RIGHT})
    assert (right.result, right.text) == ("success", "Your code is correct"), right
    wrong = await grade("parsetemplate", {"studentcode": ABS_WRONG})
    assert (wrong.result, wrong.text) == ("failed", "Your code is not correct"), wrong
    assert (await grade("hello", {"q": "x"})).result == "success"
