"""INGInious 0.9's own command lines, run by inginious-tx's services.

``inginious-tx-agent-docker`` and ``inginious-tx-backend`` take the arguments
of ``inginious-agent-docker`` and ``inginious-backend`` (INGInious 0.9.2), so
that an operator's systemd units and compose files change only the program's
name.  Each translates them into the options of ``twistd inginious-agent`` or
``twistd inginious-backend`` (:func:`agent_docker_argv`, :func:`backend_argv`;
the table is in ``docs/inginious09.rst``) and runs that service as
``twistd -n`` does: in the foreground, no pid file, the log on standard
error.  The exit status is non-zero when the service cannot start (bad
arguments, an endpoint that cannot be bound, an agent backend that refuses
its configuration).

Arguments after ``--`` go to the twistd service unchanged, for what INGInious
has no option for (``-- --policy fair --status 8080``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, List, Optional, Sequence

__all__ = [
    "DEFAULT_DEBUG_PORTS",
    "agent_docker_argv",
    "backend_argv",
    "zmq_endpoint",
    "stderr_observer",
    "run_twistd",
    "agent_docker_main",
    "backend_main",
]

#: INGInious' default range of ports for remote debugging; our SSH server uses its first port.
DEFAULT_DEBUG_PORTS = "64120-64130"

#: Critical log events seen by :func:`stderr_observer` (a service that failed to start logs one).
_critical: List[str] = []


def zmq_endpoint(address: str, what: str) -> str:
    """INGInious' ZeroMQ address (``tcp://HOST:PORT``, ``ipc:///PATH``) as our endpoint string."""
    if address.startswith("zmq:"):
        address = address[4:]
    if not (address.startswith("tcp://") or address.startswith("ipc://")) or address.endswith("//"):
        raise ValueError(f"{what}: {address!r} is not a ZeroMQ address (tcp://HOST:PORT or ipc:///PATH)")
    return "zmq:" + address


def _debug_port(ports: str) -> str:
    """The first port of INGInious' ``--debug-ports FIRST-LAST`` (our one SSH server serves every session)."""
    first, _, last = ports.partition("-")
    try:
        low = int(first)
        high = int(last) if last else low
    except ValueError:
        raise ValueError(f"--debug-ports: {ports!r} is not a port range (FIRST-LAST, e.g. {DEFAULT_DEBUG_PORTS})")
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"--debug-ports: {ports!r} is not a port range (FIRST-LAST, e.g. {DEFAULT_DEBUG_PORTS})")
    return str(low)


def _split(argv: Sequence[str]) -> tuple[List[str], List[str]]:
    """INGInious' arguments, and ours after ``--``."""
    args = list(argv)
    if "--" in args:
        i = args.index("--")
        return args[:i], args[i + 1 :]
    return args, []


def _agent_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inginious-tx-agent-docker",
        description="inginious-tx's Docker agent with the command line of INGInious 0.9's inginious-agent-docker. "
        "Arguments after -- go to 'twistd inginious-agent' unchanged.",
    )
    p.add_argument("backend", help="the backend's agent address, tcp://HOST:PORT or ipc:///PATH")
    p.add_argument("--friendly-name", help="name shown by the backend [default: HOSTNAME-docker]")
    p.add_argument(
        "--debug-host",
        help="address sent to clients for SSH debug sessions; the SSH server then listens on every interface "
        "[default: 127.0.0.1 only]",
    )
    p.add_argument(
        "--debug-ports",
        default=DEFAULT_DEBUG_PORTS,
        help="INGInious' debug port range; our one SSH server listens on its first port "
        f"[default: {DEFAULT_DEBUG_PORTS}]",
    )
    p.add_argument("--tmpdir", help="where job folders are made [default: a fresh temporary folder]")
    p.add_argument("--concurrency", type=int, help="jobs at once [default: two per CPU core, as INGInious]")
    p.add_argument("-v", "--verbose", action="store_true", help="accepted; the log is always at info level")
    p.add_argument("--debugmode", action="store_true", help="accepted, no effect")
    p.add_argument(
        "--disable-autorestart", action="store_true", help="accepted, no effect (the agent never restarts itself)"
    )
    p.add_argument("--ssh", action="store_true", help="accepted (ssh_student tasks), see docs/inginious09.rst")
    p.add_argument(
        "--runtime",
        nargs="+",
        action="append",
        metavar="RUNTIME",
        help="RUNTIME TYPE [root] [shared]: run the environments with this OCI runtime and announce them "
        "under environment type TYPE (one --runtime per agent)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--tasks", help="the courses folder [default: ./tasks]")
    where.add_argument("--fs", choices=["local"], help="only 'local' (the same as --tasks)")
    p.add_argument("--fs-help", action="store_true", help="say what --fs local takes, and exit")
    p.add_argument(
        "--environment",
        action="append",
        default=[],
        metavar="NAME=IMAGE",
        help="(inginious-tx) an environment to offer besides those found by label; repeatable",
    )
    return p


