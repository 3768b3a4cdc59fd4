"""MCQ tasks and submissions for the mcq agent tests (unit and interoperability).

:func:`write_courses` writes the courses as INGInious 0.9.2 reads them
(``course.yaml``, ``TASK/task.yaml``, gettext catalogs in ``$i18n``);
:data:`CASES` are the submissions, with input as the 0.9.2 frontend builds
it (its ``@`` keys, a string per single-choice or match answer, a list of
strings for ``multiple: true``), plus odd inputs and hand-made problems
(``"problems"``: what a client could send that the frontend would refuse).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any, Dict, List, Optional

#: INGInious' own MCQ test course (also in the package, frontend/tests/tasks).
SHARED_COURSE = Path("/work/shared/inginious-0.9.2/tasks-mcq/test")


def mo_bytes(catalog: Dict[str, str]) -> bytes:
    """A GNU gettext ``.mo`` file for ``catalog`` (msgid -> msgstr), UTF-8."""
    entries = {"": "Content-Type: text/plain; charset=UTF-8\n", **catalog}
    ids = sorted(entries)
    keys = [k.encode() for k in ids]
    values = [entries[k].encode() for k in ids]
    header = 7 * 4
    table = header + 16 * len(ids)
    data = b""
    offsets = []
    for blob in keys + values:
        offsets.append((len(blob), table + len(data)))
        data += blob + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, len(ids), header, header + 8 * len(ids), 0, 0)
    for length, offset in offsets:
        out += struct.pack("<2I", length, offset)
    return out + data


def _form(answers: Dict[str, Any], lang: Any = "en", state: Any = "", random: Optional[List[float]] = None) -> Dict:
    """The input the 0.9.2 frontend sends: the answers and its @ keys."""
    return {
        **answers,
        "@username": "student",
        "@email": "student@example.org",
        "@lang": lang,
        "@time": "2026-12-04 20:00:00.000000",
        "@attempts": "1",
        "@random": list(random or []),
        "@state": state,
    }


_MCQ = {"environment_type": "mcq", "environment_id": "mcq", "author": ["itx"], "context": "MCQ"}

#: course itx: task id -> problems
ITX_TASKS: Dict[str, Dict[str, Any]] = {
    "single": {
        "q": {
            "type": "multiple_choice", "name": "Q", "header": "Pick one",
            "choices": [
                {"text": "A", "valid": True, "feedback": "Good choice!"},
                {"text": "B", "feedback": "Not this one"},
                {"text": "C"},
            ],
            "success_message": "Well done", "error_message": "Try again",
        }
    },
    "single_plain": {"q": {"type": "multiple_choice", "choices": [{"text": "A"}, {"text": "B", "valid": True}]}},
    "multi": {
        "q": {
            "type": "multiple_choice", "multiple": True, "limit": 0,
            "choices": [
                {"text": "A", "valid": True, "feedback": "Good choice!"},
                {"text": "B", "valid": True},
                {"text": "C", "feedback": "Not this one"},
                {"text": "D"},
            ],
        }
    },
    "multi_central": {
        "q": {"type": "multiple_choice", "multiple": True, "centralize": True,
              "choices": [{"text": "A", "valid": True}, {"text": "B"}]}
    },
    "match": {"q": {"type": "match", "answer": 42}},
    "match_central": {"q": {"type": "match", "answer": "x", "centralize": True}},
    "mixed": {
        "q1": {"type": "multiple_choice", "choices": [{"text": "A"}, {"text": "B", "valid": True}]},
        "q2": {"type": "match", "answer": "yes"},
        "q3": {"type": "multiple_choice", "multiple": True,
               "choices": [{"text": "A", "valid": True}, {"text": "B", "valid": True}, {"text": "C"}]},
    },
    "noprob": {},
    "withcode": {"q1": {"type": "match", "answer": "a"}, "q2": {"type": "code", "language": "python", "header": "h"}},
    "empty_feedback": {
        "q": {"type": "multiple_choice", "choices": [{"text": "A", "valid": True, "feedback": ""}, {"text": "B"}]}
    },
    "i18n": {
        "q": {
            "type": "multiple_choice",
            "choices": [
                {"text": "A", "valid": True, "feedback": "Good choice!"},
                {"text": "B", "feedback": "Not this one"},
            ],
            "success_message": "Well done", "error_message": "Try again",
        }
    },
}  # fmt: skip

#: the task catalogs: itx/i18n/$i18n/fr.mo, and the course's itx/$common/$i18n/de.mo
TASK_FR = {
    "Good choice!": "Bon choix !",
    "Not this one": "Pas celle-ci",
    "Try again": "Réessayez",
    "Well done": "Bravo",
}
COMMON_DE = {"Good choice!": "Gute Wahl!", "Try again": "Nochmal"}

#: hand-made problems (the frontend would refuse such a task)
RAW: Dict[str, Dict[str, Any]] = {
    "no_valid": {"q": {"type": "multiple_choice", "choices": [{"text": "A"}, {"text": "B"}]}},
    "bad_limit": {"q": {"type": "multiple_choice", "multiple": True, "limit": 1,
                        "choices": [{"text": "A", "valid": True}, {"text": "B", "valid": True}, {"text": "C"}]}},
    "limit_ok": {"q": {"type": "multiple_choice", "limit": 2,
                       "choices": [{"text": "A", "valid": True}, {"text": "B"}, {"text": "C"}]}},
    "choices_map": {"q": {"type": "multiple_choice", "choices": {"0": {"text": "A", "valid": True}}}},
    "choice_no_text": {"q": {"type": "multiple_choice", "choices": [{"valid": True}]}},
    "match_no_answer": {"q": {"type": "match"}},
    "unknown_type": {"q": {"type": "essay"}},
    "no_type": {"q": {"answer": "a"}},
    "bad_id": {"q 1": {"type": "match", "answer": "a"}},
    "marker_feedback": {"q": {"type": "multiple_choice",
                              "choices": [{"text": "A", "valid": True, "feedback": "_wrong_answer"}]}},
    "float_answer": {"q": {"type": "match", "answer": 1.5}},
    "list_answer": {"q": {"type": "match", "answer": ["a", 1, {"b": [None]}]}},
}  # fmt: skip


def _case(ref: str, answers: Dict[str, Any], task: str = "", problems: Any = None, raw_task: str = "itx/raw",
          **form: Any) -> Dict[str, Any]:  # fmt: skip
    case: Dict[str, Any] = {"ref": ref, "inputdata": _form(answers, **form)}
    if problems is not None:
        case.update(problems=problems, raw_task=raw_task)
    else:
        case["task"] = task
    return case


CASES: List[Dict[str, Any]] = [
    # INGInious' own test course: task1 multiple choice (0 and 1 valid), task2 match, task3 code
    _case("t2-right", {"unittest": "Answer 1"}, "test/task2"),
    _case("t2-spaces", {"unittest": "  Answer 1 \n"}, "test/task2"),
    _case("t2-wrong", {"unittest": "answer 1"}, "test/task2", lang="fr"),
    _case("t2-missing", {}, "test/task2", state="prev-state"),
    _case("t1-right", {"unittest": ["0", "1"]}, "test/task1"),
    _case("t1-extra", {"unittest": ["0", "1", "2"]}, "test/task1"),
    _case("t1-half", {"unittest": ["1"]}, "test/task1", lang="es"),
    _case("t1-none", {"unittest": []}, "test/task1"),
    _case("t1-out-of-range", {"unittest": ["0", "1", "9"]}, "test/task1", state="s3"),
    _case("t1-string", {"unittest": "0"}, "test/task1"),
    _case("t3-code", {"unittest": "print(1)"}, "test/task3", state="code-state"),
    # single choice
    _case("single-right", {"q": "0"}, "itx/single"),
    _case("single-wrong", {"q": "1"}, "itx/single"),
    _case("single-wrong-nofeedback", {"q": "2"}, "itx/single"),
    _case("single-spaces", {"q": " 0 "}, "itx/single"),
    _case("single-int", {"q": 0}, "itx/single"),
    _case("single-out-of-range", {"q": "7"}, "itx/single"),
    _case("single-not-a-number", {"q": "abc"}, "itx/single"),
    _case("single-list", {"q": ["0"]}, "itx/single"),
    _case("single-fr", {"q": "1"}, "itx/single", lang="fr"),
    _case("single-de-common-catalog", {"q": "1"}, "itx/single", lang="de"),
    _case("single-he", {"q": "1"}, "itx/single", lang="he"),
    _case("single-nb", {"q": "1"}, "itx/single", lang="nb_NO"),
    _case("single-unknown-lang", {"q": "1"}, "itx/single", lang="xx"),
    _case("single-no-lang", {"q": "1"}, "itx/single", lang=""),
    _case("plain-wrong", {"q": "0"}, "itx/single_plain", lang="es"),
    _case("plain-right", {"q": "1"}, "itx/single_plain"),
    # multiple choice
    _case("multi-right", {"q": ["0", "1"]}, "itx/multi"),
    _case("multi-right-unordered", {"q": ["1", "0"]}, "itx/multi", lang="fr"),
    _case("multi-with-invalid", {"q": ["1", "0", "2"]}, "itx/multi"),
    _case("multi-half", {"q": ["0"]}, "itx/multi"),
    _case("multi-ints", {"q": [0, 1]}, "itx/multi"),
    _case("multi-duplicates", {"q": ["0", "0", "1"]}, "itx/multi"),
    _case("multi-all-wrong-fr", {"q": ["2", "3"]}, "itx/multi", lang="fr"),
    _case("multi-everything-nb", {"q": ["0", "1", "2", "3"]}, "itx/multi", lang="nb_NO"),
    _case("multi-central-wrong", {"q": ["1"]}, "itx/multi_central"),
    _case("multi-central-right", {"q": ["0"]}, "itx/multi_central"),
    # match
    _case("match-right", {"q": "42"}, "itx/match"),
    _case("match-whitespace", {"q": " 42\t\n"}, "itx/match"),
    _case("match-wrong-he", {"q": "43"}, "itx/match", lang="he"),
    _case("match-int", {"q": 42}, "itx/match", state="int-state"),
    _case("match-central-right", {"q": "x"}, "itx/match_central"),
    _case("match-central-wrong", {"q": "y"}, "itx/match_central"),
    # several problems, @random, @state
    _case("mixed-right", {"q1": "1", "q2": "yes", "q3": ["0", "1"]}, "itx/mixed", random=[0.25, 0.5], state="old"),
    _case("mixed-wrong-de", {"q1": "0", "q2": "no", "q3": ["2"]}, "itx/mixed", lang="de"),
    _case("mixed-one-wrong", {"q1": "1", "q2": " yes ", "q3": ["0"]}, "itx/mixed", random=[0.9]),
    _case("mixed-missing-one", {"q1": "1", "q3": ["0", "1"]}, "itx/mixed", state="keep-me"),
    _case("noprob", {}, "itx/noprob", state="no-problems-state"),
    _case("withcode", {"q1": "a", "q2": "x = 1"}, "itx/withcode", state="with-code"),
    _case("empty-feedback", {"q": "0"}, "itx/empty_feedback"),
    # the task's own catalog
    _case("i18n-fr-wrong", {"q": "1"}, "itx/i18n", lang="fr"),
    _case("i18n-fr-right", {"q": "0"}, "itx/i18n", lang="fr"),
    _case("i18n-de-no-task-catalog", {"q": "1"}, "itx/i18n", lang="de"),
    _case("i18n-en", {"q": "1"}, "itx/i18n"),
    # odd languages
    _case("lang-list", {"q": "0"}, "itx/single", lang=["fr"], state="lang-list"),
    _case("lang-int-course-catalog", {"q": "0"}, "itx/single", lang=5),
    # hand-made problems
    *[
        _case(f"raw-{name}", {"q": "0", "q 1": "a"}, problems=problems, state=f"raw-{name}")
        for name, problems in RAW.items()
    ],
    _case("raw-missing-task", {"q": "a"}, problems={"q": {"type": "match", "answer": "a"}}, raw_task="itx/missing"),
    _case("raw-float-answer", {"q": "1.5"}, problems=RAW["float_answer"]),
    _case("raw-list-answer", {"q": "('a', 1, {'b': (None,)})"}, problems=RAW["list_answer"]),
    # hand-made input: an @lang array where no task catalog folder exists (course test)
    _case("lang-list-no-catalog", {"unittest": "Answer 1"}, "test/task2", lang=["fr"], state="ll"),
    _case("lang-map-no-catalog", {"unittest": "Answer 1"}, "test/task2", lang={"fr": 1}),
    _case("lang-int-no-catalog", {"unittest": "Answer 1"}, "test/task2", lang=5),
    _case("lang-null-no-catalog", {"unittest": "nope"}, "test/task2", lang=None),
    _case("single-bool", {"q": True}, "itx/single_plain"),
    _case("single-float", {"q": 1.9}, "itx/single_plain"),
    _case("multi-bools", {"q": [True, False]}, "itx/multi"),
    _case("multi-map", {"q": {"0": "x", "1": "y"}}, "itx/multi"),
    _case("multi-null", {"q": None}, "itx/multi"),
    _case("multi-float-strings", {"q": ["0", "1.0"]}, "itx/multi"),
    _case("match-null", {"q": None}, "itx/match"),
]


def _inginious_course(package: Optional[Path], dest: Path) -> None:
    """INGInious' test course as an MCQ course: the copy in ``shared/`` if there is
    one, else the package's (``frontend/tests/tasks/test``) moved to ``mcq/mcq``."""
    if SHARED_COURSE.is_dir():
        shutil.copytree(SHARED_COURSE, dest)
        return
    if package is None:
        raise FileNotFoundError(f"neither {SHARED_COURSE} nor the inginious package's test course")
    shutil.copytree(package / "frontend" / "tests" / "tasks" / "test", dest)
    for task in dest.glob("*/task.yaml"):
        text = task.read_text()
        task.write_text(text.replace('environment: "default"', "environment_type: mcq\nenvironment_id: mcq"))


