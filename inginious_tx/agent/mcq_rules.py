"""How the ``mcq`` agent grades a job: the rules of INGInious 0.9.2's mcq agent.

Pure functions, no Twisted, no files: :func:`grade` takes the job's
``task_problems`` (as the 0.9 frontend sends them, ``task.get_problems_dict()``),
its input, the agent's own messages in the student's language and the task's
translation, and returns the :class:`Verdict`.  ``docs/mcq.rst`` states the
rules in a table; in short:

- two problem types: ``multiple_choice`` (one index, or a list of them with
  ``multiple``) and ``match`` (the answer, stripped, equals ``str(answer)``);
- a problem is right or wrong; the grade is the share of right problems;
  the job is ``success`` when every problem is right, else ``failed``;
- anything the rules cannot grade (a problem of another type, a malformed
  problem, a missing or malformed answer, a language that is not a string...)
  answers ``crash`` with INGInious' generic text and the job's ``@state``;
  a task without problems answers ``crashed`` (sic, as INGInious does).

The code reads values the way INGInious' agent does on purpose (Python's
``in``, ``int()`` and ``str.strip`` on the raw answer), so that odd answers
(``"1 "``, ``1.0``, a dict) get the same verdict; it is our own code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

__all__ = [
    "Verdict",
    "grade",
    "crash",
    "language_of",
    "state_of",
    "UNKNOWN_ERROR",
    "NO_PROBLEMS",
    "TASK_UNAVAILABLE",
    "PROBLEM_TYPES",
    "AgentText",
    "TaskText",
    "MAX_ANSWER_ITEMS",
    "MAX_FEEDBACK_CHARS",
]

#: The text of every job the rules cannot grade (INGInious' words: the frontend shows them).
UNKNOWN_ERROR = "An unknown error occurred in the agent. Please contact your course administrator."
#: The text of a job whose task has no problems (never translated, as in INGInious).
NO_PROBLEMS = "No subproblems defined"
#: The text of a job whose task folder this agent does not have.
TASK_UNAVAILABLE = (
    "Task unavailable on agent. Please retry later, the agents should synchronize soon. If the error "
    "persists, please contact your course administrator."
)

#: Most entries a ``multiple`` answer may have (a form gives one per choice at most):
#: a longer list would repeat feedback without end.  Not an INGInious rule.
MAX_ANSWER_ITEMS = 10_000
#: Most characters of feedback (main text and problem texts) a verdict may carry.
#: Not an INGInious rule: past it the job crashes, saying so.
MAX_FEEDBACK_CHARS = 1_000_000

#: The problem types graded here.
PROBLEM_TYPES = ("multiple_choice", "match")

# The agent's own messages (English; translated through an AgentText).
_WRONG_MULTIPLE = "Wrong answer. Make sure to select all the valid possibilities"
_WRONG = "Wrong answer"
_CORRECT = "Correct answer"
_N_WRONG = "You have {} wrong answer(s)."
_N_INVALID = "Among them, you have {} invalid answers in the multiple choice questions"
#: Markers a problem leaves in its messages, replaced by the translated text at the end.
_MARKERS = {"_wrong_answer_multiple": _WRONG_MULTIPLE, "_wrong_answer": _WRONG, "_correct_answer": _CORRECT}

#: The agent's message ``msgid`` in the student's language.
AgentText = Callable[[str], str]
#: A task text (feedback, success or error message) in the student's language;
#: gets the raw value, whatever its type, as ``gettext`` would.
TaskText = Callable[[Any], Any]

# INGInious' problem id rule (note: ``$`` also matches before a final newline).
_PROBLEM_ID = re.compile(r"[a-z0-9\-\._]+$", re.IGNORECASE)


class _Ungradable(Exception):
    """The task or the answer is outside what the rules grade (becomes a crash)."""


class _TooLarge(Exception):
    """The submission would make a verdict beyond our bounds (a crash that says so)."""


@dataclass
class Verdict:
    """What the agent answers: the fields of a 0.9 ``AgentJobDone``."""

    result: str
    text: str
    grade: float
    problems: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    state: str = ""
    #: Why the job could not be graded (for the agent's log), or None.
    reason: Optional[str] = None


def language_of(inputdata: Mapping[str, Any]) -> Any:
    """The student's language: ``@lang`` as sent (any type), ``""`` without it."""
    return inputdata.get("@lang", "")


