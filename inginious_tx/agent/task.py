"""The grading-task contract shared by every agent backend that runs real tasks.

A task is a folder ``TASKS/<course_id>/<task_id>/`` holding a run file
(any language; the examples are POSIX sh): ``run``, ``run.py``, ``run.py3``
or ``run.sh``, looked for in the task then in the course's ``$common`` folder,
as INGInious does (:func:`~.job_folder.find_run_file`).  For each job the
backend makes a **job folder**, runs the run file (or ``/bin/sh -c RUN_CMD``)
in its ``task/`` copy with the environment of :meth:`JobFolder.env`, then
turns what the task wrote into a :class:`~inginious_tx.agent.result.JobResult`::

    JOB/
      task/          private copy of the task folder; the working directory
      task/student/  writable folder for the student's files (created if absent)
      input/         one file per input key: the answer ``getinput KEY`` prints
      input.json     the whole input as JSON (bytes as {"$base64": "..."})
      feedback/      what the feedback-* helpers write; parsed by collect_result
      archive/       files put here come back as the job's gzipped tar archive
      common/        a copy of the course's $common folder (INGINIOUS_COMMON), if any
      tmp/           TMPDIR

The same helper scripts work wherever the job folder is: at its host path (the
local backend) or mounted in a container (the Docker backend), because every
path reaches them through environment variables (:meth:`JobFolder.env`).

Environment of ``run`` (:meth:`JobFolder.env`): ``PATH`` (helpers first),
``INGINIOUS_JOB``, ``INGINIOUS_TASK`` (also ``HOME``), ``INGINIOUS_STUDENT``,
``INGINIOUS_INPUT``, ``INGINIOUS_FEEDBACK``, ``INGINIOUS_ARCHIVE``, ``INGINIOUS_COMMON``, ``TMPDIR``,
``INGINIOUS_COURSE_ID``, ``INGINIOUS_TASK_ID``, ``INGINIOUS_TIME_LIMIT``,
``INGINIOUS_MEM_LIMIT``, ``INGINIOUS_NETWORK`` (``1``/``0``), ``LANG=C.UTF-8``.

The contract lives in two modules, re-exported here: :mod:`~inginious_tx.agent.job_folder`
(making and removing job folders) and :mod:`~inginious_tx.agent.feedback`
(reading what the task wrote).  Public API (small and stable; the Docker
backend uses it too):

- :func:`helpers_dir` -- folder of the POSIX sh helpers (``getinput``, ``feedback-*``).
- :func:`prepare_job` -- validate ids, build the job folder (blocking: call it
  through ``deferToThread``); raises :class:`TaskError` for a bad or missing task.
- :class:`JobFolder` -- the paths, :attr:`JobFolder.command` and :meth:`JobFolder.env`.
- :func:`collect_result` -- read and *validate* the feedback (blocking);
  bad feedback becomes an ``error`` result that says why.
- :func:`remove_job` / :func:`remove_job_path` -- delete a job folder (blocking;
  iterative, no link followed, whatever the depth: :mod:`~inginious_tx.agent.filetree`).
- :class:`OutputLimits` -- size caps applied by :func:`collect_result`.

Feedback files (written by the helpers; the task may also write them itself)::

    feedback/result                one of RESULT_TYPES
    feedback/grade                 a number in 0..100
    feedback/text                  the global feedback text
    feedback/state                 the state string
    feedback/problems/ID/result    a problem's result type
    feedback/problems/ID/text      a problem's feedback text
    feedback/custom/KEY            a custom value (a string)
    feedback/custom-json/KEY       a custom value (JSON)

The files are read without following symbolic links and only if they are
regular files, so a task cannot make the agent read host files or block on a
FIFO.
"""

from __future__ import annotations

from .feedback import FeedbackError, OutputLimits, cap_text, collect_result
from .job_folder import (
    DEFAULT_PATH,
    ID_PATTERN,
    NAME_PATTERN,
    JobFolder,
    TaskError,
    hand_over,
    helpers_dir,
    prepare_job,
    remove_job,
    remove_job_path,
)

__all__ = [
    "ID_PATTERN",
    "NAME_PATTERN",
    "DEFAULT_PATH",
    "TaskError",
    "FeedbackError",
    "OutputLimits",
    "JobFolder",
    "helpers_dir",
    "prepare_job",
    "hand_over",
    "collect_result",
    "cap_text",
    "remove_job",
    "remove_job_path",
]
