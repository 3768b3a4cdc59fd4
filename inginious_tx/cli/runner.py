"""Running one ``inginious-tx`` command: the client under the reactor, deadlines, Ctrl-C, the report.

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
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Dict, List, NoReturn, Optional, Sequence, Tuple

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorCore
from twisted.python.failure import Failure

from .._reactor import CommonReactor
from ..client import BackendUnavailable, Client, ClientJobResult, EnvironmentUnavailable
from .exit_codes import (
    EXIT_CANTCREAT,
    EXIT_INTERRUPTED,
    EXIT_NO_ENVIRONMENT,
    EXIT_SOFTWARE,
    EXIT_SUCCESS,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    exit_status,
)
from .inputs import UsageError, load_inputs
from .output import Outcome, format_queue, format_result, format_summary, summarize
from .parser import ENDPOINT_FORMS, KILL_GRACE, build_parser
from .progress import Progress

__all__ = ["main", "CommandError", "Report"]

#: One command's conversation with the backend, run under the reactor.
Command = Callable[[CommonReactor, "_Run"], Coroutine[Any, Any, None]]


#: Seconds the command waits for its link to close once the backend was found unreachable.
UNAVAILABLE_STOP_WAIT = 0.2


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
    #: (path, content) of the archives to save, written once the reactor has stopped
    archives: List[Tuple[str, bytes]] = field(default_factory=list)


def _connect(reactor: CommonReactor, args: argparse.Namespace) -> Client:
    from ..plugin import PluginError
    from ..transport import UnknownEndpoint, check_endpoint

    try:
        check_endpoint(args.backend, listening=False)
    except UnknownEndpoint as e:
        raise CommandError(f"--backend: {e}", EXIT_USAGE)
    except ValueError as e:
        raise CommandError(f"--backend: {e} (expected {ENDPOINT_FORMS})", EXIT_USAGE)

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


async def _ready(
    reactor: CommonReactor, client: Client, args: argparse.Namespace, environment: Optional[str] = None
) -> Tuple[str, ...]:
    from .probe import unreachable

    if environment is None:
        waiting = client.wait_until_ready(timeout=args.connect_timeout)
    else:
        waiting = client.wait_for_environment(environment, timeout=args.connect_timeout)
    outcome: Deferred = Deferred()

    def settle(result: Any) -> None:
        if not outcome.called:
            outcome.callback(result)  # a Failure goes down the errback chain

    def refusal(why: Optional[str]) -> None:
        # A refusal is known at once: the command does not wait its whole --connect-timeout for it.
        if why and not outcome.called:
            outcome.errback(CommandError(f"backend unreachable at {args.backend}: {why}", EXIT_UNAVAILABLE))
            waiting.cancel()

    waiting.addBoth(settle)
    if not args.wait_for_backend:
        unreachable(reactor, args.backend, args.connect_timeout).addCallback(refusal)
    try:
        environments: Tuple[str, ...] = await outcome
        return environments
    except EnvironmentUnavailable as e:
        raise CommandError(str(e), EXIT_NO_ENVIRONMENT)
    except BackendUnavailable:
        why = await unreachable(reactor, args.backend, 1.0)  # the cause, if it is a refusal
        raise CommandError(
            f"backend unreachable at {args.backend} (no answer within {args.connect_timeout:g} s"
            f"{': ' + why if why else ''})",
            EXIT_UNAVAILABLE,
        )


class _Run:
    """One command under the reactor: its client, its deadline, Ctrl-C."""

    def __init__(self, reactor: CommonReactor, report: Report) -> None:
        self.reactor = reactor
        self.report = report
        self.client: Optional[Client] = None
        #: job id -> the Deferred of its result, for --timeout
        self.jobs: Dict[str, Deferred] = {}
        self.finished: Deferred = Deferred()
        self.was_interrupted = False
        self._timers: List[IDelayedCall] = []

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
        # Stopping the client writes the kill requests out before the link
        # closes; the reactor waits for that before it stops.
        return client.stop() if client is not None else None

    async def execute(self, coroutine: Coroutine[Any, Any, None]) -> None:
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
                stopping = self.client.stop()
                if self.report.status == EXIT_UNAVAILABLE:
                    # Nothing of ours can reach a backend that is not there: do not wait for a link
                    # still being made (a TLS handshake would hold the stop for seconds past --connect-timeout).
                    stopping.addTimeout(UNAVAILABLE_STOP_WAIT, self.reactor)
                try:
                    await stopping
                except (CancelledError, DeferredTimeout):
                    pass


async def run_submit(
    reactor: CommonReactor, args: argparse.Namespace, inputs: List[Dict[str, Any]], report: Report, run: _Run
) -> None:
    client = run.client = _connect(reactor, args)
    await _ready(reactor, client, args, args.environment)
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
    if args.archive_dir is not None:
        for r in results:
            if r.archive:
                report.archives.append((os.path.join(args.archive_dir, f"{r.job_id}.tgz"), r.archive))
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


async def run_queue(reactor: CommonReactor, args: argparse.Namespace, report: Report, run: _Run) -> None:
    client = run.client = _connect(reactor, args)
    await _ready(reactor, client, args)
    try:
        snapshot = await client.get_queue()
    except BackendUnavailable as e:
        raise CommandError(f"{e} ({args.backend})", EXIT_UNAVAILABLE)
    if args.json:
        from dataclasses import asdict

        report.stdout.append(json.dumps(asdict(snapshot), indent=2))
    else:
        report.stdout.append(format_queue(snapshot))


async def run_environments(reactor: CommonReactor, args: argparse.Namespace, report: Report, run: _Run) -> None:
    client = run.client = _connect(reactor, args)
    environments = await _ready(reactor, client, args)
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


def _reactor_main(reactor: CommonReactor, command: Command, report: Report) -> Deferred:
    run = _Run(reactor, report)
    IReactorCore(reactor).addSystemEventTrigger("before", "shutdown", run.interrupted)
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
    if getattr(args, "archive_dir", None) is not None:
        try:
            os.makedirs(args.archive_dir, exist_ok=True)
        except OSError as e:
            sys.stderr.write(f"inginious-tx: --archive-dir {args.archive_dir!r}: {e.strerror}\n")
            sys.exit(EXIT_USAGE)

    if args.command == "submit":

        def command(reactor: CommonReactor, run: _Run) -> Coroutine[Any, Any, None]:
            return run_submit(reactor, args, inputs, report, run)
    elif args.command == "queue":

        def command(reactor: CommonReactor, run: _Run) -> Coroutine[Any, Any, None]:
            return run_queue(reactor, args, report, run)
    else:

        def command(reactor: CommonReactor, run: _Run) -> Coroutine[Any, Any, None]:
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
    for path, content in report.archives:
        try:
            with open(path, "wb") as f:
                f.write(content)
            if len(report.archives) == 1 or args.verbose:
                report.stderr.insert(0, f"inginious-tx: archive saved as {path} ({len(content)} bytes)")
        except OSError as e:
            report.stderr.append(f"inginious-tx: cannot save the archive {path}: {e.strerror}")
            if report.status == EXIT_SUCCESS:
                report.status = EXIT_CANTCREAT
    for text in report.stdout:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
    for text in report.stderr:
        sys.stderr.write(text + "\n")
    sys.exit(report.status)
