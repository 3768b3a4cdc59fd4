"""Child side of the local backend's sandbox (a script: stdlib only, no package import).

Run as ``python -I -S _sandbox.py CONFIG_JSON COMMAND...`` by
:mod:`inginious_tx.agent.local`, with the job's environment and working
directory.  It reports to the agent on file descriptor 3, one JSON object a
line: ``{"event": "started", ...}``, ``{"event": "error", "text": ...}``,
``{"event": "ended", "exit": code, "signal": n, "cpu": seconds, "maxrss": bytes}``,
and ``{"event": "init", "pid": pid}`` (the PID namespace's init, as the agent
sees it) when the job has a PID namespace.

Steps: new session; cut the network (a new network namespace with only
loopback up, through a user namespace when not root); a new PID namespace
when possible; then a supervisor (the namespace's init, or this process as a
child subreaper) forks the command, which joins the job's control groups,
sets its resource limits, takes the job's user (``user``: [uid, gid], when
the agent is root) and ``no_new_privs`` before it runs; when the command ends, the
supervisor kills and reaps whatever it left.  SIGTERM from the agent ends the
whole tree the same way.
"""

import ctypes
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
REPORT_FD = 3

_libc = ctypes.CDLL(None, use_errno=True)


def report(**fields):
    try:
        os.write(REPORT_FD, (json.dumps(fields) + "\n").encode())
    except OSError:
        pass


def prctl(option, value):
    _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0)


def unshare(flags):
    """True if unshare(2) worked."""
    return _libc.unshare(flags) == 0


def unshare_as_user(flags):
    """unshare(2) inside a new user namespace, keeping our uid and gid."""
    uid, gid = os.getuid(), os.getgid()
    if not unshare(CLONE_NEWUSER | flags):
        return False
    try:
        for name, value in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(value)
    except OSError:
        return False
    return True


def loopback_up():
    """A new network namespace has loopback down: bring it up, as Docker does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def children():
    """Pids of our direct children."""
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def sweep(task_pgid):
    """Kill and reap every process left under us (we are their reaper)."""
    try:
        os.killpg(task_pgid, signal.SIGKILL)
    except OSError:
        pass
    while True:
        for pid in children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            pass


def mount(source, target, fstype, flags, data):
    if _libc.mount(source, target.encode(), fstype, ctypes.c_ulong(flags), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def reachable(path, uid, gid):
    """None if ``uid:gid`` may search every folder from / down to ``path``, else the first
    folder that is closed to it or missing."""
    current = "/"
    for part in [""] + [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except FileNotFoundError:
            return current
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid == gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return current
    return None


def open_dir(path):
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def isolate_job(cfg, uid, gid):
    """A mount (and IPC) namespace of the job's own, for ``uid:gid``.

    - ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are bind mounts of folders in the
      job folder (``private_dirs``): what the job writes there is on its bounded
      disk and goes with it;
    - ``/proc`` is the job's PID namespace's own (when it has one): no other
      process of the host is there;
    - the job folder is reachable at its own path: where a folder above it is
      closed to the job's user (or hidden by the binds above), a small tmpfs
      holding only the path down to it covers that folder, the job folder
      bound at the end: the job sees its folder, not its neighbours.
    """
    job_root = cfg["job_root"]
    if not unshare(CLONE_NEWNS | CLONE_NEWIPC):
        raise OSError(ctypes.get_errno(), "cannot make a mount namespace for the job")
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    # opened in our namespace (a bind source must be), before any bind hides them
    keep = open_dir(job_root)
    binds = []
    for target, source in sorted(cfg.get("private_dirs", {}).items()):
        if os.path.isdir(target) and not os.path.islink(target):
            binds.append((target, open_dir(source)))
    for target, fd in binds:
        mount(f"/proc/self/fd/{fd}".encode(), target, None, MS_BIND, None)
        os.close(fd)
    if cfg.get("in_pidns"):
        mount(b"proc", "/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    try:
        same = os.path.samestat(os.stat(job_root), os.fstat(keep))
    except OSError:
        same = False
    blocked = reachable(job_root, uid, gid)
    if not same or blocked is not None:
        if blocked is not None and os.path.exists(blocked):
            mount(b"tmpfs", blocked, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k")
        old = os.umask(0o022)
        os.makedirs(job_root, mode=0o755, exist_ok=True)
        os.umask(old)
        mount(f"/proc/self/fd/{keep}".encode(), job_root, None, MS_BIND, None)
    os.close(keep)


#: The job's private folders in its job folder (as :data:`.local.PRIVATE_DIRS`).
PRIVATE_DIRS = {"/tmp": ".tmp", "/var/tmp": ".var-tmp", "/dev/shm": ".shm"}


def expose_job(job_root, uid, gid, in_pidns=False):
    """:func:`isolate_job` for a process that joins a job (the SSH debug shell): the job's
    folder and its private ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (and, ``in_pidns``,
    the ``/proc`` of the job's PID namespace, which it has joined)."""
    private = {t: os.path.join(job_root, n) for t, n in PRIVATE_DIRS.items()}
    isolate_job({"job_root": job_root, "in_pidns": in_pidns,
                 "private_dirs": {t: p for t, p in private.items() if os.path.isdir(p)}}, uid, gid)  # fmt: skip


def exec_command(argv, cfg):
    """In the forked child: limits, clean signals, then the command."""
    try:
        os.setpgid(0, 0)
        os.close(REPORT_FD)
        for path in cfg.get("cgroups", []):
            # the command only: the supervisor's own memory is not the job's
            with open(path, "w") as f:
                f.write("0")
        limits = [(resource.RLIMIT_CORE, 0)]
        if cfg.get("cpu"):
            limits.append((resource.RLIMIT_CPU, (cfg["cpu"], cfg["cpu"] + 1)))
        for key, which in (("data", resource.RLIMIT_DATA), ("fsize", resource.RLIMIT_FSIZE),
                           ("nproc", resource.RLIMIT_NPROC)):  # fmt: skip
            if cfg.get(key):
                limits.append((which, cfg[key]))
        for which, value in limits:
            soft, hard = value if isinstance(value, tuple) else (value, value)
            old_hard = resource.getrlimit(which)[1]
            if old_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, old_hard), min(hard, old_hard)
            resource.setrlimit(which, (soft, hard))
        for sig in range(1, signal.NSIG):
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        user = cfg.get("user")
        if user:
            # an agent running as root: the job gets an unprivileged user, for good
            uid, gid = user
            isolate_job(cfg, uid, gid)
            cwd = os.getcwd()
            os.chdir(cwd)  # the same folder, seen through the job's mounts
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid:
                raise OSError(errno.EPERM, "the job's user was not taken")
        # setuid programs do not raise the job's privileges (e.g. back to root)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)) != 0 and user:  # fmt: skip
            raise OSError(errno.EPERM, "no_new_privs could not be set")
        try:
            os.execv(argv[0], argv)
        except OSError as e:
            if e.errno != errno.ENOEXEC:
                raise
            os.execv("/bin/sh", ["/bin/sh", *argv])  # no #! line: as a shell would
    except OSError as e:
        os.write(2, f"inginious-tx: cannot run {argv[0]}: {e.strerror}\n".encode())
        os._exit(126 if e.errno in (errno.EACCES, errno.ENOEXEC) else 127)
    except BaseException as e:  # never return into the supervisor's code
        os.write(2, f"inginious-tx: cannot run {argv[0]}: {e}\n".encode())
    os._exit(127)