def state_of(inputdata: Mapping[str, Any]) -> str:
    """The ``@state`` a crash gives back (``""`` unless it is a string)."""
    state = inputdata.get("@state", "")
    return state if isinstance(state, str) else ""


def crash(inputdata: Mapping[str, Any], text: str = UNKNOWN_ERROR, reason: Optional[str] = None) -> Verdict:
    """The ``crash`` verdict: grade 0, no problems, the job's own ``@state`` back."""
    return Verdict("crash", text, 0.0, {}, state_of(inputdata), reason)


class _Choice:
    __slots__ = ("index", "valid", "feedback")

    def __init__(self, index: int, valid: bool, feedback: Any) -> None:
        self.index = index
        self.valid = valid
        self.feedback = feedback


class _Checked:
    """One problem's outcome: right or wrong, its messages (None: no text), its invalid choices."""

    __slots__ = ("right", "messages", "invalid")

    def __init__(self, right: bool, messages: Optional[List[Any]], invalid: int) -> None:
        self.right = right
        self.messages = messages
        self.invalid = invalid


def _text(translate: TaskText, value: Any) -> Any:
    # gettext of a task text; an empty one stays empty
    return translate(value) if value else ""


class _MultipleChoice:
    def __init__(self, pid: str, content: Dict[str, Any]) -> None:
        self.pid = pid
        self.multiple = content.get("multiple", False)
        self.centralize = content.get("centralize", False)
        self.error_message = content.get("error_message", None)
        self.success_message = content.get("success_message", None)
        raw = content["choices"] if "choices" in content else None
        if not isinstance(raw, (list, tuple)):
            raise _Ungradable(f"multiple choice problem {pid!r} has no list of choices")
        good: List[_Choice] = []
        bad: List[_Choice] = []
        for index, choice in enumerate(raw):
            if not isinstance(choice, dict) or "text" not in choice:
                raise _Ungradable(f"choice {index} of problem {pid!r} has no text")
            entry = _Choice(index, bool(choice.get("valid", False)), choice.get("feedback"))
            (good if entry.valid else bad).append(entry)
        if not good:
            raise _Ungradable(f"problem {pid!r} has no valid choice")
        if "limit" in content:
            limit = content["limit"]
            fits = isinstance(limit, int) and limit >= 0 and (not self.multiple or limit == 0 or limit >= len(good))
            if not fits:
                raise _Ungradable(f"problem {pid!r} has an invalid limit {limit!r}")
        # valid choices first: the order in which choices are checked
        self.choices = good + bad
        self._by_index = {c.index: c for c in self.choices}

    def _choice(self, value: Any) -> _Choice:
        choice = self._by_index.get(int(value))
        if choice is None:
            raise _Ungradable(f"answer {value!r} to problem {self.pid!r} is no choice")
        return choice

    def check(self, answers: Mapping[str, Any], translate: TaskText) -> _Checked:
        answer = answers[self.pid]
        messages: List[Any] = []
        invalid = 0
        if self.multiple:
            if isinstance(answer, (list, tuple, dict)) and len(answer) > MAX_ANSWER_ITEMS:
                raise _TooLarge(f"the answer to {self.pid!r} has more than {MAX_ANSWER_ITEMS} entries")
            for choice in self.choices:
                # membership as Python's ``in`` says, integer index first (a
                # list of strings or of numbers both work; a string answer fails)
                ticked = choice.index in answer or str(choice.index) in answer
                if ticked != choice.valid:
                    invalid += 1
            for value in answer:
                feedback = self._choice(value).feedback
                if feedback is not None:
                    messages.append(_text(translate, feedback))
        else:
            choice = self._choice(answer)
            if not choice.valid:
                invalid = 1
            if choice.feedback is not None:
                messages.append(_text(translate, choice.feedback))
        if invalid:
            if self.error_message is not None:
                messages.insert(0, _text(translate, self.error_message))
            elif not self.centralize:
                messages.insert(0, "_wrong_answer_multiple" if self.multiple else "_wrong_answer")
            return _Checked(False, messages or None, invalid)
        if self.success_message is not None:
            messages.insert(0, _text(translate, self.success_message))
        return _Checked(True, messages or None, 0)


