"""Last step of a local run_student call, as root inside the job's sandbox (a script: stdlib only).

Run as ``python -I -S _student_hide.py CONFIG_JSON COMMAND...`` by the local
backend's sandbox (:mod:`._sandbox`), already in its own PID namespace,
control group and (unless shared) network namespace.  It:

1. makes a mount (and IPC) namespace where ``/tmp``, ``/var/tmp`` and
   ``/dev/shm`` are the student's own folders in the job folder
   (``private_dirs``), the agent's work folder (every job folder,
   the agent's private stdin copies) is covered by an empty tmpfs holding
   only this job's ``task/student`` (opened from the job folder without
   following any link: a link the grader put there is refused), bound back
   at its own path, and
   ``/proc`` shows only the namespace's processes;
2. joins the grader's network namespace when asked (``--share-network``);
3. takes its standard input from the request's file, becomes the student's
   user (no supplementary groups, ``no_new_privs``) and runs the command.

Any failure before the command runs exits 254 with the reason on stderr: the
student's code never runs unprotected.
"""

import ctypes
import json
import os
import sys
import warnings  # noqa: F401  (os.execvp imports it: done before the user change, which loses the stdlib)

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)


def fail(text):
    os.write(2, f"run_student: {text}\n".encode())
    os._exit(254)


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        fail(f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data):
    check(_libc.mount(source, target.encode(), fstype, ctypes.c_ulong(flags), data), f"mount {target}")


def blocked(path, uid, gid):
    """The first folder from / down to ``path`` that ``uid:gid`` may not search, or None."""
    current = "/"
    for part in [""] + [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        st = os.stat(current)
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            return current
    return None


def open_student(root, path="task/student"):
    """The job's own student folder, opened from the job folder with no link followed at any step.

    The grader owns ``task/`` and may have put a link (to ``/``, to another
    job's folder) where ``student`` was: refused, as anything that is not a
    folder on the job folder's file system.
    """
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        current = os.open(root, flags)
    except OSError as e:
        fail(f"cannot open the job folder: {e.strerror}")
    top = os.fstat(current)
    for part in path.split("/"):
        try:
            step = os.open(part, flags, dir_fd=current)
        except OSError as e:
            if e.errno in (40, 20):  # ELOOP, ENOTDIR: a link or a file
                fail(f"{path} is not a folder of the job (a link or a file)")
            fail(f"cannot open {path}: {e.strerror}")
        os.close(current)
        current = step
    if os.fstat(current).st_dev != top.st_dev:
        fail(f"{path} is not a folder on the job's own disk")
    return current


def main():
    cfg = json.loads(sys.argv[1])
    argv = sys.argv[2:]
    student, cover = cfg["student"], cfg["cover"]
    if cfg.get("share_net_of"):
        try:
            fd = os.open(f"/proc/{int(cfg['share_net_of'])}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            fail(f"cannot reach the grader's network: {e.strerror}")
        check(_libc.setns(fd, CLONE_NEWNET), "join the grader's network")
        os.close(fd)
    user = cfg.get("user")
    check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "make a mount namespace")
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    binds = []  # opened in our namespace (a bind source must be), before any bind hides them
    for target, source in sorted(cfg.get("private_dirs", {}).items()):
        if not os.path.isdir(target) or os.path.islink(target):
            continue
        try:
            fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            fail(f"cannot open the student's {target}: {e.strerror}")
        if user and os.fstat(fd).st_uid != user[0]:
            fail(f"the student's {target} is not the student's")  # the grader replaced it
        binds.append((target, fd))
    keep = open_student(cfg["root"])
    try:
        stdin = os.open(cfg["stdin"], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        fail(f"cannot open the standard input: {e.strerror}")
    # the student's own /tmp, /var/tmp, /dev/shm: on the job's bounded disk, gone with it
    for target, fd in binds:
        mount(f"/proc/self/fd/{fd}".encode(), target, None, MS_BIND, None)
        os.close(fd)
    if os.path.isdir(cover):  # else already hidden (the work folder was in /tmp)
        closed = blocked(os.path.dirname(cover), *user) if user else None
        if closed is not None and closed != "/":
            cover = closed  # a folder above the work folder is closed to the student: cover it instead
        mount(b"tmpfs", cover, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k")
    os.umask(0o022)  # the path down to student/ must be searchable by the student's user
    os.makedirs(student, mode=0o755, exist_ok=True)
    mount(f"/proc/self/fd/{keep}".encode(), student, None, MS_BIND, None)
    os.close(keep)
    # this PID namespace's processes only: the grader's are not even visible
    mount(b"proc", "/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    os.dup2(stdin, 0)
    os.close(stdin)
    if user:
        uid, gid = user
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            fail("the student's user was not taken")
    try:  # as the student: a link in student/ leads nowhere its user could not go
        os.chdir(cfg["cwd"])
    except OSError:
        os.chdir(student)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)):
        fail("no_new_privs could not be set")
    os.environ.clear()
    os.environ.update(cfg["env"])
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(2, f"run_student: cannot run {argv[0]}: {e.strerror}\n".encode())
        os._exit(126 if e.errno == 13 else 127)


if __name__ == "__main__":
    main()
