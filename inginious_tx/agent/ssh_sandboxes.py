"""What an SSH debug session runs in each agent backend's sandbox (see :mod:`.ssh`)."""

from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional, Tuple

from zope.interface import implementer

from .debug import IDebugSandbox, ShellCommand
from .job_folder import JobFolder

__all__ = ["DockerSandbox", "LocalSandbox"]


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
    """A shell in the job's task folder, with the job's environment, as the agent's (and the job's) user.

    It does not enter the job's namespaces or control groups: it sees what
    the local backend's jobs see of the host (see :mod:`.local`).
    """

    def __init__(self, folder: JobFolder, env: Dict[str, str], user: Optional[Tuple[int, int]] = None) -> None:
        self.folder = folder
        self.env = env
        #: (uid, gid) the job runs as; None: the agent's own
        self.user = user

    def command(self, command: Optional[str], tty: bool, term: str) -> ShellCommand:
        env = dict(self.env)
        env["TERM"] = term
        if command is None:
            argv = ["/bin/sh", "-i"]
        else:
            setsid = shutil.which("setsid")
            # its own process group, so that the end of the job ends all of it
            argv = ([setsid] if setsid else []) + ["/bin/sh", "-c", command]
        uid, gid = self.user if self.user else (None, None)
        return ShellCommand(argv, env, self.folder.task_dir, uid, gid)