def write_courses(root: Path, package: Optional[Path] = None, inginious_course: bool = True) -> Path:
    """The tasks folder of :data:`CASES` under ``root`` (INGInious' test course, unless
    ``inginious_course`` is false, and ours); ``package``: the ``inginious`` package
    folder, when ``shared/`` is not there."""
    tasks = root / "tasks"
    if inginious_course:
        _inginious_course(package, tasks / "test")
    itx = tasks / "itx"
    itx.mkdir(parents=True)
    (itx / "course.yaml").write_text(json.dumps({"accessible": True, "name": "itx mcq", "admins": ["a"]}))
    for task_id, problems in ITX_TASKS.items():
        folder = itx / task_id
        folder.mkdir()
        (folder / "task.yaml").write_text(json.dumps({**_MCQ, "name": task_id, "problems": problems}, indent=1))
    (itx / "i18n" / "$i18n").mkdir()
    (itx / "i18n" / "$i18n" / "fr.mo").write_bytes(mo_bytes(TASK_FR))
    (itx / "$common" / "$i18n").mkdir(parents=True)
    (itx / "$common" / "$i18n" / "de.mo").write_bytes(mo_bytes(COMMON_DE))
    (itx / "raw").mkdir()  # the hand-made problems' task (no task.yaml: the frontend never loads it)
    return tasks
