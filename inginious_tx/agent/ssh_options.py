"""The ``--ssh-*`` options of ``twistd inginious-agent`` (SSH debug, :mod:`.ssh`)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from .._options import positive_float
from .._reactor import CommonReactor

__all__ = ["SSH_OPTIONS", "ssh_server", "DEFAULT_KEYS_DIR"]

#: Where the SSH host key is kept unless ``--ssh-keys`` says otherwise.
DEFAULT_KEYS_DIR = "~/.inginious-tx/ssh-keys"


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"not a TCP port: {value}")
    return port


def _count(value: str) -> int:
    count = int(value)
    if count < 1:
        raise ValueError(f"not a positive count: {value}")
    return count


SSH_OPTIONS: List[List[Any]] = [
    [
        "ssh-port",
        None,
        None,
        "Serve SSH debug sessions of debug='ssh' jobs on this TCP port (0: any free port); without it, "
        "such jobs are refused.",
        _port,
    ],
    [
        "ssh-interface",
        None,
        "127.0.0.1",
        "Address the SSH debug server listens on (0.0.0.0: every interface).",
    ],
    [
        "ssh-host",
        None,
        None,
        "Address sent to clients for SSH debug sessions [default: --ssh-interface, or this machine's name "
        "when that is 0.0.0.0].",
    ],
    ["ssh-keys", None, DEFAULT_KEYS_DIR, "Folder of the SSH debug server's host key (made on first use, kept)."],
    [
        "ssh-max-time",
        None,
        1800.0,
        "Longest wall-clock time of a debug='ssh' job, in seconds (its own limit applies when shorter).",
        positive_float,
    ],
    [
        "ssh-max-connections",
        None,
        64,
        "Most SSH debug connections open at once; more are closed as they come (a flood cannot take the "
        "agent's file descriptors).",
        _count,
    ],
    [
        "ssh-max-unauthenticated",
        None,
        16,
        "Most SSH debug connections open at once that have not logged in yet; more are closed as they come.",
        _count,
    ],
    [
        "ssh-login-timeout",
        None,
        20.0,
        "Seconds an SSH debug connection has to log in before it is closed.",
        positive_float,
    ],
]


def ssh_server(reactor: CommonReactor, options: Dict[str, Any]) -> Optional[Any]:
    """The agent's :class:`~inginious_tx.agent.ssh.SSHDebugServer`, or None without ``--ssh-port``."""
    if options.get("ssh-port") is None:
        return None
    from .ssh import SSHDebugServer

    return SSHDebugServer(
        reactor,
        os.path.expanduser(options["ssh-keys"]),
        port=options["ssh-port"],
        interface=options["ssh-interface"],
        host=options["ssh-host"],
        max_time=options["ssh-max-time"],
        max_connections=options.get("ssh-max-connections", 64),
        max_unauthenticated=options.get("ssh-max-unauthenticated", 16),
        login_timeout=options.get("ssh-login-timeout", 20.0),
    )
