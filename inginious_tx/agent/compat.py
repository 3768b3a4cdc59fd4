"""Where INGInious tasks expect things, for tasks ported from INGInious.

INGInious runs a grader in ``/task`` (also its ``HOME``), collects
``/archive`` and shows the course's ``$common`` folder, read-only, at
``/course/common``.  The Docker agent mounts the job's own ``task/``,
``archive/`` and ``common/`` folders there as well (the same folders as under
``/job``), so a ported grader that writes to ``/archive``, reads
``/task/...`` or runs ``/course/common/...`` works unchanged.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from .job_folder import JobFolder

__all__ = ["TASK_MOUNT", "ARCHIVE_MOUNT", "COMMON_MOUNT", "inginious_mounts", "inginious_env"]

#: INGInious' places for the task copy, the archive and the course's common folder.
TASK_MOUNT = "/task"
ARCHIVE_MOUNT = "/archive"
COMMON_MOUNT = "/course/common"


def inginious_mounts(docker: Any, folder: JobFolder) -> List[Any]:
    """Bind mounts of the job's task, archive and (read-only) common folders at INGInious' paths."""
    mounts = [
        docker.types.Mount(TASK_MOUNT, folder.task_dir, type="bind", read_only=False),
        docker.types.Mount(ARCHIVE_MOUNT, folder.archive_dir, type="bind", read_only=False),
    ]
    if os.path.isdir(folder.common_dir):
        mounts.append(docker.types.Mount(COMMON_MOUNT, folder.common_dir, type="bind", read_only=True))
    return mounts


def inginious_env(folder: JobFolder) -> Dict[str, str]:
    """What changes in the task's environment with the mounts of :func:`inginious_mounts`:
    ``HOME`` is ``/task`` (INGInious' worker user's home), the common folder is the read-only one."""
    env = {"HOME": TASK_MOUNT}
    if os.path.isdir(folder.common_dir):
        env["INGINIOUS_COMMON"] = COMMON_MOUNT
    return env
