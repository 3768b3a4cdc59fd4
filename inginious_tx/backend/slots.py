"""The free-slot index: which agents offer an environment, and which of them have a free slot.

Both maps are insertion-ordered sets (dicts with ``None`` values), so that
finding a free agent for an environment is O(1) and agents with a free slot
take jobs round-robin.  The index holds one invariant for the backend: an
agent is listed as free for every environment it offers exactly when it has
at least one free slot.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from .peers import AgentState

Environment = Tuple[str, str]

__all__ = ["SlotIndex"]


class SlotIndex:
    """Agents by environment, all of them and those with a free slot."""

    __slots__ = ("offering", "free")

    def __init__(self) -> None:
        #: environment -> agents offering it (insertion-ordered set)
        self.offering: Dict[Environment, Dict[AgentState, None]] = {}
        #: environment -> agents offering it with at least one free slot;
        #: read directly on the hot path (``free.get(env)``)
        self.free: Dict[Environment, Dict[AgentState, None]] = {}

    def add(self, agent: AgentState) -> None:
        """A new agent, all of whose slots are free."""
        for env in agent.environments:
            self.offering.setdefault(env, {})[agent] = None
            self.free.setdefault(env, {})[agent] = None

    def remove(self, agent: AgentState) -> None:
        """``agent`` is gone."""
        for env in agent.environments:
            offering = self.offering[env]
            del offering[agent]
            if not offering:
                del self.offering[env]
            free = self.free.get(env)
            if free is not None:
                free.pop(agent, None)
                if not free:
                    del self.free[env]

    def first_free(self, environment: Environment) -> Optional[AgentState]:
        """The next agent with a free slot for ``environment``, if any."""
        free = self.free.get(environment)
        return next(iter(free)) if free else None

    def take(self, agent: AgentState, environment: Environment) -> None:
        """``agent`` (listed as free) is about to run one more job of ``environment``.

        An agent whose last free slot this is leaves every free list;
        otherwise it goes to the back of ``environment``'s list (round-robin).
        """
        if len(agent.running) + 1 >= agent.slots:
            for env in agent.environments:
                free = self.free[env]
                del free[agent]
                if not free:
                    del self.free[env]
        else:
            free = self.free[environment]
            del free[agent]
            free[agent] = None

    def released(self, agent: AgentState) -> None:
        """One of ``agent``'s slots was freed and no job took it: list it if it was full."""
        if len(agent.running) == agent.slots - 1:
            for env in agent.environments:
                free = self.free.get(env)
                if free is None:
                    self.free[env] = {agent: None}
                else:
                    free[agent] = None

    def free_agents(self, environment: Environment) -> List[AgentState]:
        return list(self.free.get(environment, ()))

    def environments(self) -> Tuple[Environment, ...]:
        """Every environment at least one agent offers, sorted."""
        return tuple(sorted(self.offering))
