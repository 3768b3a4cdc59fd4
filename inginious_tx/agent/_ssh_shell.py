"""An SSH debug shell of a local job, as the job's user (a script: stdlib only).

Run as root by :class:`~inginious_tx.agent.ssh_sandboxes.LocalSandbox`:
``python -I -S _ssh_shell.py CONFIG_JSON COMMAND...``.  It joins the job:
its network namespace and, when the job has one, its PID namespace (``ns_pid``:
a process of the job's sandbox, the namespace's init), and its control
groups; in the PID namespace it forks the shell, which (like the job itself,
:func:`._sandbox.expose_job`) gets a mount and IPC namespace of its own with
the job folder reachable at its own path, the job's private ``/tmp``... and
the namespace's ``/proc``, then drops to the job's user (no supplementary
groups, ``no_new_privs``, killed if this helper dies).  Whatever the session
starts lives in the job's PID namespace: the kernel kills it when the job
ends, whatever it did (``setsid``, ``nohup``...).
"""

import json
import os
import signal
import sys
import warnings  # noqa: F401  (os.execvp imports it: done while the stdlib is still readable)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sandbox  # type: ignore[import-not-found]  # noqa: E402

PR_SET_PDEATHSIG = 1


def setns(path, nstype):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _sandbox._libc.setns(fd, nstype) != 0:
            err = _sandbox.ctypes.get_errno()
            raise OSError(err, f"cannot join the job's namespace {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def become(cfg, argv, in_pidns, parent):
    uid, gid = cfg["user"]
    _sandbox.expose_job(cfg["job_root"], uid, gid, in_pidns=in_pidns)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError(1, "the job's user was not taken")
    os.chdir(cfg["cwd"])  # as the job's user: a link the job put there leads nowhere it could not go
    if parent is not None:
        _sandbox.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
        if os.getppid() != 0:  # our parent, outside the namespace, is 0 here; else it died already
            os._exit(1)
    _sandbox.prctl(_sandbox.PR_SET_NO_NEW_PRIVS, 1)
    os.execvp(argv[0], argv)


def main():
    cfg = json.loads(sys.argv[1])
    argv = sys.argv[2:]
    try:
        ns_pid = cfg.get("ns_pid")
        in_pidns = bool(ns_pid and cfg.get("pidns"))
        if ns_pid:
            setns(f"/proc/{int(ns_pid)}/ns/net", _sandbox.CLONE_NEWNET)
            if in_pidns:
                setns(f"/proc/{int(ns_pid)}/ns/pid", _sandbox.CLONE_NEWPID)  # for our children
        for path in cfg.get("cgroups", []):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        if not in_pidns:
            become(cfg, argv, False, None)
        me = os.getpid()
        child = os.fork()  # fails once the job's namespace is gone (its init ended)
        if child == 0:
            try:
                become(cfg, argv, True, me)
            except BaseException as e:  # never return into the parent's code
                os.write(2, f"inginious-tx: cannot open a shell in the job: {e}\n".encode())
            os._exit(1)
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
    except OSError as e:
        os.write(2, f"inginious-tx: cannot open a shell in the job: {e.strerror or e}\n".encode())
        os._exit(1)


if __name__ == "__main__":
    main()
