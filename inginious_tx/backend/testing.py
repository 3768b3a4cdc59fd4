"""Test doubles for the backend core, for its tests and for policy authors.

:class:`FakePeer` records what the backend sends to it (after a round trip
through the wire encoding, either dialect, so a message that could not be sent fails the
test).  :func:`new_job` and :func:`job_done` build the messages a client and
an agent would send, with defaults for every field a test does not care
about.  Drive a :class:`~inginious_tx.backend.core.Backend` by calling its
handlers directly::

    clock = Clock()
    backend = Backend(clock, MyPolicy())
    client, agent = FakePeer(b"c"), FakePeer(b"a")
    backend.client_handler.client_hello(client, ClientHello("me"))
    backend.agent_handler.agent_hello(agent, agent_hello("a", 2, ["default"]))
    backend.client_handler.client_new_job(client, new_job("j1"))
    assert isinstance(agent.sent[-1], BackendNewJob)
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple, Type

from zope.interface import implementer

from ..interfaces import IPeer
from ..messages import AgentHello, AgentJobDone, ClientNewJob, load_any

__all__ = ["FakePeer", "new_job", "job_done", "agent_hello"]


@implementer(IPeer)
class FakePeer:
    """A peer that records the messages sent to it and its disconnection."""

    def __init__(self, address: bytes, description: Optional[str] = None, wire: bool = True) -> None:
        self.address = address
        self.description = description or address.decode("ascii", "replace")
        #: every message sent to this peer, decoded again from its bytes if ``wire``
        self.sent: List[Any] = []
        #: the reason given to :meth:`disconnect`, if it was called
        self.disconnected: Optional[str] = None
        #: how many times the backend accepted this peer's hello
        self.accepted_count = 0
        self._wire = wire

    def send(self, message: Any) -> None:
        self.sent.append(load_any(message.dump()) if self._wire else message)

    def accepted(self) -> None:
        self.accepted_count += 1

    def disconnect(self, reason: str = "disconnected") -> None:
        if self.disconnected is None:
            self.disconnected = reason

    def of_type(self, cls: Type[Any]) -> List[Any]:
        """The messages of class ``cls`` sent to this peer, in order."""
        return [m for m in self.sent if type(m) is cls]

    def take(self) -> List[Any]:
        """The messages sent so far, forgetting them."""
        sent, self.sent = self.sent, []
        return sent

    def __repr__(self) -> str:
        return f"<FakePeer {self.description}>"


def new_job(
    job_id: str,
    environment: str = "default",
    priority: int = 0,
    course_id: str = "course",
    task_id: str = "task",
    time_limit: int = 30,
    launcher: str = "test",
    inputdata: Optional[Dict[str, Any]] = None,
    debug: Any = False,
) -> ClientNewJob:
    """A :class:`ClientNewJob` with test defaults."""
    return ClientNewJob(
        job_id,
        priority,
        course_id,
        task_id,
        inputdata if inputdata is not None else {"q": "print(1)"},
        environment,
        False,
        time_limit,
        None,
        100,
        debug,
        launcher,
        None,
    )


def job_done(
    job_id: Tuple[bytes, str], result: str = "success", text: str = "ok", grade: float = 100.0
) -> AgentJobDone:
    """An :class:`AgentJobDone` for ``job_id`` (a backend job id)."""
    return AgentJobDone(job_id, (result, text), grade, {}, {}, {}, "", None, "", "")


def agent_hello(name: str, slots: int, environments: Iterable[str]) -> AgentHello:
    """An :class:`AgentHello` offering ``environments``."""
    return AgentHello(name, slots, {env: {"id": f"sha256:{env}", "created": 0, "ports": []} for env in environments})
