"""Where INGInious tasks expect things, for tasks ported from INGInious.

INGInious runs a grader in ``/task`` and collects ``/archive``.  The Docker
agent mounts the job's own ``task/`` and ``archive/`` folders there as well
(the same folders as under ``/job``), so a ported grader that writes to
``/archive`` or reads ``/task/...`` works unchanged.
"""

from __future__ import annotations

from typing import Any, List

from .job_folder import JobFolder

__all__ = ["TASK_MOUNT", "ARCHIVE_MOUNT", "inginious_mounts"]

#: INGInious' places for the task copy and the archive.
TASK_MOUNT = "/task"
ARCHIVE_MOUNT = "/archive"


def inginious_mounts(docker: Any, folder: JobFolder) -> List[Any]:
    """Bind mounts of the job's task and archive folders at INGInious' paths."""
    return [
        docker.types.Mount(TASK_MOUNT, folder.task_dir, type="bind", read_only=False),
        docker.types.Mount(ARCHIVE_MOUNT, folder.archive_dir, type="bind", read_only=False),
    ]
