"""What an SSH debug session runs in each agent backend's sandbox (see :mod:`.ssh`)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from zope.interface import implementer

from .debug import IDebugSandbox, ShellCommand
from .job_folder import JobFolder

__all__ = ["DockerSandbox", "LocalSandbox"]

SHELL_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ssh_shell.py")


def _host_env(term: str) -> Dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": term, "LANG": "C.UTF-8"}
    for key in ("DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "HOME"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


@implementer(IDebugSandbox)
class DockerSandbox:
    """``docker exec`` in the job's container, as the job's user, in its task folder.

    The session gets the container's environment (the job's), ``TERM`` of
    the client, and the container's limits, mounts and network: it is one
    more process of the job.
    """

    def __init__(self, container_id: str, user: str, workdir: str, docker_url: Optional[str] = None) -> None:
        self.container_id = container_id
        self.user = user
        self.workdir = workdir
        self.docker_url = docker_url

    def command(self, command: Optional[str], tty: bool, term: str) -> ShellCommand:
        cli = shutil.which("docker")
        if cli is None:
            raise RuntimeError("ssh debug of docker jobs needs the docker command on the agent's host")
        argv: List[str] = [cli]
        if self.docker_url:
            argv += ["-H", self.docker_url]
        argv += ["exec", "-i"] + (["-t"] if tty else [])
        argv += ["-u", self.user, "-w", self.workdir, "-e", f"TERM={term}", self.container_id, "/bin/sh"]
        if command is not None:
            argv += ["-c", command]
        return ShellCommand(argv, _host_env(term), "/")


@implementer(IDebugSandbox)
class LocalSandbox:
    """A shell in the job's task folder, with the job's environment, as the job's user.

    When the agent is root, the session joins the job (``_ssh_shell.py``):
    its network namespace, its PID namespace (it sees only the job's
    processes, and all it starts dies with the job), its control groups, and
    the job folder reachable as it is for the job, in a mount namespace of
    the session's own.  ``namespaces()`` says where the job's namespaces are:
    ``(pid of a process in them, whether that is a PID namespace's init)``.
    Without root the session is a plain process of the agent's user.
    """

    def __init__(
        self,
        folder: JobFolder,
        env: Dict[str, str],
        user: Optional[Tuple[int, int]] = None,
        namespaces: Optional[Callable[[], Tuple[Optional[int], bool]]] = None,
        cgroups: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        self.env = env
        #: (uid, gid) the job runs as; None: the agent's own
        self.user = user
        self.namespaces = namespaces
        self.cgroups = list(cgroups)

    def command(self, command: Optional[str], tty: bool, term: str) -> ShellCommand:
        env = dict(self.env)
        env["TERM"] = term
        if command is None:
            argv = ["/bin/sh", "-i"]
        else:
            setsid = shutil.which("setsid")
            # its own process group, so that the end of the job ends all of it
            argv = ([setsid] if setsid else []) + ["/bin/sh", "-c", command]
        if self.user:
            # as root, through a helper that exposes the job folder to the job's user and becomes it
            cfg: Dict[str, Any] = {"user": list(self.user), "job_root": self.folder.root, "cwd": self.folder.task_dir}
            if self.namespaces is not None:
                ns_pid, pidns = self.namespaces()
                if ns_pid is None:
                    raise RuntimeError("the job's sandbox has ended")
                cfg.update(ns_pid=ns_pid, pidns=pidns, cgroups=self.cgroups)
            argv = [sys.executable, "-I", "-S", SHELL_HELPER, json.dumps(cfg), *argv]
        return ShellCommand(argv, env, self.folder.task_dir)
