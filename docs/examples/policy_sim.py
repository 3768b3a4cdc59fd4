"""Watch a scheduling policy at work in the real backend core, in memory.

A backend core, a mock agent with one slot and a client talk through
:class:`inginious_tx.testing.MemoryTransport` (every message is encoded and
decoded as on a real wire), on a :class:`twisted.internet.task.Clock`: no
socket, no real time, the same result on every run.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from twisted.internet.task import Clock

from inginious_tx.agent import Agent, AgentConfig
from inginious_tx.agent.mock import MockBackend
from inginious_tx.backend import Backend
from inginious_tx.client import Client
from inginious_tx.testing import MemoryTransport


def start_order(policy: Any, jobs: Sequence[Tuple[str, str, int]]) -> List[str]:
    """Submit ``jobs`` at once and return their ids in the order they started.

    ``jobs`` holds ``(job_id, course_id, priority)`` triples.  The agent has a
    single slot and each job takes one (simulated) second, so the first job
    starts at once and the policy orders all the others.
    """
    clock = Clock()
    wire = MemoryTransport(clock, autopump=True)
    backend = Backend(clock, policy)
    wire.listen(clock, "mem:clients", backend.client_sink())
    wire.listen(clock, "mem:agents", backend.agent_sink())
    backend.start()

    config = AgentConfig(environments=["default"], slots=1, options={"delay": 1})
    agent = Agent(clock, MockBackend(clock, config), "sim-agent", 1, "mem:agents", transport=wire)
    client = Client(clock, "mem:clients", "sim-client", transport=wire)
    agent.startService()
    client.start()
    clock.advance(0)  # deliver the hellos
    assert client.environments == ("default",), "the agent did not register"

    started: List[str] = []
    results = [
        client.new_job(course, "task", {}, job_id=job_id, priority=priority, on_started=started.append)
        for job_id, course, priority in jobs
    ]
    clock.advance(0)  # deliver the jobs: the first one starts
    for _ in jobs:
        clock.advance(1)  # one job ends, the policy picks the next
    assert all(d.called for d in results), "some jobs did not finish"

    client.stop()
    agent.stopService()
    backend.shutdown()
    clock.advance(1)  # let the agent's stop complete
    return started
