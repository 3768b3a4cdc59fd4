"""``inginious-tx-agent-mcq``: INGInious' ``inginious-agent-mcq`` command line, run by our mcq agent.

An operator replacing INGInious 0.9's mcq agent keeps its command line::

    inginious-tx-agent-mcq tcp://backend:2001 --friendly-name mcq-1 --tasks /courses

Each option becomes one of ``twistd -n inginious-agent --kind mcq`` (see
``docs/mcq.rst`` for the table); what cannot be honoured (``--ptype``
Python problem classes, ``--fs`` file system providers) is refused with a
usage error rather than ignored.  Options of ours go after ``--``::

    inginious-tx-agent-mcq tcp://backend:2001 -- --silence-timeout 5 --max-frame 1000000
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

__all__ = ["main", "build_parser", "twistd_arguments", "endpoint_of"]


def endpoint_of(address: str) -> str:
    """Our endpoint string for an INGInious backend address (``tcp://H:P`` -> ``zmq:tcp://H:P``).

    Our own endpoint strings (``zmq:...``, ``tcp:H:P``, ``ssl:...``, ``unix:...``) pass unchanged.
    """
    if "://" in address and not address.startswith("zmq:"):
        return "zmq:" + address
    return address


def _concurrency(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The command line of INGInious 0.9.2's ``inginious-agent-mcq``, plus ``--concurrency``."""
    p = argparse.ArgumentParser(
        prog="inginious-tx-agent-mcq",
        description="Grade INGInious multiple-choice and match tasks (environment mcq/mcq) for a backend, "
        "as INGInious' inginious-agent-mcq does. Options after -- go to twistd inginious-agent.",
    )
    p.add_argument("backend", help="address of the backend's agent endpoint: tcp://HOST:PORT (or any endpoint of ours)")
    p.add_argument("--friendly-name", default="", help="name the backend shows for this agent [default: HOSTNAME-mcq]")
    p.add_argument("--tasks", default="./tasks", help="folder of the courses (TASKS/COURSE/TASK) [default: ./tasks]")
    p.add_argument(
        "--concurrency", type=_concurrency, default=None, help="jobs graded at once [default: the number of CPUs]"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="accepted for compatibility (we log at info level)")
    p.add_argument("--debugmode", action="store_true", help="accepted for compatibility (no effect)")
    p.add_argument(
        "--disable-autorestart",
        action="store_true",
        help="accepted for compatibility (our agent reconnects instead of restarting)",
    )
    p.add_argument("--ptype", nargs="+", help="refused: Python problem classes cannot be loaded by this agent")
    p.add_argument("--fs", help="refused: only a local --tasks folder is supported")
    p.add_argument("--fs-help", action="store_true", help="refused, as --fs")
    return p


def twistd_arguments(argv: Sequence[str]) -> List[str]:
    """The ``twistd`` arguments for an ``inginious-tx-agent-mcq`` command line (exits on a usage error)."""
    argv = list(argv)
    extra: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ptype:
        parser.error("--ptype: this agent grades multiple_choice and match problems only (see docs/mcq.rst)")
    if args.fs is not None or args.fs_help:
        parser.error("--fs: only a local --tasks folder is supported")
    if not os.path.isdir(args.tasks):
        parser.error(f"--tasks {args.tasks!r} is not a folder")
    out = ["-n", "--pidfile=", "inginious-agent", "--kind", "mcq", "--dialect", "0.9"]
    out += ["--backend", endpoint_of(args.backend), "--tasks", args.tasks]
    if args.friendly_name:
        out += ["--name", args.friendly_name]
    if args.concurrency is not None:
        out += ["--slots", str(args.concurrency)]
    return out + extra


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the mcq agent in the foreground until it is stopped (SIGINT, SIGTERM)."""
    from twisted.python import usage
    from twisted.scripts.twistd import ServerOptions, runApp

    arguments = twistd_arguments(sys.argv[1:] if argv is None else argv)
    config = ServerOptions()
    try:
        config.parseOptions(arguments)
    except usage.error as e:
        sys.stderr.write(f"inginious-tx-agent-mcq: {e}\n")
        raise SystemExit(64) from e
    runApp(config)


if __name__ == "__main__":
    main()
