"""A Docker job's standard output and error, cut at their caps inside the container.

The engine copies whatever a container writes on its standard output and
error through its log driver: a job writing gigabytes made dockerd spend
tens of CPU-seconds (hundreds for short lines) outside the job's limits.
So the job's container has no log at all (driver ``none``), and its command
runs under a small POSIX sh wrapper, PID 1 of the container:

- the job's standard output and error are pipes (FIFOs the wrapper makes in
  ``.output/pipe``) read by two ``cat`` in the container, which write the
  files ``.output/stdout`` and ``.output/stderr`` of the job folder under a
  file size limit (``ulimit -f``, the cap + 1 rounded up to 512 bytes); past
  it, a second ``cat`` reads on into ``/dev/null``: the job goes on as before
  (no broken pipe), and the time it spends writing is its own (its CPU
  limit).  ``cat`` holds back nothing it read, so nothing is lost when it is
  stopped (below).  The command starts only once both ``cat`` run (each
  touches a file first): a fork bomb cannot take the process slots they need;
- the wrapper itself holds nothing of the container's standard output or
  error (``/dev/null``), so no process of the container does: a job that opens
  ``/proc/1/fd/1`` finds ``/dev/null``, not the engine;
- it exits with the command's status once both readers are done (at most
  2 s after the command, if a process the command left holds the pipes); as
  PID 1 it reaps the processes the command leaves (a shell's wait takes any
  child), as ``tini`` did.

``.output`` is the agent's (root's, mode 0755), made after the job folder was
handed over: the job can write its two files, not replace them.  The agent
reads them from the job folder's descriptor without following links
(:mod:`._beneath`), regular files only, at most the cap + 1 bytes
(so that the cut is marked, see :func:`.feedback.cap_text`).

The image needs ``sh``, ``mkfifo``, ``head``, ``cat`` and ``sleep`` (busybox
or coreutils), as INGInious images have.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, Optional, Tuple

from ._beneath import open_beneath
from .feedback import OutputLimits
from .job_folder import JobFolder

__all__ = ["OUTPUT_DIR", "WRAPPER", "STUDENT_WRAPPER", "make_output_dir", "wrap_command", "thd_read_output"]

#: In the job folder: the job's output files (and the pipes to them).
OUTPUT_DIR = ".output"

#: $1: the output folder (as the container sees it), $2 $3: the caps + 1, then the command.
WRAPPER = """\
o=$1; n1=$2; n2=$3; shift 3
exec >/dev/null 2>&1
mkfifo "$o/pipe/out" "$o/pipe/err" || exit 254
{ (: >"$o/pipe/a"; ulimit -f $(((n1 + 511) / 512)); exec cat >"$o/stdout"); exec cat; } <"$o/pipe/out" &
a=$!
{ (: >"$o/pipe/b"; ulimit -f $(((n2 + 511) / 512)); exec cat >"$o/stderr"); exec cat; } <"$o/pipe/err" &
b=$!
exec 5>"$o/pipe/out" 6>"$o/pipe/err"
until [ -e "$o/pipe/a" ] && [ -e "$o/pipe/b" ]; do :; done
"$@" >&5 2>&6 5>&- 6>&-
rc=$?
exec 5>&- 6>&-
{ sleep 2; kill $a $b; } &
w=$!
wait $a $b
kill $w
exit $rc
"""


#: run_student's containers (see :mod:`.run_student_docker`): the same cut into files of the
#: container's own ``/tmp``, then their first bytes written to the container's output (the
#: engine's log, which the agent reads as before).  $1: the
#: standard input, $2 $3: the caps + 1, then the command.  The engine's work is bounded for an
#: ordinary flood (a loop printing); this shell and ``head`` still hold the engine's pipe, which
#: a student who opens ``/proc/PID/fd/1`` on purpose can write to.
STUDENT_WRAPPER = """\
i=$1; n1=$2; n2=$3; shift 3
d=$(mktemp -d /tmp/.output.XXXXXX) && mkfifo "$d/out" "$d/err" || exit 254
exec 3>&1 4>&2 >/dev/null 2>&1
{ (: >"$d/a"; ulimit -f $(((n1 + 511) / 512)); exec cat >"$d/o"); exec cat; } <"$d/out" 3>&- 4>&- &
a=$!
{ (: >"$d/b"; ulimit -f $(((n2 + 511) / 512)); exec cat >"$d/e"); exec cat; } <"$d/err" 3>&- 4>&- &
b=$!
exec 5>"$d/out" 6>"$d/err"
until [ -e "$d/a" ] && [ -e "$d/b" ]; do :; done
"$@" <"$i" >&5 2>&6 3>&- 4>&- 5>&- 6>&-
rc=$?
exec 5>&- 6>&-
{ sleep 2; kill $a $b; } 3>&- 4>&- &
w=$!
wait $a $b
kill $w
head -c "$n1" "$d/o" >&3
head -c "$n2" "$d/e" >&4
exit $rc
"""


def make_output_dir(folder: JobFolder, owner: Optional[Tuple[int, int]]) -> None:
    """Make ``.output`` in a prepared job folder (blocking): the agent's, with the job's files in it."""
    path = os.path.join(folder.root, OUTPUT_DIR)
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)
    for name in ("stdout", "stderr"):
        fd = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)
    os.mkdir(os.path.join(path, "pipe"), 0o700)
    if owner is not None:
        os.chown(os.path.join(path, "pipe"), *owner)


def wrap_command(config: Dict[str, Any], docker: Any, mount_root: str, limits: OutputLimits) -> None:
    """Run the container's command under :data:`WRAPPER`, with no log: change ``config`` in place."""
    config["command"] = [
        "/bin/sh", "-c", WRAPPER, "inginious-output", f"{mount_root}/{OUTPUT_DIR}",
        str(limits.max_stdout + 1), str(limits.max_stderr + 1), *config["command"],
    ]  # fmt: skip
    config["log_config"] = docker.types.LogConfig(type="none")
    config["init"] = False  # the wrapper is PID 1: nothing else holds the container's output


def _read(root_fd: int, name: str, cap: int) -> bytes:
    try:
        fd = open_beneath(root_fd, f"{OUTPUT_DIR}/{name}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return b""  # the job removed it: it has no output
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        chunks, left = [], cap
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def thd_read_output(folder: JobFolder, limits: OutputLimits) -> Tuple[bytes, bytes]:
    """The job's (stdout, stderr), each at most its cap + 1 bytes (blocking; no link followed)."""
    root_fd = os.open(folder.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return _read(root_fd, "stdout", limits.max_stdout + 1), _read(root_fd, "stderr", limits.max_stderr + 1)
    finally:
        os.close(root_fd)
