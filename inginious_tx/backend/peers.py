"""What the backend keeps about each registered peer: :class:`ClientState`, :class:`AgentState`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Tuple

from ..interfaces import IPeer

if TYPE_CHECKING:
    from .job import Job

__all__ = ["ClientState", "AgentState"]


class ClientState:
    """A registered client and the jobs it has waiting or running."""

    __slots__ = ("peer", "name", "dialect", "jobs", "waiting", "held", "last_tick", "pinged")

    def __init__(self, peer: IPeer, name: str, tick: int, dialect: Any = None) -> None:
        self.peer = peer
        self.name = name
        #: the adapter of its dialect (that of its hello), which builds what it is sent
        self.dialect = dialect
        #: client job id -> Job, for its waiting and running jobs
        self.jobs: Dict[str, Job] = {}
        #: how many of those are waiting
        self.waiting = 0
        #: bytes of inputdata of those jobs (see BackendSettings.max_queued_bytes_per_client)
        self.held = 0
        #: heartbeat tick of its last message
        self.last_tick = tick
        #: whether it ever sent Ping (then silence means it is gone)
        self.pinged = False

    def __repr__(self) -> str:
        return f"<client {self.name!r} at {self.peer.description} ({getattr(self.dialect, 'name', '?')})>"


class AgentState:
    """A registered agent: its slots, environments and running jobs."""

    __slots__ = ("peer", "name", "dialect", "slots", "environments", "running", "missed", "alive")

    def __init__(
        self, peer: IPeer, name: str, slots: int, environments: FrozenSet[Tuple[str, str]], dialect: Any = None
    ) -> None:
        self.peer = peer
        self.name = name
        #: the adapter of its dialect (that of its hello)
        self.dialect = dialect
        self.slots = slots
        #: the environments it offers, as (type, name)
        self.environments = environments
        #: the id it knows a job by -> Job
        self.running: Dict[Any, Job] = {}
        #: pings sent since the last sign of life
        self.missed = 0
        self.alive = True

    def __repr__(self) -> str:
        return f"<agent {self.name!r} at {self.peer.description}, {len(self.running)}/{self.slots} busy>"
