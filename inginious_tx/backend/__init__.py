"""The grading backend: queues clients' jobs and dispatches them to agents.

:class:`Backend` is the transport-free core (PROTOCOL.md section 4);
:class:`BackendService` runs it on real endpoints inside any Twisted
application; ``twistd inginious-backend`` (see :mod:`.tap`) runs it alone.
Scheduling policies live in :mod:`.policies` and are chosen by name.
"""

from .core import AgentState, Backend, BackendSettings, ClientState, Job
from .policies import (
    DEFAULT_POLICY,
    FairPolicy,
    PriorityPolicy,
    ShortestFirstPolicy,
    available_policies,
    load_policy,
)
from .service import BackendService

__all__ = [
    "Backend",
    "BackendSettings",
    "BackendService",
    "Job",
    "ClientState",
    "AgentState",
    "DEFAULT_POLICY",
    "PriorityPolicy",
    "FairPolicy",
    "ShortestFirstPolicy",
    "available_policies",
    "load_policy",
]