class _Match:
    def __init__(self, pid: str, content: Dict[str, Any]) -> None:
        self.pid = pid
        if "answer" not in content:
            raise _Ungradable(f"match problem {pid!r} has no answer")
        self.expected = str(content["answer"])
        self.centralize = content.get("centralize", False)

    def check(self, answers: Mapping[str, Any], translate: TaskText) -> _Checked:
        right = answers[self.pid].strip() == self.expected
        if self.centralize:
            return _Checked(right, None, 0)
        return _Checked(right, ["_correct_answer" if right else "_wrong_answer"], 0)


_CLASSES = {"multiple_choice": _MultipleChoice, "match": _Match}


def _problem(pid: Any, content: Any) -> Any:
    kind = content.get("type", "")
    cls = _CLASSES.get(kind)
    if cls is None:
        raise _Ungradable(f"problem {pid!r} is of type {kind!r}, which this agent does not grade")
    if not _PROBLEM_ID.match(pid):
        raise _Ungradable(f"invalid problem id {pid!r}")
    return cls(pid, content)


def grade(
    task_problems: Mapping[str, Any],
    inputdata: Mapping[str, Any],
    agent_text: AgentText,
    task_text: TaskText,
) -> Verdict:
    """The verdict on ``inputdata`` for the problems ``task_problems``.

    ``agent_text`` translates the agent's own messages, ``task_text`` the
    task's texts, both into the student's language (see :mod:`inginious_tx.agent.mcq_i18n`).
    Never raises: what cannot be graded is a ``crash`` verdict whose
    ``reason`` says why.
    """
    try:
        verdict = _grade(task_problems, inputdata, agent_text, task_text)
    except _TooLarge as e:
        return crash(inputdata, f"This submission cannot be graded: {e}.", reason=str(e))
    except Exception as e:
        return crash(inputdata, reason=f"{type(e).__name__}: {e}"[:500])
    size = len(verdict.text) + sum(len(text) for _, text in verdict.problems.values())
    if size > MAX_FEEDBACK_CHARS:
        why = f"its feedback would have {size} characters (at most {MAX_FEEDBACK_CHARS})"
        return crash(inputdata, f"This submission cannot be graded: {why}.", reason=why)
    return verdict


def _grade(
    task_problems: Mapping[str, Any], inputdata: Mapping[str, Any], agent_text: AgentText, task_text: TaskText
) -> Verdict:
    # INGInious looks the language up in a dict: a map there fails the job (an
    # array is a tuple, in its decoder as in ours, and passes)
    hash(language_of(inputdata))
    problems = [_problem(pid, content) for pid, content in task_problems.items()]
    checked = [(p.pid, p.check(inputdata, task_text)) for p in problems]

    wrong = sum(1 for _, c in checked if not c.right)
    invalid = sum(c.invalid for _, c in checked)
    feedback: Dict[str, Tuple[str, str]] = {}
    for pid, c in checked:
        if c.messages is None:
            continue
        texts = [agent_text(_MARKERS[m]) if m in _MARKERS else m for m in c.messages]
        feedback[pid] = ("success" if c.right else "failed", "\n\n".join(texts))

    lines: List[str] = []
    if wrong:
        lines.append(agent_text(_N_WRONG).format(wrong))
    if invalid:
        lines.append("\n\n" + agent_text(_N_INVALID).format(invalid))
    if not problems:
        lines.append(NO_PROBLEMS)
        return Verdict("crashed", "\n".join(lines), 0.0, feedback, state_of(inputdata))
    score = round(100.0 * (len(problems) - wrong) / len(problems), 2)
    state = json.dumps({pid: "" for pid, _ in checked})
    return Verdict("success" if not wrong else "failed", "\n".join(lines), score, feedback, state)
