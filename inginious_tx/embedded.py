"""What wires a backend and an agent together in one process: the out-of-the-box grader.

``twistd -n inginious-backend`` without ``--agents`` runs one
:class:`~inginious_tx.agent.core.Agent` with the ``local`` agent backend over
the bundled example course (:func:`example_tasks_dir`), so that a newcomer can
submit a job at once.  Production backends name their agent endpoints and run
their agents apart (and untrusted code under Docker).

The agent talks to the backend through the in-memory transport
(:mod:`inginious_tx.transport.memory`) rather than through an agent endpoint:
no port to share with real agents, nothing to wait for at start-up, and it
works whatever the agent endpoints are.  Messages still go through ``dump()``
and ``load_any()``, so the backend sees exactly what a wire would bring.

This module is the one place that knows both the backend and the agent
packages (neither imports the other); ``twistd inginious-backend`` uses it.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Dict, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ._reactor import CommonReactor
from .agent.core import Agent
from .agent.local import LocalBackend, job_user
from .agent.result import AgentConfig
from .interfaces import IListener, IMessageSink, ITransport
from .transport import DEFAULT_LIMITS, Limits
from .transport.memory import MemoryConnection, MemoryTransport

__all__ = [
    "DEFAULT_EMBEDDED_SLOTS",
    "EMBEDDED_ENDPOINT",
    "EmbeddedAgent",
    "InProcessTransport",
    "embedded_agent",
    "example_tasks_dir",
    "check_job_user",
]

#: Job slots of the embedded agent when none is asked for.
DEFAULT_EMBEDDED_SLOTS = 2
#: The endpoint string the embedded agent "connects" to (shown in logs).
EMBEDDED_ENDPOINT = "in-process:embedded-agent"

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def example_tasks_dir() -> Optional[str]:
    """The bundled example course folder (holding ``demo/``), or None.

    An installed distribution ships it as the package data
    ``inginious_tx/example_tasks``; a source checkout (also an editable
    install) has it as ``examples/tasks`` beside the package.
    """
    for candidate in (
        os.path.join(_PACKAGE, "example_tasks"),
        os.path.join(os.path.dirname(_PACKAGE), "examples", "tasks"),
    ):
        if os.path.isdir(os.path.join(candidate, "demo")):
            return candidate
    return None


def check_job_user(name: Optional[str]) -> None:
    """Raise ValueError unless the embedded agent can run jobs as ``name``
    (``--job-user``; None: the local agent's default)."""
    job_user(name)


# -- the in-process link -----------------------------------------------------------


@implementer(ITransport)
class InProcessTransport(MemoryTransport):
    """The embedded agent's link: a :class:`MemoryTransport` on which
    ``server_sink`` (a backend's agent sink) listens as ``name``, and
    whose every connection, whatever its endpoint string, reaches it."""

    name = "in-process"

    def __init__(self, reactor: IReactorTime, server_sink: IMessageSink, name: str = EMBEDDED_ENDPOINT) -> None:
        super().__init__(reactor, autopump=True)
        self.server_sink = server_sink
        self.endpoint = name
        self.attach(name, server_sink)

    def handles(self, endpoint: str) -> bool:
        return endpoint.startswith("in-process:")

    def listen(
        self, reactor: object, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS
    ) -> Deferred[IListener]:
        return fail(ValueError("an in-process transport links to the sink it was made with: it cannot listen"))

    def connect(
        self, reactor: object, endpoint: str, sink: IMessageSink, limits: Limits = DEFAULT_LIMITS
    ) -> MemoryConnection:
        return super().connect(reactor, self.endpoint, sink, limits)


# -- the agent ---------------------------------------------------------------------


class EmbeddedAgent(Agent):
    """An :class:`Agent` that says, when it starts, why it is there."""

    def __init__(self, *args: Any, notice: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notice = notice

    def startService(self) -> None:
        if self.notice:
            self.log.info("{notice}", notice=self.notice)
        super().startService()


def embedded_agent(
    reactor: CommonReactor,
    agent_sink: IMessageSink,
    tasks_dir: str,
    slots: int = DEFAULT_EMBEDDED_SLOTS,
    *,
    name: Optional[str] = None,
    limits: Optional[Limits] = None,
    options: Optional[Dict[str, Any]] = None,
    notice: str = "",
) -> EmbeddedAgent:
    """A ``local`` agent over ``tasks_dir``, linked in-process to ``agent_sink``.

    ``agent_sink`` is a backend's agent sink
    (:meth:`~inginious_tx.backend.core.Backend.agent_sink`).  The result is a
    service: start and stop it with the backend's.  ``options`` are those of
    the local agent backend (``--option`` of ``twistd inginious-agent``).
    Raises ValueError if ``tasks_dir`` is not a folder.
    """
    if not os.path.isdir(tasks_dir):
        raise ValueError(f"the tasks folder {tasks_dir!r} does not exist")
    config = AgentConfig(tasks_dir=os.path.abspath(tasks_dir), slots=slots, options=dict(options or {}))
    backend = LocalBackend(reactor, config)
    return EmbeddedAgent(
        reactor,
        backend,
        name or f"{socket.gethostname()}-embedded",
        slots,
        EMBEDDED_ENDPOINT,
        transport=InProcessTransport(reactor, agent_sink),
        limits=limits,
        notice=notice,
    )
