"""``twistd inginious-agent``: command-line options and ``makeService``.

The twistd plugin in ``twisted/plugins/inginious_tx_services.py`` names this
module; nothing here imports the reactor until :func:`makeService` runs.
Agent backends are the plugins of the ``inginious_tx.agent_backends`` entry
point group, chosen with ``--kind``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import replace
from typing import Any, Dict, List

from twisted.python import usage

from .._http import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, local_endpoint
from .._options import CommandOptions, at_least_one, plugin_listing, positive_float, print_and_exit
from ..plugin import AGENT_BACKENDS, PluginError, available, load
from ..transport import DEFAULT_MAX_FRAME, Limits, check_endpoint
from .feedback import OutputLimits
from .limits import DEFAULT_MAXIMA, JobMaxima
from .result import AgentConfig
from .ssh_options import SSH_OPTIONS, ssh_server

__all__ = ["Options", "makeService", "GROUP", "DEFAULT_KIND"]

GROUP = AGENT_BACKENDS
#: The kind used without ``--kind``: the one that isolates untrusted code.
DEFAULT_KIND = "docker"
_OUTPUT = OutputLimits()


def _dialect(value: str) -> str:
    if value not in ("0.6", "0.9"):
        raise ValueError(f"{value!r} is not a dialect: 0.6 or 0.9")
    return value


def missing_extra(backend_class: Any) -> str:
    """Why ``backend_class`` cannot run here ('' if it can): a module it needs is not installed.

    An agent backend lists the modules it imports lazily as ``requires``
    (module names) and the package extra that brings them as ``extra``.
    """
    absent = []
    for module in getattr(backend_class, "requires", ()):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent.append(module)
    if not absent:
        return ""
    extra = getattr(backend_class, "extra", None)
    fix = f"pip install 'inginious-tx[{extra}]'" if extra else f"pip install {' '.join(absent)}"
    return f"needs the Python package(s) {', '.join(absent)}, not installed: {fix}"


def kinds() -> List[str]:
    """Names of the installed agent backends."""
    return sorted(available(GROUP))


def kind_listing() -> str:
    """One line per installed agent backend: its name and the first line of its docstring."""
    return plugin_listing(kinds(), lambda name: load(GROUP, name), DEFAULT_KIND)


class Options(CommandOptions):
    """Options of ``twistd inginious-agent``."""

    command = "inginious-agent"
    config_section = "agent"
    repeatable = ("environment", "option")

    synopsis = "--backend ENDPOINT [--kind KIND] [--slots N] [--tasks DIR] [--environment NAME[=IMAGE]]... [options]"

    optFlags = [
        ["list-kinds", None, "Print the installed agent backends (--kind values) and exit."],
        ["allow-network", None, "Give jobs the network when they ask for it (else such jobs are answered 'crash')."],
        [
            "allow-run-cmd",
            None,
            "Run a job's own command (run_cmd) instead of its task's run file (else such jobs are answered 'crash').",
        ],
    ]

    optParameters = [
        [
            "backend",
            "b",
            None,
            "Endpoint of the backend's agent listener: zmq:tcp://HOST:PORT, zmq:ipc:///PATH, "
            "tcp:HOST:PORT, unix:/PATH or ssl:... (required). Credentials go in the string: "
            "ssl:host=H:port=P:caCertsFile=SERVER-CA:certKey=CERT:privateKey=KEY, or "
            "zmq:tcp://H:P?curve-secret=OURS.key_secret&curve-server=SERVER.key (see docs/security.rst).",
        ],
        ["kind", "k", DEFAULT_KIND, "Agent backend that runs the jobs (see --list-kinds)."],
        [
            "slots",
            "s",
            None,
            "Jobs run at once; announced to the backend [default: the number of CPUs]",
            at_least_one,
        ],
        ["tasks", "t", None, "Folder of the courses: TASKS/COURSE_ID/TASK_ID/run (needed by local and docker)."],
        ["name", "n", None, "Name shown by the backend in queue snapshots [default: HOSTNAME-KIND]."],
        [
            "silence-timeout",
            None,
            10.0,
            "Seconds without a ping from the backend after which the agent reconnects and says hello again.",
            positive_float,
        ],
        ["max-frame", None, DEFAULT_MAX_FRAME, "Largest message accepted from the backend, in bytes.", at_least_one],
        [
            "max-archive",
            None,
            _OUTPUT.max_archive,
            "Largest archive a job may send back, in bytes; a larger one makes the result an 'error'.",
            at_least_one,
        ],
        [
            "max-time",
            None,
            DEFAULT_MAXIMA.max_time,
            "Most CPU seconds a job gets; a job asking for more (or for no limit) gets this.",
            at_least_one,
        ],
        [
            "max-hard-time",
            None,
            DEFAULT_MAXIMA.max_hard_time,
            "Most wall-clock seconds a job gets; a job asking for more (or for no limit) gets this.",
            at_least_one,
        ],
        [
            "max-memory",
            None,
            DEFAULT_MAXIMA.max_memory,
            "Most memory a job gets, in MB; a job asking for more (or for no limit) gets this.",
            at_least_one,
        ],
        ["max-stdout", None, _OUTPUT.max_stdout, "Bytes of a job's stdout sent back (the rest is cut).", at_least_one],
        ["max-stderr", None, _OUTPUT.max_stderr, "Bytes of a job's stderr sent back (the rest is cut).", at_least_one],
        [
            "dialect",
            None,
            None,
            "INGInious protocol the backend speaks: 0.6 (INGInious 0.6, inginious-tx) or 0.9 "
            "(INGInious 0.7 to 0.9.x, and inginious-tx) [default: 0.6; 0.9 for the mcq kind, which needs it].",
            _dialect,
        ],
        [
            "environment-type",
            None,
            None,
            "With --dialect 0.9: the environment type the environments are announced under "
            "[default: docker for the docker kind, else the kind's name: local, mock].",
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics of the containers prepared ahead at /metrics on this endpoint "
            "(9100, tcp:9100, tcp:9100:interface=0.0.0.0, unix:/path; needs prometheus-client). "
            "No authentication; 127.0.0.1 unless an interface is named. [default: none]",
        ],
        [
            "metrics-max-connections",
            None,
            DEFAULT_MAX_CONNECTIONS,
            "Most open connections of the metrics endpoint; further ones close the oldest idle one.",
            at_least_one,
        ],
        [
            "metrics-idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds a metrics connection may stay idle between requests before it is closed.",
            positive_float,
        ],
        *SSH_OPTIONS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self["environments"] = []
        self["options"] = {}
        self.longdesc = (
            "Run INGInious grading jobs for a backend (0.6 dialect, or 0.9 with --dialect 0.9).\n"
            f"Agent backends installed ({GROUP} entry points): {', '.join(kinds()) or 'none'}. "
            "mock answers without running anything (tests, benchmarks): the job's input keys "
            "@mock_result, @mock_grade, @mock_delay, @mock_fail, or --option result=/grade=/delay=/fail=, decide. "
            "local runs TASKS/COURSE/TASK/run as a child process: a sandbox for trusted code and "
            "development only (see inginious_tx.agent.local). "
            "docker runs each job in a container of the environment's image. "
            "mcq grades multiple-choice and match problems as INGInious 0.9's mcq agent does "
            "(0.9 dialect, environment type and name mcq; see docs/mcq.rst). "
            "Every kind applies the maxima: time and memory above --max-time, --max-hard-time and --max-memory "
            "are capped; the network and run_cmd are refused unless --allow-network / --allow-run-cmd."
        )

    def opt_environment(self, value: str) -> None:
        """Environment offered: NAME (mock, local; default: default) or NAME=IMAGE (docker, required); repeatable"""
        name = value.split("=", 1)[0].strip()
        if not name:
            raise usage.UsageError(f"--environment {value!r}: the NAME is empty")
        self["environments"].append(value)

    def opt_option(self, value: str) -> None:
        """KEY=VALUE passed to the agent backend (e.g. network_isolation=best-effort); repeatable"""
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise usage.UsageError(f"--option {value!r}: expected KEY=VALUE")
        self["options"][key.strip()] = val

    opt_e = opt_environment
    opt_o = opt_option

    def postOptions(self) -> None:
        if self["list-kinds"]:
            print_and_exit(kind_listing())
        if not self["backend"]:
            raise usage.UsageError("--backend ENDPOINT is required (e.g. zmq:tcp://127.0.0.1:2001)")
        try:
            check_endpoint(self["backend"], listening=False)
        except ValueError as e:
            raise usage.UsageError(f"--backend: {e}")
        try:
            self["backend_class"] = load(GROUP, self["kind"])
        except PluginError as e:
            raise usage.UsageError(f"--kind {self['kind']!r}: {e}")
        missing = missing_extra(self["backend_class"])
        if missing:
            raise usage.UsageError(f"--kind {self['kind']}: {missing}")
        if self["ssh-port"] is not None and importlib.util.find_spec("twisted.conch") is None:
            raise usage.UsageError(
                "--ssh-port: the SSH debug server needs Twisted's conch, which is not installed: "
                "pip install 'inginious-tx[ssh]'"
            )
        if self["metrics"] is not None:
            self._check_metrics()
        required = getattr(self["backend_class"], "dialect", None)
        if self["dialect"] is None:
            self["dialect"] = required or "0.6"
        elif required is not None and self["dialect"] != required:
            raise usage.UsageError(f"--kind {self['kind']} speaks only the {required} dialect (--dialect {required})")
        if self["environment-type"] is not None and not self["environment-type"].strip():
            raise usage.UsageError("--environment-type: the type is empty")
        if self["tasks"] is not None and not os.path.isdir(self["tasks"]):
            raise usage.UsageError(f"--tasks {self['tasks']!r} is not a folder")
        if self["slots"] is None:
            self["slots"] = os.cpu_count() or 1
        if self["name"] is None:
            self["name"] = f"{socket.gethostname()}-{self['kind']}"
        self["limits"] = Limits(max_frame=self["max-frame"], max_send_buffer=max(4 * self["max-frame"], 1 << 20))
        self["result_limits"] = replace(
            _OUTPUT, max_archive=self["max-archive"], max_stdout=self["max-stdout"], max_stderr=self["max-stderr"]
        )
        # A kind that runs nothing (mcq) has no network or command to refuse.
        runs_code = getattr(self["backend_class"], "runs_code", True)
        self["maxima"] = JobMaxima(
            max_time=self["max-time"],
            max_hard_time=self["max-hard-time"],
            max_memory=self["max-memory"],
            allow_network=bool(self["allow-network"]) or not runs_code,
            allow_run_cmd=bool(self["allow-run-cmd"]) or not runs_code,
        )
        self["config"] = AgentConfig(
            tasks_dir=os.path.abspath(self["tasks"]) if self["tasks"] else None,
            environments=list(self["environments"]),
            slots=self["slots"],
            options=dict(self["options"]),
            output_limits=self["result_limits"],
        )

    def _check_metrics(self) -> None:
        from ..transport.stream import check_stream_endpoint

        try:
            check_stream_endpoint(local_endpoint(self["metrics"]), listening=True)
        except ValueError as e:
            raise usage.UsageError(
                f"--metrics: {e} (expected PORT, tcp:PORT, tcp:PORT:interface=ADDRESS or unix:/PATH)"
            )
        if importlib.util.find_spec("prometheus_client") is None:
            raise usage.UsageError(
                "--metrics needs the Python package prometheus-client, not installed: "
                "pip install 'inginious-tx[metrics]'"
            )


def makeService(options: Dict[str, Any]) -> Any:
    """The agent service for twistd, on the global (chosen) reactor, in a
    :class:`~inginious_tx._twistd.StartGuard`: if it cannot start (its SSH
    debug port is taken...), the process ends with a non-zero status."""
    from twisted.internet import reactor

    from .._twistd import guarded
    from .core import Agent

    try:
        backend = options["backend_class"](reactor, options["config"])
    except (ValueError, OSError) as e:
        raise SystemExit(f"inginious-agent: the {options['kind']} backend cannot start: {e}")
    agent = Agent(
        reactor,
        backend,
        options["name"],
        options["slots"],
        options["backend"],
        limits=options["limits"],
        silence_timeout=options["silence-timeout"],
        result_limits=options["result_limits"],
        dialect=options["dialect"],
        environment_type=options["environment-type"],
        maxima=options["maxima"],
        ssh_debug=ssh_server(reactor, options),
    )
    agent.setName("inginious-agent")
    first = []
    if options.get("metrics"):
        from .metrics import AgentMetricsService, agent_registry

        first.append(
            AgentMetricsService(
                reactor,
                agent_registry(backend),
                options["metrics"],
                max_connections=options["metrics-max-connections"],
                idle_timeout=options["metrics-idle-timeout"],
            )
        )
    # the metrics first: an agent whose metrics cannot listen ends before it registers
    return guarded(reactor, "inginious-agent", *first, agent)
