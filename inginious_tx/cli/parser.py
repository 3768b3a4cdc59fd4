"""The command line of ``inginious-tx``: options, their checks, their help."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Tuple

from .. import __version__
from .exit_codes import EXIT_CODES, EXIT_USAGE

__all__ = ["build_parser", "DEFAULT_BACKEND", "BACKEND_ENV", "ENDPOINT_FORMS", "KILL_GRACE"]

DEFAULT_BACKEND = "zmq:tcp://127.0.0.1:2000"
BACKEND_ENV = "INGINIOUS_TX_BACKEND"
ENDPOINT_FORMS = "zmq:tcp://HOST:PORT, zmq:ipc:///PATH, tcp:HOST:PORT, unix:/PATH or ssl:HOST:PORT"

#: Seconds granted to killed jobs to report "killed" once --timeout has passed.
KILL_GRACE = 5.0


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on exit status 64 (argparse's own 2 means "other result" here)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def _task(text: str) -> Tuple[str, str]:
    course, sep, task = text.partition("/")
    if not sep or not course or not task or "/" in task:
        raise argparse.ArgumentTypeError(f"{text!r} is not COURSE/TASK")
    return course, task


def _exit_codes_text() -> str:
    return "exit status:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the command)."""
    parser = _Parser(
        prog="inginious-tx",
        description="Talk to an INGInious grading backend (inginious-tx, or INGInious itself) in the 0.6 or the 0.9 "
        "dialect. The default is 0.6: pass --dialect 0.9 to talk to a stock INGInious 0.7 to 0.9.x backend, which "
        "stops on a 0.6 message.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_exit_codes_text(),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--backend",
            metavar="ENDPOINT",
            default=os.environ.get(BACKEND_ENV, DEFAULT_BACKEND),
            help=f"the backend's client endpoint: {ENDPOINT_FORMS} (default: ${BACKEND_ENV} or {DEFAULT_BACKEND}); "
            "credentials go in the string: ssl:...:caCertsFile=CA:certKey=CERT:privateKey=KEY or "
            "zmq:...?curve-secret=FILE&curve-server=FILE",
        )
        p.add_argument(
            "--connect-timeout",
            metavar="S",
            type=_seconds,
            default=10.0,
            help="how long to wait for the backend (and for the environment) before giving up (default: 10)",
        )
        p.add_argument(
            "--wait-for-backend",
            action="store_true",
            help="retry a refused connection until --connect-timeout (a backend still starting); "
            "without it, a refused connection ends the command at once with exit status 69",
        )
        p.add_argument(
            "--dialect",
            choices=("0.6", "0.9"),
            default="0.6",
            help="the protocol the backend speaks: 0.6 (INGInious 0.6, inginious-tx; the default) or 0.9 "
            "(INGInious 0.7 to 0.9.x, inginious-tx)",
        )
        p.add_argument(
            "--environment-type",
            metavar="TYPE",
            default="docker",
            help="with --dialect 0.9: the type of --environment (default: docker)",
        )
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
        p.add_argument("-v", "--verbose", action="store_true", help="log the conversation on stderr")

    submit = sub.add_parser(
        "submit",
        help="submit a job (or several) and print the result",
        description="Submit jobs and wait for their results. One job per --input-file (or one job without any), "
        "each repeated --repeat times; --input pairs apply to every job. Several jobs show a progress bar "
        "on stderr (plain lines when stderr is not a terminal) and end with a summary table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_exit_codes_text() + "\n\nWith several jobs, the status is that of the worst result "
        "(success < failed < other), and 69 if the backend was lost.",
    )
    submit.add_argument("task", metavar="COURSE/TASK", type=_task, help="the task to run")
    submit.add_argument(
        "-i",
        "--input",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="one input field (repeatable); KEY=@FILE reads the value from FILE",
    )
    submit.add_argument(
        "-f",
        "--input-file",
        metavar="FILE.json",
        action="append",
        default=[],
        help="a JSON object of input fields, one job per file (repeatable; - reads stdin)",
    )
    submit.add_argument(
        "-e", "--environment", metavar="NAME", default="default", help="the environment to run in (default: default)"
    )
    submit.add_argument("--time-limit", metavar="S", type=_positive_int, default=30, help="CPU seconds (default: 30)")
    submit.add_argument(
        "--hard-time-limit",
        metavar="S",
        type=_positive_int,
        default=None,
        help="wall-clock seconds (default: the agent's)",
    )
    submit.add_argument("--mem-limit", metavar="MB", type=_positive_int, default=100, help="megabytes (default: 100)")
    submit.add_argument("--priority", metavar="N", type=_int, default=0, help="lower runs first (default: 0)")
    submit.add_argument("--network", action="store_true", help="give the job network access")
    submit.add_argument("--launcher", default="inginious-tx", help="who launched the job, for the backend's logs")
    submit.add_argument("--repeat", metavar="N", type=_positive_int, default=1, help="submit each job N times")
    submit.add_argument(
        "--archive-dir",
        metavar="DIR",
        default=None,
        help="save each job's archive (the files its task put aside, a .tgz) as DIR/JOB_ID.tgz; "
        "made if missing (default: not saved; --json carries it in base64)",
    )
    submit.add_argument(
        "--timeout",
        metavar="S",
        type=_seconds,
        default=None,
        help=f"give up on results after S seconds: pending jobs are killed and, after {KILL_GRACE:g} s more, "
        "reported as crashed (default: wait as long as it takes)",
    )

    queue = sub.add_parser(
        "queue",
        help="show the running and waiting jobs",
        description="Show the backend's running jobs and its waiting jobs, in the order they will run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_exit_codes_text(),
    )
    envs = sub.add_parser(
        "environments",
        help="list the environments the agents offer",
        description="List the environments that at least one live agent offers (with --dialect 0.9: as TYPE/NAME).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_exit_codes_text(),
    )
    for p in (submit, queue, envs):
        common(p)
    return parser
