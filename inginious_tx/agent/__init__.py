"""Agents: the :class:`Agent` (protocol side) and the backends that run jobs.

Backends are plugins of the ``inginious_tx.agent_backends`` entry point group
(``mock``, ``local``, ``docker``), each a class called as
``Backend(reactor, config)``; :mod:`inginious_tx.agent.task` is the contract
between an agent and a grading task.
"""

from .core import Agent
from .result import RESULT_TYPES, AgentConfig, JobResult

__all__ = ["Agent", "AgentConfig", "JobResult", "RESULT_TYPES"]
