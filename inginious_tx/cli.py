"""``inginious-tx``: submit jobs to a grading backend and look at its queue.

Arguments and input files are checked before the reactor starts; the
conversation with the backend runs under :func:`twisted.internet.task.react`;
what the command has to say is printed once the reactor has stopped (progress
lines, which must appear while jobs run, are the only output written from the
reactor thread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, NoReturn, Optional, Sequence, TextIO, Tuple

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults
from twisted.python.failure import Failure

from . import __version__
from .client import BackendUnavailable, Client, ClientJobResult, EnvironmentUnavailable, QueueSnapshot

__all__ = ["main", "build_parser", "EXIT_CODES"]

DEFAULT_BACKEND = "zmq:tcp://127.0.0.1:2000"
BACKEND_ENV = "INGINIOUS_TX_BACKEND"
ENDPOINT_FORMS = "zmq:tcp://HOST:PORT, zmq:ipc:///PATH, tcp:HOST:PORT, unix:/PATH or ssl:HOST:PORT"

EXIT_SUCCESS = 0
EXIT_FAILED = 1
EXIT_OTHER = 2
EXIT_USAGE = 64
EXIT_NO_ENVIRONMENT = 65
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_INTERRUPTED = 130

#: Exit status -> meaning, as --help shows it.
EXIT_CODES = {
    EXIT_SUCCESS: "every job succeeded (queue, environments: the backend answered)",
    EXIT_FAILED: "a job failed (and none ended otherwise)",
    EXIT_OTHER: "a job ended with another result: error, crash, timeout, overflow, killed",
    EXIT_USAGE: "bad usage: bad option or argument, bad endpoint string, bad --input or input file",
    EXIT_NO_ENVIRONMENT: "no agent offers the environment asked for",
    EXIT_UNAVAILABLE: "the backend is unreachable, or was lost before it answered",
    EXIT_SOFTWARE: "internal error (a bug, or a broken transport plugin)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); pending jobs were asked to stop",
}

#: Seconds granted to killed jobs to report "killed" once --timeout has passed.
KILL_GRACE = 5.0


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 64."""


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
        description="Talk to an INGInious 0.6 compatible grading backend (inginious-tx or INGInious itself).",
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


# ---------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------


def _read_text(path: str, what: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path} is not UTF-8 text: {e}")


def _input_pairs(pairs: Sequence[str]) -> Dict[str, Any]:
    data: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--input expects KEY=VALUE, got {pair!r}")
        if value.startswith("@") and len(value) > 1:
            value = _read_text(value[1:], "input value file")
        data[key] = value
    return data


