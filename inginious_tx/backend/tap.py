"""``twistd inginious-backend``: command-line options and ``makeService``.

The twistd plugin in ``twisted/plugins/inginious_tx_services.py`` names this
module; nothing here imports the reactor until :func:`makeService` runs, so
``twistd --reactor=...`` keeps working.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, List

from twisted.python import usage

from .._options import CommandOptions, at_least_one, count, limit, plugin_listing, positive_float, print_and_exit
from ..transport import DEFAULT_MAX_FRAME, check_endpoint
from ..transport.options import LISTENER_OPTIONS, limits_from
from .core import BackendSettings
from .policies import DEFAULT_POLICY, GROUP, available_policies, load_policy
from .roles import check_separate_credentials

__all__ = ["Options", "makeService", "DEFAULT_CLIENTS", "DEFAULT_AGENTS"]

#: Where clients are awaited when no ``--clients`` is given (INGInious 0.6's usual port).
DEFAULT_CLIENTS = "zmq:tcp://127.0.0.1:2000"
#: The usual agent endpoint (INGInious 0.6's port).  Not opened unless asked:
#: without ``--agents`` the backend has only its embedded agent and no agent endpoint.
DEFAULT_AGENTS = "zmq:tcp://127.0.0.1:2001"

_defaults = BackendSettings()


class Options(CommandOptions):
    """Options of ``twistd inginious-backend``."""

    command = "inginious-backend"
    config_section = "backend"
    repeatable = ("clients", "agents")

    synopsis = "[--clients ENDPOINT]... [--agents ENDPOINT]... [--policy NAME] [--status ENDPOINT] [options]"

    optFlags = [
        ["list-policies", None, "Print the installed scheduling policies and exit."],
    ]

    optParameters = [
        ["policy", "p", DEFAULT_POLICY, "Scheduling policy that orders waiting jobs (see --list-policies)."],
        [
            "max-retries",
            None,
            _defaults.max_retries,
            "Times a job is queued again after its agent was lost, before it is answered 'crash'.",
            count,
        ],
        [
            "ping-interval",
            None,
            _defaults.ping_interval,
            "Seconds between two pings to each agent.",
            positive_float,
        ],
        [
            "max-missed-pongs",
            None,
            _defaults.max_missed_pongs,
            "Pings in a row an agent may leave unanswered before it is considered gone.",
            at_least_one,
        ],
        [
            "max-waiting",
            None,
            _defaults.max_waiting,
            "Most jobs waiting in total; beyond, new jobs are answered 'crash' (queue full).",
            limit,
        ],
        [
            "max-waiting-per-client",
            None,
            None,
            "Most jobs waiting for one client [default: none, only --max-waiting applies]",
            limit,
        ],
        [
            "max-frame",
            None,
            DEFAULT_MAX_FRAME,
            "Largest message accepted, in bytes; a stream peer sending more is disconnected.",
            at_least_one,
        ],
        [
            "max-inputdata",
            None,
            _defaults.max_inputdata,
            "Largest inputdata of a job, in bytes (msgpack-encoded); a larger job is answered 'crash' at once.",
            limit,
        ],
        [
            "max-queued-bytes",
            None,
            _defaults.max_queued_bytes,
            "Most bytes of inputdata held for unanswered jobs (waiting or running) of all clients; "
            "a job beyond is answered 'crash' at once ('none': no limit).",
            limit,
        ],
        [
            "max-queued-bytes-per-client",
            None,
            _defaults.max_queued_bytes_per_client,
            "Most bytes of inputdata held for the unanswered jobs of one client ('none': no limit).",
            limit,
        ],
        [
            "client-silence-timeout",
            None,
            _defaults.client_silence_timeout,
            "Seconds after which a client with jobs that sent nothing (not even a ping) is considered gone "
            "(its waiting jobs are dropped, its running jobs killed).",
            positive_float,
        ],
        [
            "status",
            None,
            None,
            "Serve status pages over HTTP on this endpoint (8080, tcp:8080, tcp:8080:interface=0.0.0.0, "
            "unix:/path): / (HTML), /status.json, /metrics (Prometheus; needs prometheus-client). "
            "No authentication; 127.0.0.1 unless an interface is named. [default: none]",
        ],
        [
            "status-max-connections",
            None,
            64,
            "Most open connections of the status pages; further ones are closed as soon as made.",
            at_least_one,
        ],
        [
            "status-idle-timeout",
            None,
            15.0,
            "Seconds a status connection may stay idle between requests before it is closed.",
            positive_float,
        ],
        [
            "json-log",
            None,
            None,
            "Also write the log to this file ('-': standard output) as JSON lines, one object per event, "
            "with an event per job transition (job id, client, agent, environment, result); "
            "SIGHUP reopens the file (log rotation). [default: none]",
        ],
        [
            "embedded-slots",
            None,
            None,
            "Job slots of the embedded agent (which runs only without --agents) [default: 2]",
            at_least_one,
        ],
        [
            "tasks",
            None,
            None,
            "Courses folder (TASKS/COURSE/TASK/run) of the embedded agent (which runs only without --agents) "
            "[default: the bundled example course]",
        ],
        [
            "job-user",
            None,
            None,
            "One user the embedded agent runs every job as when the backend runs as root (NAME, UID or "
            "UID:GID, e.g. nobody) [default: a uid per running job, 64000 + 2 x slot]",
        ],
        [
            "client-idle-timeout",
            None,
            _defaults.client_idle_timeout,
            "Seconds after which a silent client with no job is forgotten (it must say hello again).",
            positive_float,
        ],
    ] + LISTENER_OPTIONS

    def __init__(self) -> None:
        super().__init__()
        self["clients"] = []
        self["agents"] = []
        self.longdesc = (
            "Queue the grading jobs of INGInious 0.9 (and 0.6) clients (frontends) and dispatch them to agents.\n"
            "Endpoints are Twisted endpoint strings (tcp:2000:interface=127.0.0.1, unix:/path, ssl:...) "
            "or zmq: followed by a ZeroMQ address (zmq:tcp://127.0.0.1:2000, zmq:ipc:///path).\n"
            f"Defaults: --clients {DEFAULT_CLIENTS} and no agent endpoint (the usual one is --agents "
            f"{DEFAULT_AGENTS}).\n"
            "Authentication: ssl:...:caCertsFile=CA.pem admits only peers with a certificate CA.pem signed; "
            "zmq:...?curve-secret=FILE&curve-allowed=DIR only peers whose CurveZMQ key is in DIR. Clients and "
            "agents need separate credentials (see docs/security.rst).\n"
            "Without --agents, an embedded local agent (--embedded-slots, --tasks) runs in the backend's process "
            "over the bundled example course, so that jobs can be submitted at once, and no agent endpoint is "
            "opened; it runs each job as a uid of its own (or --job-user) when the backend is root, and with "
            "the agent's safe maxima (no network, no run_cmd, capped time and memory). Production backends "
            "name their agent endpoints with --agents and run their agents apart.\n"
            f"Scheduling policies installed ({GROUP} entry points): {', '.join(available_policies())}."
        )

    def opt_clients(self, endpoint: str) -> None:
        """Endpoint where clients (frontends) connect; repeatable [default: zmq:tcp://127.0.0.1:2000]"""
        self["clients"].append(endpoint)

    def opt_agents(self, endpoint: str) -> None:
        """Endpoint agents connect to (e.g. zmq:tcp://127.0.0.1:2001); repeatable [default: none: an embedded agent]"""
        self["agents"].append(endpoint)

    opt_c = opt_clients
    opt_a = opt_agents

    def postOptions(self) -> None:
        if self["list-policies"]:
            print_and_exit(policy_listing())
        if not self["clients"]:
            self["clients"] = [DEFAULT_CLIENTS]
        self["embedded"] = not self["agents"]  # then no agent endpoint at all: nothing for an impostor
        self._check_embedded()
        self._check_endpoints()
        try:
            check_separate_credentials(self["clients"], self["agents"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        if self["status"] is not None and importlib.util.find_spec("prometheus_client") is None:
            raise usage.UsageError(
                "--status serves /metrics with prometheus-client, which is not installed: "
                "pip install 'inginious-tx[metrics]' (or pip install prometheus-client)"
            )
        if self["json-log"] is not None and self["json-log"] != "-":
            try:
                open(self["json-log"], "a").close()
            except OSError as e:
                raise usage.UsageError(f"--json-log {self['json-log']!r} cannot be written: {e.strerror}")
        try:
            load_policy(self["policy"])
        except LookupError as e:
            raise usage.UsageError(f"--policy {self['policy']!r}: {e}")
        self["settings"] = BackendSettings(
            max_retries=self["max-retries"],
            ping_interval=self["ping-interval"],
            max_missed_pongs=self["max-missed-pongs"],
            max_waiting=self["max-waiting"],
            max_waiting_per_client=self["max-waiting-per-client"],
            max_inputdata=self["max-inputdata"],
            max_queued_bytes=self["max-queued-bytes"],
            max_queued_bytes_per_client=self["max-queued-bytes-per-client"],
            client_silence_timeout=self["client-silence-timeout"],
            client_idle_timeout=self["client-idle-timeout"],
        )
        self["limits"] = limits_from(self)

    def _check_endpoints(self) -> None:
        """Every endpoint string parses (and its credential files read) now, not once twistd runs."""
        for option in ("clients", "agents"):
            for endpoint in self[option]:
                try:
                    check_endpoint(endpoint, listening=True)
                except ValueError as e:
                    raise usage.UsageError(f"--{option}: {e}")
        if self["status"] is not None:
            from ..transport.stream import check_stream_endpoint
            from .status import status_endpoint

            try:
                check_stream_endpoint(status_endpoint(self["status"]), listening=True)
            except ValueError as e:
                raise usage.UsageError(
                    f"--status: {e} (expected PORT, tcp:PORT, tcp:PORT:interface=ADDRESS or unix:/PATH)"
                )

    def _check_embedded(self) -> None:
        """Settle the embedded agent's tasks folder and slots (or refuse them with --agents)."""
        if not self["embedded"]:
            for name in ("tasks", "embedded-slots", "job-user"):
                if self[name] is not None:
                    raise usage.UsageError(f"--{name} is for the embedded agent, which runs only without --agents")
            return
        if self["embedded-slots"] is None:
            from ..embedded import DEFAULT_EMBEDDED_SLOTS

            self["embedded-slots"] = DEFAULT_EMBEDDED_SLOTS
        if self["tasks"] is None:
            from ..embedded import example_tasks_dir

            self["tasks"] = example_tasks_dir()
            if self["tasks"] is None:
                raise usage.UsageError(
                    "no --agents given and the bundled example course is missing: "
                    "give the embedded agent a courses folder (--tasks DIR) or name agent endpoints (--agents)"
                )
        elif not os.path.isdir(self["tasks"]):
            raise usage.UsageError(f"--tasks {self['tasks']!r} is not a folder")
        self["tasks"] = os.path.abspath(self["tasks"])
        from ..embedded import check_job_user

        try:
            check_job_user(self["job-user"])
        except ValueError as e:
            raise usage.UsageError(f"--job-user: {e}")


def policy_listing() -> str:
    """One line per installed policy: its name and the first line of its docstring."""
    return plugin_listing(available_policies(), load_policy, DEFAULT_POLICY)


def _share_descriptors(options: Any) -> None:
    """Lift the soft RLIMIT_NOFILE to the hard one, and lower ``--max-connections``
    and ``--status-max-connections`` if their sum would not fit in it (logged):
    no endpoint flooded with idle connections can take the descriptors the
    others need."""
    from dataclasses import replace

    from twisted.logger import Logger

    from ..transport.descriptors import raise_open_files_limit, share_descriptors

    log = Logger(namespace="inginious_tx.backend")
    limits = raise_open_files_limit()
    if limits is None:
        return
    before, soft = limits
    endpoints = len(options["clients"]) + len(options["agents"])
    status = options["status-max-connections"] if options.get("status") else 0
    share = share_descriptors(soft, endpoints, options["limits"].max_connections, status)
    raised = f" (raised from {before})" if soft != before else ""
    if share.lowered:
        options["limits"] = replace(
            options["limits"],
            max_connections=share.per_endpoint,
            max_pending=min(options["limits"].max_pending, share.per_endpoint),
        )
        if status:
            options["status-max-connections"] = share.status
        log.warn(
            "open files limit {soft}{raised}: connection caps lowered to fit, with {reserved} descriptors kept "
            "for the rest: {each} per client or agent endpoint (--max-connections){status}; raise the hard "
            "limit (ulimit -Hn, LimitNOFILE=) to keep more",
            soft=soft,
            raised=raised,
            reserved=share.reserved,
            each=share.per_endpoint,
            status=f", {share.status} for the status pages (--status-max-connections)" if status else "",
        )
    else:
        log.info(
            "open files limit {soft}{raised}: {endpoints} endpoint(s) of at most {each} connections{status}, "
            "{reserved} descriptors kept for the rest",
            soft=soft,
            raised=raised,
            endpoints=endpoints,
            each=share.per_endpoint,
            status=f", status pages at most {share.status}" if status else "",
            reserved=share.reserved,
        )


def makeService(options: Any) -> Any:
    """The backend service for twistd, on the global (chosen) reactor.

    That is a :class:`~inginious_tx._twistd.StartGuard` (a ``MultiService``
    named ``inginious-backend``) holding the :class:`BackendService`, and the
    embedded agent, the status pages and the JSON log when asked for: if one
    of them cannot start, the process ends with a non-zero status.
    """
    from twisted.application.service import IService
    from twisted.internet import reactor

    from .._twistd import guarded
    from .service import BackendService

    _share_descriptors(options)
    service = BackendService(
        reactor,
        options["clients"],
        options["agents"],
        policy=options["policy"],
        settings=options["settings"],
        limits=options["limits"],
    )
    extras: List[IService] = []
    if options.get("status"):
        from .status import StatusService

        extras.append(
            StatusService(
                reactor,
                service.backend,
                options["status"],
                max_connections=options["status-max-connections"],
                idle_timeout=options["status-idle-timeout"],
            )
        )
    if options.get("embedded"):  # last: no agent registers when a listener cannot start
        from ..embedded import embedded_agent

        slots = options["embedded-slots"]
        extras.append(
            embedded_agent(
                reactor,
                service.backend.agent_sink(),
                options["tasks"],
                slots,
                limits=options["limits"],
                options={"user": options["job-user"]} if options.get("job-user") else None,
                notice=f"no --agents given: running an embedded local agent with {slots} slots over "
                f"{options['tasks']} and no agent endpoint; production backends name their agent "
                "endpoints (--agents) and run their agents apart",
            )
        )
    first: List[IService] = []
    if options.get("json-log"):
        from .joblog import JsonLogService

        first.append(JsonLogService(service.backend, options["json-log"]))  # logs from the start to the end
    # The backend, then what serves beside it; twistd stops them all together,
    # and ends with a non-zero status if one cannot start (_twistd.StartGuard).
    return guarded(reactor, "inginious-backend", *first, service, *extras)
