"""``parsetemplate``: the student's input in a template, under busybox sh, dash and bash."""

from __future__ import annotations

import os
from typing import Any

import pytest
from test_task_contract import SHELLS, helper, make_job

from inginious_tx.agent.task import JobFolder, prepare_job, remove_job

TEMPLATE = """\
def f():
    @@code@@
x = "@@one@@" + "@@part:sub@@"  # @@ not a key @@, @@@@, @@x y@@
\t\t@@code@@
"""


@pytest.fixture
def folder(tmp_path: Any) -> Any:
    task = tmp_path / "tasks" / "c" / "t"
    task.mkdir(parents=True)
    (task / "run").write_text("#!/bin/sh\n")
    inputdata = {"code": "a = 1\nif a:\n    return a", "one": "ONE", "part": {"sub": "S"}}
    f = prepare_job(str(tmp_path / "tasks"), make_job("c", "t", inputdata), str(tmp_path / "work"))
    yield f
    remove_job(f)


@pytest.mark.parametrize("shell_name", sorted(SHELLS))
def test_parsetemplate(folder: JobFolder, tmp_path: Any, shell_name: str) -> None:
    shell, path = SHELLS[shell_name](tmp_path)
    tpl = os.path.join(folder.student_dir, "t.py")
    with open(tpl, "w") as f:
        f.write(TEMPLATE)
    os.chmod(tpl, 0o751)
    expected = (
        "def f():\n    a = 1\n    if a:\n        return a\n"
        'x = "ONE" + "S"  # @@ not a key @@, @@@@, @@x y@@\n'
        "\t\ta = 1\n\t\tif a:\n\t\t    return a\n"
    )
    # -o OUTPUT: the template is left alone
    r = helper(folder, shell, path, "parsetemplate", "-o", "student/out.py", "student/t.py")
    assert r.returncode == 0, r.stderr
    with open(os.path.join(folder.student_dir, "out.py")) as f:
        assert f.read() == expected
    with open(tpl) as f:
        assert f.read() == TEMPLATE
    # in place: the file keeps its mode
    r = helper(folder, shell, path, "parsetemplate", "student/t.py")
    assert r.returncode == 0, r.stderr
    with open(tpl) as f:
        assert f.read() == expected
    assert os.stat(tpl).st_mode & 0o777 == 0o751
    assert sorted(os.listdir(folder.student_dir)) == ["out.py", "t.py"], "a temporary file was left"


@pytest.mark.parametrize("shell_name", sorted(SHELLS))
def test_parsetemplate_errors(folder: JobFolder, tmp_path: Any, shell_name: str) -> None:
    shell, path = SHELLS[shell_name](tmp_path)
    tpl = os.path.join(folder.student_dir, "t")
    with open(tpl, "w") as f:
        f.write("ok\n@@missing@@\n")
    r = helper(folder, shell, path, "parsetemplate", "student/t")
    assert r.returncode != 0
    assert b"no input named missing (template line 2)" in r.stderr
    with open(tpl) as f:
        assert f.read() == "ok\n@@missing@@\n", "a failed fill must not touch the template"
    assert os.listdir(folder.student_dir) == ["t"]
    r = helper(folder, shell, path, "parsetemplate", "student/absent")
    assert r.returncode == 2 and b"no template file" in r.stderr
    r = helper(folder, shell, path, "parsetemplate")
    assert r.returncode == 2 and b"usage: parsetemplate" in r.stderr