def agent_docker_argv(argv: Sequence[str], cpu_count: Optional[int] = None) -> List[str]:
    """The ``twistd inginious-agent`` options for an ``inginious-agent-docker`` command line.

    Raises :class:`SystemExit` (status 2, message on stderr) for arguments INGInious would refuse,
    and :class:`ValueError` for values we cannot map.
    """
    ours, extra = _split(argv)
    args = _agent_parser().parse_args(ours)
    if args.fs_help:
        print("--fs local takes --tasks DIR, the courses folder [default: ./tasks]")
        raise SystemExit(0)
    out = ["--kind", "docker", "--dialect", "0.9", "--backend", zmq_endpoint(args.backend, "BACKEND")]
    out += ["--tasks", os.path.abspath(args.tasks or "./tasks")]
    concurrency = args.concurrency if args.concurrency is not None else 2 * (cpu_count or os.cpu_count() or 1)
    if concurrency < 1:
        raise ValueError(f"--concurrency: {concurrency} is not a positive number of jobs")
    out += ["--slots", str(concurrency)]
    if args.friendly_name:
        out += ["--name", args.friendly_name]
    out += ["--ssh-port", _debug_port(args.debug_ports)]
    if args.debug_host:
        out += ["--ssh-host", args.debug_host, "--ssh-interface", "0.0.0.0"]
    if args.tmpdir:
        out += ["--option", f"work_dir={os.path.abspath(args.tmpdir)}"]
    runtime: Optional[str] = None
    if args.runtime:
        if len(args.runtime) > 1:
            raise ValueError("--runtime: one runtime per agent here (start one agent per runtime)")
        spec = args.runtime[0]
        if len(spec) < 2 or any(flag not in ("root", "shared") for flag in spec[2:]):
            raise ValueError("--runtime: expected RUNTIME TYPE [root] [shared] (e.g. runc docker shared)")
        runtime = spec[0]
        out += ["--environment-type", spec[1]]
    for env in args.environment:
        if runtime is not None and ",runtime=" not in env:
            env = f"{env},runtime={runtime}"
        out += ["--environment", env]
    # as INGInious' agent: the images labelled org.inginious.grading.name, beside any --environment
    out += ["--option", "inginious_images=true"]
    if runtime is not None:
        out += ["--option", f"inginious_runtime={runtime}"]
    # INGInious' agent gives a job the network and runs its run_cmd when the task says so.
    out += ["--allow-network", "--allow-run-cmd"]
    return out + extra


def _backend_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inginious-tx-backend",
        description="inginious-tx's backend with the command line of INGInious 0.9's inginious-backend. "
        "Arguments after -- go to 'twistd inginious-backend' unchanged.",
    )
    p.add_argument("agent", help="where agents connect, tcp://HOST:PORT or ipc:///PATH")
    p.add_argument("client", help="where clients (frontends) connect, tcp://HOST:PORT or ipc:///PATH")
    p.add_argument("-v", "--verbose", action="store_true", help="accepted; the log is always at info level")
    p.add_argument("--debugmode", action="store_true", help="accepted, no effect")
    return p


def backend_argv(argv: Sequence[str]) -> List[str]:
    """The ``twistd inginious-backend`` options for an ``inginious-backend`` command line."""
    ours, extra = _split(argv)
    args = _backend_parser().parse_args(ours)
    return [
        "--agents",
        zmq_endpoint(args.agent, "AGENT_ADDR"),
        "--clients",
        zmq_endpoint(args.client, "CLIENT_ADDR"),
        *extra,
    ]


def stderr_observer() -> Any:
    """twistd's ``--logger``: the log as text on standard error, counting critical events."""
    from twisted.logger import LogLevel, formatEvent, textFileLogObserver

    text = textFileLogObserver(sys.stderr)

    def observe(event: Any) -> None:
        if event.get("log_level") == LogLevel.critical:
            _critical.append(formatEvent(event))
        text(event)

    from twisted.logger import ILogObserver
    from zope.interface import directlyProvides

    directlyProvides(observe, ILogObserver)
    return observe


def run_twistd(plugin: str, options: Sequence[str]) -> int:
    """Run ``twistd -n PLUGIN OPTIONS`` in this process; the exit status (1 if the service failed to start)."""
    from twisted.scripts.twistd import run

    del _critical[:]
    argv = ["-n", "--pidfile=", f"--logger={__name__}.stderr_observer", plugin, *options]
    saved = sys.argv
    sys.argv = [f"twistd {plugin}", *argv]
    try:
        run()
    finally:
        sys.argv = saved
    return 1 if _critical else 0


def _main(
    name: str, translate: Callable[[Sequence[str]], List[str]], plugin: str, argv: Optional[Sequence[str]]
) -> int:
    try:
        options = translate(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    return run_twistd(plugin, options)


def agent_docker_main(argv: Optional[Sequence[str]] = None) -> None:
    """``inginious-tx-agent-docker BACKEND_ADDR [options]``."""
    sys.exit(_main("inginious-tx-agent-docker", agent_docker_argv, "inginious-agent", argv))


def backend_main(argv: Optional[Sequence[str]] = None) -> None:
    """``inginious-tx-backend AGENT_ADDR CLIENT_ADDR``."""
    sys.exit(_main("inginious-tx-backend", backend_argv, "inginious-backend", argv))


if __name__ == "__main__":  # python -m inginious_tx.cli.inginious_compat agent-docker|backend ARGS...
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    mains = {"agent-docker": agent_docker_main, "backend": backend_main}
    if which not in mains:
        sys.exit("usage: python -m inginious_tx.cli.inginious_compat agent-docker|backend ARGS...")
    mains[which](sys.argv[2:])
