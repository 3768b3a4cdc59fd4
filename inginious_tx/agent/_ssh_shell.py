"""An SSH debug shell of a local job, as the job's user (a script: stdlib only).

Run as root by :class:`~inginious_tx.agent.ssh_sandboxes.LocalSandbox`:
``python -I -S _ssh_shell.py CONFIG_JSON COMMAND...``.  Like the job itself
(:func:`._sandbox.expose_job`), it first makes the job folder reachable at
its own path for the job's user in a mount namespace of its own, then drops
to that user (no supplementary groups, ``no_new_privs``) and runs the shell.
"""

import json
import os
import sys
import warnings  # noqa: F401  (os.execvp imports it: done while the stdlib is still readable)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sandbox  # type: ignore[import-not-found]  # noqa: E402


def main():
    cfg = json.loads(sys.argv[1])
    argv = sys.argv[2:]
    uid, gid = cfg["user"]
    try:
        _sandbox.expose_job(cfg["job_root"], uid, gid)
        os.chdir(cfg["cwd"])
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError(1, "the job's user was not taken")
        _sandbox.prctl(_sandbox.PR_SET_NO_NEW_PRIVS, 1)
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(2, f"inginious-tx: cannot open a shell in the job: {e.strerror or e}\n".encode())
        os._exit(1)


if __name__ == "__main__":
    main()