def kill_on_term(kill, target):
    """From now on, SIGTERM (blocked until here) kills ``target`` with ``kill(target, SIGKILL)``."""

    def on_term(signum, frame):
        try:
            kill(target, signal.SIGKILL)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, on_term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def supervise(argv, cfg, reaper):
    """Run the command; when it ends, end whatever it left; report its status."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # no gap before the handler
    task = os.fork()
    if task == 0:
        exec_command(argv, cfg)
    try:
        os.setpgid(task, task)
    except OSError:
        pass

    kill_on_term(os.killpg, task)
    report(event="running", task_pgid=task if not cfg.get("in_pidns") else None)
    while True:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            status, usage = None, None
            break
        if pid == task:
            break
    if reaper:
        sweep(task)
    fields = {"event": "ended", "exit": None, "signal": None, "cpu": 0.0}
    # peak resident memory of everything we reaped (KiB on Linux)
    fields["maxrss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if status is not None:
        code = os.waitstatus_to_exitcode(status)
        fields["exit" if code >= 0 else "signal"] = abs(code)
        fields["cpu"] = usage.ru_utime + usage.ru_stime
    report(**fields)


def main():
    cfg = json.loads(sys.argv[1])
    argv = sys.argv[2:]
    os.setsid()
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != cfg.get("agent_pid", os.getppid()):
        sys.exit(1)  # the agent is already gone

    isolation, missing = [], []
    in_userns = False
    if not cfg.get("network"):
        if unshare(CLONE_NEWNET):
            ok = True
        else:
            ok = in_userns = unshare_as_user(CLONE_NEWNET)
        if ok:
            try:
                loopback_up()
            except OSError as e:
                missing.append(f"loopback ({e.strerror})")
            isolation.append("network")
        elif cfg.get("net_isolation", "required") == "required":
            report(event="error", text=(
                "the network cannot be cut off on this agent (it needs root or unprivileged user "
                "namespaces); start the agent with --option network_isolation=best-effort to run "
                "such jobs with the network"))  # fmt: skip
            sys.exit(0)
        else:
            missing.append("network")
    pidns = False
    if cfg.get("pidns", True):
        pidns = unshare(CLONE_NEWPID) or (not in_userns and unshare_as_user(CLONE_NEWPID))
    (isolation if pidns else missing).append("pid namespace")
    report(event="started", isolation=isolation, missing=missing)

    if not pidns:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        supervise(argv, cfg, reaper=True)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    init = os.fork()
    if init == 0:
        # pid 1 of the new namespace: when it exits, the kernel kills the rest.
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        cfg["in_pidns"] = True
        supervise(argv, cfg, reaper=False)
        os._exit(0)

    # where an SSH debug shell joins the job's PID and network namespaces (see _ssh_shell.py)
    report(event="init", pid=init)
    kill_on_term(os.kill, init)
    while True:
        try:
            os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            break


if __name__ == "__main__":
    main()
