"""Translations for the ``mcq`` agent: its own messages, and the task's texts.

Two sources, as in INGInious' mcq agent:

- **the agent's messages** ("Wrong answer", "You have {} wrong answer(s).",
  ...) come from ``mcq_messages.json`` beside this module: our catalog of the
  languages INGInious 0.9.2's mcq agent ships (``de``, ``es``, ``fr``, ``he``,
  ``nb_NO``).  A language is looked up by its exact ``@lang`` value; any other
  value (``en``, ``""``, ``fr_BE``) gives the English text.
- **the task's texts** (choice feedback, success and error messages) are
  translated with the task's own gettext catalog ``LANG.mo``, found in the
  first of these folders that exists: ``TASK/$i18n``, ``TASK/student/$i18n``,
  ``COURSE/$common/$i18n``, ``COURSE/$common/student/$i18n``.

:func:`task_files` reads the task folder (blocking: call it from a thread).
"""

from __future__ import annotations

import gettext
import io
import json
import os
import stat
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Dict, Optional, Tuple

from .mcq_rules import TASK_UNAVAILABLE, UNKNOWN_ERROR

__all__ = ["agent_catalog", "agent_text", "TaskFiles", "task_files", "MoCache", "MAX_MO_BYTES"]

#: A task catalog larger than this is not read (the task gets no translation).
MAX_MO_BYTES = 4 << 20
#: Folders searched for ``LANG.mo``, under the task then under the course.
_TASK_FOLDERS = (("$i18n",), ("student", "$i18n"))
_COURSE_FOLDERS = (("$common", "$i18n"), ("$common", "student", "$i18n"))


def _load_catalog() -> Dict[str, Dict[str, str]]:
    raw = json.loads(resources.files(__package__).joinpath("mcq_messages.json").read_text("utf-8"))
    languages: Dict[str, Dict[str, str]] = raw["languages"]
    return languages


_CATALOG = _load_catalog()


def agent_catalog() -> Dict[str, Dict[str, str]]:
    """Language -> {English message: translation} (a copy)."""
    return {lang: dict(texts) for lang, texts in _CATALOG.items()}


def agent_text(language: Any) -> Callable[[str], str]:
    """The agent's messages in ``language`` (English when it is not one of the catalog's)."""
    texts = _CATALOG.get(language) if isinstance(language, str) else None
    if not texts:
        return _identity
    return lambda msgid: texts.get(msgid, msgid)


def _identity(msgid: str) -> str:
    return msgid


@dataclass(frozen=True)
class TaskFiles:
    """What the task folder says about a job: an error text (the job then
    crashes with it), or how to translate the task's texts."""

    error: Optional[str]
    translate: Callable[[Any], Any]


_NULL = gettext.NullTranslations().gettext


class MoCache:
    """Parsed task catalogs, keyed by path and checked against the file's
    size and modification time (a changed file is read again).  Thread-safe;
    keeps at most ``budget`` bytes of catalog files (the oldest go first)."""

    def __init__(self, budget: int = 32 << 20) -> None:
        self._budget = budget
        self._used = 0
        self._lock = threading.Lock()
        self._entries: Dict[str, Tuple[Tuple[int, int], gettext.GNUTranslations]] = {}

    def get(self, path: str) -> Callable[[Any], Any]:
        """The ``gettext`` of the catalog at ``path``; raises OSError/ValueError when unreadable."""
        st = os.stat(path)
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            entry = self._entries.get(path)
        if entry is not None and entry[0] == key and stat.S_ISREG(st.st_mode):
            return entry[1].gettext
        data = _read_regular(path)
        catalog = gettext.GNUTranslations(io.BytesIO(data))
        with self._lock:
            old = self._entries.pop(path, None)
            if old is not None:
                self._used -= old[0][1]
            while self._entries and self._used + len(data) > self._budget:
                oldest = next(iter(self._entries))
                self._used -= self._entries.pop(oldest)[0][1]
            if len(data) <= self._budget:
                self._entries[path] = ((key[0], len(data)), catalog)
                self._used += len(data)
        return catalog.gettext


def _read_regular(path: str) -> bytes:
    """The bytes of a regular file of at most MAX_MO_BYTES (a FIFO or a device is refused, never waited on)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        if st.st_size > MAX_MO_BYTES:
            raise OSError(f"{path} is larger than {MAX_MO_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_MO_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_MO_BYTES:
        raise OSError(f"{path} is larger than {MAX_MO_BYTES} bytes")
    return data


def _bad_path(name: Any) -> bool:
    # INGInious refuses such a course or task id with an exception (a generic crash)
    return not isinstance(name, str) or name.startswith("/") or ".." in name or name.strip() != name


def _safe_language(language: str) -> bool:
    return bool(language) and "/" not in language and "\0" not in language and not language.startswith(".")


def task_files(tasks_dir: str, course_id: Any, task_id: Any, language: Any, cache: MoCache) -> TaskFiles:
    """Check the task folder and find the task's translation (blocking).

    A course or task id INGInious refuses as a path (leading ``/``, ``..``,
    surrounding spaces) crashes the job with the generic text; a task folder
    that does not exist with "Task unavailable on agent".  A language that is
    not a plain file name (``../x``) gets no task translation.
    """
    if _bad_path(course_id) or _bad_path(task_id):
        return TaskFiles(UNKNOWN_ERROR, _NULL)
    course = os.path.join(tasks_dir, course_id)
    task = os.path.join(course, task_id)
    if "\0" in task or not os.path.exists(task):
        return TaskFiles(TASK_UNAVAILABLE, _NULL)
    folders = [os.path.join(task, *p) for p in _TASK_FOLDERS] + [os.path.join(course, *p) for p in _COURSE_FOLDERS]
    folder = next((f for f in folders if os.path.exists(f)), None)
    if folder is None:
        return TaskFiles(None, _NULL)
    if not isinstance(language, str):
        return TaskFiles(UNKNOWN_ERROR, _NULL)  # INGInious builds the file name from it, and fails
    if not _safe_language(language):
        return TaskFiles(None, _NULL)
    path = os.path.join(folder, language + ".mo")
    if not os.path.exists(path):
        return TaskFiles(None, _NULL)
    try:
        return TaskFiles(None, cache.get(path))
    except Exception:  # noqa: BLE001 - a broken catalog (bad magic, bad charset, truncated...)
        # INGInious fails the job on a catalog it cannot read
        return TaskFiles(UNKNOWN_ERROR, _NULL)
