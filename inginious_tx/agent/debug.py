"""What an agent backend offers for debugging a running job (no Conch needed here; see :mod:`.ssh`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from twisted.internet import defer
from zope.interface import Interface

from ..messages import BackendJobId

__all__ = ["ShellCommand", "IDebugSandbox", "ISSHDebugBackend"]


@dataclass(frozen=True)
class ShellCommand:
    """A process to start on the agent's host that runs inside the job's sandbox."""

    argv: List[str]
    env: Dict[str, str]
    path: str
    uid: Optional[int] = None
    gid: Optional[int] = None


class IDebugSandbox(Interface):
    """A running job's sandbox, as SSH sessions see it."""

    def command(command: Optional[str], tty: bool, term: str) -> ShellCommand:
        """How to run ``sh -c command`` (or an interactive shell when None) inside the sandbox."""


class ISSHDebugBackend(Interface):
    """An agent backend whose jobs can be debugged over SSH."""

    def debug_sandbox(job_id: BackendJobId) -> defer.Deferred:
        """Fires with the job's :class:`IDebugSandbox` once its sandbox is up, or None if the job ended first."""
