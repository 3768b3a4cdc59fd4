"""Embedding the inginious-tx backend in your own Twisted application.

``BackendService`` is an ordinary Twisted service: put it in a
``MultiService`` next to whatever else the application runs (a web UI, a
metrics endpoint, an agent...), and stopping the application stops the
backend cleanly (every job still waiting or running is answered
``("crash", "backend shutting down")`` so that no frontend waits forever).

Run the backend alone, on INGInious' usual ports, until Ctrl-C::

    python examples/embed_backend.py

or run a self-contained demo (backend, one mock agent and one client in
this process, over a Unix socket and ZeroMQ IPC) that submits a few jobs,
prints their results and the queue, and exits::

    python examples/embed_backend.py --demo
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any, List, Optional, Sequence

# Run from a source checkout without installing.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.application.service import MultiService  # noqa: E402
from twisted.internet.defer import Deferred, gatherResults  # noqa: E402
from twisted.logger import Logger  # noqa: E402

from inginious_tx.backend import BackendService, BackendSettings, available_policies  # noqa: E402

log = Logger()


def build(reactor: Any, clients: List[str], agents: List[str], policy: str) -> MultiService:
    """The application: here only the backend, in a MultiService of our own."""
    application = MultiService()
    backend = BackendService(
        reactor,
        clients,
        agents,
        policy=policy,
        settings=BackendSettings(max_retries=2, max_waiting=10_000),
    )
    backend.setServiceParent(application)
    return application


async def demo(reactor: Any, application: MultiService, clients: str, agents: str) -> int:
    """Add a mock agent and a client to the application, grade a few jobs."""
    from inginious_tx.agent.core import Agent
    from inginious_tx.agent.mock import MockBackend
    from inginious_tx.agent.result import AgentConfig
    from inginious_tx.client import Client

    config = AgentConfig(environments=["default"], slots=2, options={"delay": 0.05})
    Agent(reactor, MockBackend(reactor, config), "demo-agent", 2, agents).setServiceParent(application)
    client = Client(reactor, clients, name="demo-client")
    client.setServiceParent(application)

    await client.wait_for_environment("default", timeout=10)
    jobs = [
        client.new_job("demo-course", f"task{i}", {"@mock_result": "success" if i % 3 else "failed"}) for i in range(6)
    ]
    snapshot = await client.get_queue()
    print(f"queue while grading: {len(snapshot.running)} running, {len(snapshot.waiting)} waiting")
    results = await gatherResults(jobs)
    for r in results:
        print(f"job {r.job_id[:8]}: {r.result} grade={r.grade}", flush=True)
    return 0 if len(results) == 6 else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run the inginious-tx backend inside a Twisted application.")
    parser.add_argument("--clients", action="append", help="client endpoint (repeatable)")
    parser.add_argument("--agents", action="append", help="agent endpoint (repeatable)")
    parser.add_argument("--policy", default="priority", choices=available_policies())
    parser.add_argument("--demo", action="store_true", help="run a short self-contained demo and exit")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    workdir = None
    if args.demo:
        workdir = tempfile.mkdtemp(prefix="itx-demo-")
        clients = [f"unix:{workdir}/clients.sock"]
        agents = [f"zmq:ipc://{workdir}/agents.ipc"]
    else:
        clients = args.clients or ["zmq:tcp://127.0.0.1:2000"]
        agents = args.agents or ["zmq:tcp://127.0.0.1:2001"]

    application = build(reactor, clients, agents, args.policy)
    application.startService()
    # Stopping the reactor (Ctrl-C, SIGTERM, or the end of the demo) stops
    # the application first, and waits for it.
    reactor.addSystemEventTrigger("before", "shutdown", application.stopService)

    status = [0]
    if args.demo:

        def finished(code: Any) -> None:
            status[0] = code if isinstance(code, int) else 1
            reactor.stop()

        d = Deferred.fromCoroutine(demo(reactor, application, clients[0], agents[0]))
        d.addErrback(lambda f: (log.failure("demo failed", f), 1)[1])
        d.addCallback(finished)

    reactor.run()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
    return status[0]


if __name__ == "__main__":
    raise SystemExit(main())