def _input_file(path: str) -> Dict[str, Any]:
    text = _read_text(path, "input file")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UsageError(f"input file {path} is not valid JSON: {e}")
    if not isinstance(data, dict):
        raise UsageError(f"input file {path} must hold a JSON object (KEY: VALUE), not a {_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


def load_inputs(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The inputdata of every job to submit, in order (before --repeat)."""
    pairs = _input_pairs(args.input)
    bases = [_input_file(p) for p in args.input_file] or [{}]
    return [{**base, **pairs} for base in bases]


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

_ORDER = ("success", "failed", "error", "crash", "timeout", "overflow", "killed")


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def format_result(result: ClientJobResult) -> str:
    """A result as a person reads it."""
    lines = [f"result: {result.result}", f"grade: {result.grade:g}"]
    if result.text:
        lines += ["feedback:", _indent(result.text)]
    if result.problems:
        lines.append("problems:")
        for pid, (ptype, ptext) in sorted(result.problems.items()):
            lines.append(f"  {pid}: {ptype}")
            if ptext:
                lines.append(_indent(ptext))
    return "\n".join(lines)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain text table; columns in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: List[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return "\n".join(line(r) for r in cells)


@dataclass
class Outcome:
    """What one job ended with, and when."""

    result: ClientJobResult
    latency: float


def summarize(outcomes: Sequence[Outcome]) -> Dict[str, Any]:
    counts: Dict[str, int] = {}
    for o in outcomes:
        counts[o.result.result] = counts.get(o.result.result, 0) + 1
    latencies = sorted(o.latency for o in outcomes)
    grades = [o.result.grade for o in outcomes]
    return {
        "jobs": len(outcomes),
        "by_result": {k: counts[k] for k in sorted(counts, key=lambda k: (_ORDER + (k,)).index(k))},
        "mean_grade": statistics.fmean(grades) if grades else None,
        "latency_s": {
            "mean": statistics.fmean(latencies),
            "median": statistics.median(latencies),
            "max": latencies[-1],
        }
        if latencies
        else None,
    }


def format_summary(summary: Dict[str, Any]) -> str:
    total = summary["jobs"]
    rows = [(k, n, f"{100.0 * n / total:.1f}%") for k, n in summary["by_result"].items()]
    rows.append(("total", total, "100.0%"))
    text = format_table(("RESULT", "JOBS", "SHARE"), rows, right=(1, 2))
    if summary["mean_grade"] is not None:
        text += f"\nmean grade: {summary['mean_grade']:.2f}"
    lat = summary["latency_s"]
    if lat is not None:
        text += f"\nlatency: mean {lat['mean']:.3f} s, median {lat['median']:.3f} s, max {lat['max']:.3f} s"
    return text


def format_queue(snapshot: QueueSnapshot) -> str:
    def when(t: int) -> str:
        return "-" if t < 0 else time.strftime("%H:%M:%S", time.localtime(t))

    running = [
        (j.job_id, "yes" if j.is_mine else "", j.agent_name, j.task, j.launcher, when(j.started_at), when(j.max_end))
        for j in snapshot.running
    ]
    waiting = [
        (n, j.job_id, "yes" if j.is_mine else "", j.task, j.launcher, j.time_limit)
        for n, j in enumerate(snapshot.waiting, 1)
    ]
    parts = [f"running jobs: {len(running)}"]
    if running:
        parts.append(format_table(("JOB ID", "MINE", "AGENT", "TASK", "LAUNCHER", "STARTED", "ENDS BY"), running))
    parts.append(f"waiting jobs: {len(waiting)}")
    if waiting:
        parts.append(format_table(("#", "JOB ID", "MINE", "TASK", "LAUNCHER", "TIME LIMIT"), waiting, right=(0, 5)))
    return "\n".join(parts)


class Progress:
    """Progress of several jobs on ``stream``: a bar redrawn in place on a
    terminal, one line per finished job otherwise (logs stay readable)."""

    WIDTH = 30

    def __init__(self, stream: TextIO, total: int, tty: Optional[bool] = None) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty() if tty is None else tty
        self.done = 0
        self.counts: Dict[str, int] = {}

    def start(self) -> None:
        if self.tty:
            self._draw()

    def job_done(self, outcome: Outcome) -> None:
        self.done += 1
        r = outcome.result
        self.counts[r.result] = self.counts.get(r.result, 0) + 1
        if self.tty:
            self._draw()
        else:
            self.stream.write(
                f"[{self.done}/{self.total}] {r.job_id}: {r.result} (grade {r.grade:g}) in {outcome.latency:.3f} s\n"
            )
            self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        counts = "  ".join(f"{k} {self.counts[k]}" for k in sorted(self.counts, key=lambda k: (_ORDER + (k,)).index(k)))
        self.stream.write(f"\r[{bar}] {self.done}/{self.total}  {counts}\x1b[K")
        self.stream.flush()


def exit_status(results: Sequence[ClientJobResult]) -> int:
    if any(r.backend_unavailable for r in results):
        return EXIT_UNAVAILABLE
    if any(r.result not in ("success", "failed") for r in results):
        return EXIT_OTHER
    if any(r.result == "failed" for r in results):
        return EXIT_FAILED
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


class CommandError(Exception):
    """Ends the command with one line on stderr and ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Report:
    """What the command prints after the reactor stops."""

    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)
    status: int = EXIT_SUCCESS


def _connect(reactor: Any, args: argparse.Namespace) -> Client:
    from .plugin import PluginError
    from .transport import UnknownEndpoint

    client = Client(
        reactor,
        args.backend,
        name="inginious-tx-cli",
        connect_timeout=args.connect_timeout,
        dialect=args.dialect,
        environment_type=args.environment_type,
    )
    try:
        return client.start()
    except UnknownEndpoint as e:
        raise CommandError(str(e), EXIT_USAGE)
    except PluginError as e:
        raise CommandError(str(e), EXIT_SOFTWARE)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        # Twisted's endpoint parser is not picky about what it raises.
        hint = "" if "expected" in str(e) else f" (expected {ENDPOINT_FORMS})"
        raise CommandError(f"bad backend endpoint {args.backend!r}: {e}{hint}", EXIT_USAGE)


async def _ready(client: Client, args: argparse.Namespace, environment: Optional[str] = None) -> Tuple[str, ...]:
    try:
        if environment is None:
            return await client.wait_until_ready(timeout=args.connect_timeout)
        return await client.wait_for_environment(environment, timeout=args.connect_timeout)
    except EnvironmentUnavailable as e:
        raise CommandError(str(e), EXIT_NO_ENVIRONMENT)
    except BackendUnavailable:
        raise CommandError(
            f"backend unreachable at {args.backend} (no answer within {args.connect_timeout:g} s)", EXIT_UNAVAILABLE
        )


class _Run:
    """One command under the reactor: its client, its deadline, Ctrl-C."""

    def __init__(self, reactor: Any, report: Report) -> None:
        self.reactor = reactor
        self.report = report
        self.client: Optional[Client] = None
        #: job id -> the Deferred of its result, for --timeout
        self.jobs: Dict[str, Deferred] = {}
        self.finished: Deferred = Deferred()
        self.was_interrupted = False
        self._timers: List[Any] = []

    def arm_deadline(self, seconds: float) -> None:
        self._timers.append(self.reactor.callLater(seconds, self._deadline))

    def _deadline(self) -> None:
        client = self.client
        if client is None or self.finished.called:
            return
        pending = list(client.pending)
        for job_id in pending:
            client.kill_job(job_id)
        self._timers.append(self.reactor.callLater(KILL_GRACE, self._give_up, pending))

    def _give_up(self, job_ids: List[str]) -> None:
        for job_id in job_ids:
            d = self.jobs.get(job_id)
            if d is not None and not d.called:
                d.cancel()

    def interrupted(self) -> Optional[Deferred]:
        """Ctrl-C or a signal: ask the backend to stop our jobs, end with 130."""
        if self.finished.called:
            return None
        client = self.client
        self.was_interrupted = True
        self.report.stderr.append("inginious-tx: interrupted")
        self.report.status = EXIT_INTERRUPTED
        if client is not None:
            for job_id in list(client.pending):
                client.kill_job(job_id)
        self.finished.callback(None)
        from twisted.internet.task import deferLater

        # A moment for the kill requests to leave before the sockets close.
        return deferLater(self.reactor, 0.2, lambda: None)

    async def execute(self, coroutine: Any) -> None:
        try:
            await coroutine
        except CommandError as e:
            self.report.stderr.append(f"inginious-tx: {e}")
            self.report.status = e.status
        finally:
            for timer in self._timers:
                if timer.active():
                    timer.cancel()
            if self.client is not None:
                await self.client.stop()


async def run_submit(
    reactor: Any, args: argparse.Namespace, inputs: List[Dict[str, Any]], report: Report, run: _Run
) -> None:
    client = run.client = _connect(reactor, args)
    await _ready(client, args, args.environment)
    course, task = args.task
    jobs = [data for data in inputs for _ in range(args.repeat)]
    progress = Progress(sys.stderr, len(jobs)) if len(jobs) > 1 else None
    if progress is not None:
        progress.start()
    outcomes: List[Optional[Outcome]] = [None] * len(jobs)

    def submit(index: int, data: Dict[str, Any]) -> Deferred:
        t0 = reactor.seconds()
        job_id = uuid.uuid4().hex
        d = run.jobs[job_id] = client.new_job(
            course,
            task,
            data,
            args.environment,
            time_limit=args.time_limit,
            hard_time_limit=args.hard_time_limit,
            mem_limit=args.mem_limit,
            enable_network=args.network,
            priority=args.priority,
            launcher=args.launcher,
            job_id=job_id,
        )

        def gave_up(failure: Any) -> ClientJobResult:
            failure.trap(CancelledError)
            text = f"no result within --timeout {args.timeout:g} s (the backend was asked to kill the job)"
            return ClientJobResult.made_up(job_id, "crash", text)

        def landed(result: ClientJobResult) -> None:
            outcomes[index] = outcome = Outcome(result, reactor.seconds() - t0)
            if progress is not None:
                progress.job_done(outcome)

        return d.addErrback(gave_up).addCallback(landed)

    try:
        waits = [submit(i, data) for i, data in enumerate(jobs)]
    except ValueError as e:  # a field the protocol cannot carry
        raise CommandError(f"cannot submit the job: {e}", EXIT_USAGE)
    if args.timeout is not None:
        run.arm_deadline(args.timeout)
    await gatherResults(waits, consumeErrors=True)
    if progress is not None:
        progress.finish()

    done = [o for o in outcomes if o is not None]
    results = [o.result for o in done]
    if not run.was_interrupted:
        report.status = exit_status(results)
    if len(done) == 1:
        if args.json:
            report.stdout.append(json.dumps({**results[0].to_json(), "latency_s": done[0].latency}, indent=2))
        else:
            report.stdout.append(format_result(results[0]))
    else:
        summary = summarize(done)
        if args.json:
            entries = [{**o.result.to_json(), "latency_s": o.latency} for o in done]
            report.stdout.append(json.dumps({"results": entries, "summary": summary}, indent=2))
        else:
            report.stdout.append(format_summary(summary))
    lost = [r for r in results if r.backend_unavailable]
    if lost:
        report.stderr.append(f"inginious-tx: {lost[0].text} ({args.backend}; {len(lost)} job(s) without a result)")


async def run_queue(reactor: Any, args: argparse.Namespace, report: Report, run: _Run) -> None:
    client = run.client = _connect(reactor, args)
    await _ready(client, args)
    try:
        snapshot = await client.get_queue()
    except BackendUnavailable as e:
        raise CommandError(f"{e} ({args.backend})", EXIT_UNAVAILABLE)
    if args.json:
        from dataclasses import asdict

        report.stdout.append(json.dumps(asdict(snapshot), indent=2))
    else:
        report.stdout.append(format_queue(snapshot))


async def run_environments(reactor: Any, args: argparse.Namespace, report: Report, run: _Run) -> None:
    client = run.client = _connect(reactor, args)
    environments = await _ready(client, args)
    if args.dialect == "0.9":
        # Every (type, name), as TYPE/NAME.
        by_type = client.environments_by_type
        environments = tuple(f"{t}/{n}" for t, names in by_type.items() for n in names)
    if args.json:
        report.stdout.append(json.dumps(sorted(environments)))
    elif environments:
        report.stdout.append("\n".join(sorted(environments)))
    else:
        report.stderr.append("inginious-tx: no agent offers any environment right now")


def _reactor_main(reactor: Any, command: Any, report: Report) -> Deferred:
    run = _Run(reactor, report)
    reactor.addSystemEventTrigger("before", "shutdown", run.interrupted)
    work = ensureDeferred(run.execute(command(reactor, run)))

    def settle(result: Any) -> Any:
        if not run.finished.called:
            if isinstance(result, Failure):
                run.finished.errback(result)
            else:
                run.finished.callback(None)
        return None

    work.addBoth(settle)
    return run.finished


def _start_logging(verbose: bool) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = LogLevel.info if verbose else LogLevel.error
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """The ``inginious-tx`` console script."""
    args = build_parser().parse_args(argv)
    try:
        inputs = load_inputs(args) if args.command == "submit" else []
    except UsageError as e:
        sys.stderr.write(f"inginious-tx: {e}\n")
        sys.exit(EXIT_USAGE)

    if args.command == "submit":

        def command(reactor: Any, run: _Run) -> Any:
            return run_submit(reactor, args, inputs, report, run)
    elif args.command == "queue":

        def command(reactor: Any, run: _Run) -> Any:
            return run_queue(reactor, args, report, run)
    else:

        def command(reactor: Any, run: _Run) -> Any:
            return run_environments(reactor, args, report, run)

    _start_logging(args.verbose)
    report = Report()
    from twisted.internet.task import react

    try:
        react(_reactor_main, (command, report))
    except SystemExit as e:
        if e.code not in (0, None) and report.status == EXIT_SUCCESS:
            # react reports an unexpected failure (already logged) as 1.
            report.status = EXIT_SOFTWARE
    for text in report.stdout:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
    for text in report.stderr:
        sys.stderr.write(text + "\n")
    sys.exit(report.status)


if __name__ == "__main__":
    main()
