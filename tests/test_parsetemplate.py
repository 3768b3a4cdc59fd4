"""``parsetemplate``: the student's input in a template, under busybox sh, dash and bash,
compared with INGInious 0.9.2's own ``parse_template`` on the same template and input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict

import pytest
from inginious_image_support import require_shared
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
    # as INGInious: @@KEY@@ adds no indentation to the answer's lines (@    @KEY@@ does)
    expected = (
        "def f():\n    a = 1\nif a:\n    return a\n"
        'x = "ONE" + "S"  # @@ not a key @@, @@@@, @@x y@@\n'
        "\t\ta = 1\nif a:\n    return a\n"
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


# -- the same output as INGInious' own parse_template ------------------------

#: (template, input) cases run through both; file inputs are {"filename", "value"}.
CASES = {
    "prefix": ("def abs(x):\n@    @code@@\n\nprint(abs(-1))\n", {"code": "if x < 0:\n    return -x\nreturn x\n"}),
    "plain-keeps-no-indent": ("def f():\n    @@code@@\n", {"code": "a = 1\n    return a"}),
    "prefix-and-suffix": ("@# @code@ #@\nend @@one@@@@one@@\n", {"code": "x\n\ny", "one": "1"}),
    "repeated": ("@> @code@@ and @> @code@@ | @-@code@-@\n", {"code": "a\nb"}),
    "newlines": (
        "[@@crlf@@] [@@cr@@] [@@empty@@] [@@nl@@] [@<@nl@>@]\n",
        {"crlf": "a\r\nb\r\n", "cr": "a\rb", "empty": "", "nl": "\n"},
    ),
    "file-input": ("@@f:filename@@: @  @f:value@@\n", {"f": {"filename": "x.c", "value": "int a;\nint b;\n"}}),
    "not-placeholders": ("mail@host@x@y@ @@ a @@ @@@@ @a@nokey@b@\n", {"x": "X"}),
    "no-final-newline": ("@@code@@", {"code": "a\nb"}),
}


def _inginious_parse(base: str, work: str, template: str, inputdata: Dict[str, Any]) -> str:
    """INGInious 0.9.2's parse_template, run from shared/ on the host's Python (it needs only the stdlib)."""
    data = {}
    for key, value in inputdata.items():
        if isinstance(value, dict):
            path = os.path.join(work, f"__inputfile_{key}")
            with open(path, "wb") as f:
                f.write(value["value"].encode())
            value = {"filename": value["filename"], "value": path}
        data[key] = value
    with open(os.path.join(work, "__inputdata.json"), "w") as f:
        json.dump({"input": data}, f)
    with open(os.path.join(work, "tpl"), "w", newline="") as f:
        f.write(template)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import inginious_container_api as api; api.DEBUG = True\n"
        "from inginious_container_api.input import parse_template; parse_template('tpl', 'out')"
    )
    subprocess.run([sys.executable, "-c", code, base], cwd=work, check=True, timeout=60)
    with open(os.path.join(work, "out"), newline="") as f:
        return f.read()


@pytest.mark.parametrize("case", sorted(CASES))
def test_parsetemplate_as_inginious(case: str, tmp_path: Any) -> None:
    base = require_shared("inginious-0.9.2", "base-containers", "base")
    template, inputdata = CASES[case]
    work = tmp_path / "ingi"
    work.mkdir()
    expected = _inginious_parse(str(base), str(work), template, inputdata)
    task = tmp_path / "tasks" / "c" / "t"
    task.mkdir(parents=True)
    (task / "run").write_text("#!/bin/sh\n")
    folder = prepare_job(str(tmp_path / "tasks"), make_job("c", "t", inputdata), str(tmp_path / "work"))
    try:
        with open(os.path.join(folder.task_dir, "tpl"), "w", newline="") as f:
            f.write(template)
        shell, path = SHELLS["busybox"](tmp_path)
        r = helper(folder, shell, path, "parsetemplate", "-o", "out/filled", "tpl")
        assert r.returncode == 0, r.stderr
        with open(os.path.join(folder.task_dir, "out", "filled"), newline="") as f:
            got = f.read()
    finally:
        remove_job(folder)
    # INGInious writes what the template ends with; awk ends every line with a newline
    assert got == expected if expected.endswith("\n") else got == expected + "\n"


def test_answers_are_not_templates(tmp_path: Any) -> None:
    """Unlike INGInious (which substitutes field after field), a placeholder inside an answer stays as written."""
    task = tmp_path / "tasks" / "c" / "t"
    task.mkdir(parents=True)
    (task / "run").write_text("#!/bin/sh\n")
    inputdata = {"a": "@@b@@", "b": "secret"}
    folder = prepare_job(str(tmp_path / "tasks"), make_job("c", "t", inputdata), str(tmp_path / "work"))
    try:
        with open(os.path.join(folder.task_dir, "tpl"), "w") as f:
            f.write("@@a@@\n")
        shell, path = SHELLS["busybox"](tmp_path)
        r = helper(folder, shell, path, "parsetemplate", "tpl")
        assert r.returncode == 0, r.stderr
        with open(os.path.join(folder.task_dir, "tpl")) as f:
            assert f.read() == "@@b@@\n"
    finally:
        remove_job(folder)


@pytest.mark.parametrize("shell_name", sorted(SHELLS))
def test_large_answer_in_linear_time(tmp_path: Any, shell_name: str) -> None:
    """A 200000-line answer with a prefix is filled line by line (the old helper built it as one growing string)."""
    lines = [f"x{i} = {i}" for i in range(200_000)]
    task = tmp_path / "tasks" / "c" / "t"
    task.mkdir(parents=True)
    (task / "run").write_text("#!/bin/sh\n")
    folder = prepare_job(str(tmp_path / "tasks"), make_job("c", "t", {"code": "\n".join(lines)}), str(tmp_path / "w"))
    try:
        with open(os.path.join(folder.task_dir, "tpl"), "w") as f:
            f.write("def f():\n@    @code@@\n")
        shell, path = SHELLS[shell_name](tmp_path)
        start = time.monotonic()
        r = helper(folder, shell, path, "parsetemplate", "tpl")
        took = time.monotonic() - start
        assert r.returncode == 0, r.stderr
        with open(os.path.join(folder.task_dir, "tpl")) as f:
            got = f.read().split("\n")
    finally:
        remove_job(folder)
    assert got[0] == "def f():" and got[1:-1] == ["    " + line for line in lines] and got[-1] == ""
    print(f"parsetemplate, 200000 lines under {shell_name}: {took:.2f} s")
