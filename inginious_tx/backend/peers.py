"""What the backend keeps about each registered peer: :class:`ClientState`, :class:`AgentState`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, FrozenSet

from ..interfaces import IPeer

if TYPE_CHECKING:
    from .job import Job

__all__ = ["ClientState", "AgentState"]


class ClientState:
    """A registered client and the jobs it has waiting or running."""

    __slots__ = ("peer", "name", "jobs", "waiting", "held", "last_tick", "pinged")

    def __init__(self, peer: IPeer, name: str, tick: int) -> None:
        self.peer = peer
        self.name = name
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
        return f"<client {self.name!r} at {self.peer.description}>"


class AgentState:
    """A registered agent: its slots, environments and running jobs."""

    __slots__ = ("peer", "name", "slots", "environments", "running", "missed", "alive")

    def __init__(self, peer: IPeer, name: str, slots: int, environments: FrozenSet[str]) -> None:
        self.peer = peer
        self.name = name
        self.slots = slots
        self.environments = environments
        #: the backend's job key -> Job
        self.running: Dict[Any, Job] = {}
        #: pings sent since the last sign of life
        self.missed = 0
        self.alive = True

    def __repr__(self) -> str:
        return f"<agent {self.name!r} at {self.peer.description}, {len(self.running)}/{self.slots} busy>"
