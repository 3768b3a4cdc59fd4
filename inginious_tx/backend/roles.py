"""The backend's rule on credentials: clients and agents are told apart by them.

A CA trusted or a CurveZMQ key allowed on a client endpoint must not be on an
agent endpoint too: then a client could register as an agent (and see every
job's input) and an agent could submit jobs.  Transports say which
credentials two groups of endpoints share
(:func:`inginious_tx.transport.shared_credentials`); the rule is the
backend's, because the roles are.
"""

from __future__ import annotations

from typing import Sequence

from ..transport import shared_credentials

__all__ = ["check_separate_credentials"]


def check_separate_credentials(client_endpoints: Sequence[str], agent_endpoints: Sequence[str]) -> None:
    """Refuse credentials that would let one peer in both as a client and as an agent.

    Raises ValueError naming what is shared (see docs/security.rst).
    """
    for shared in shared_credentials(client_endpoints, agent_endpoints):
        fix = shared.fix.replace("their", "agents' and clients'").replace("give them", "give clients and agents")
        raise ValueError(
            f"the {shared.kind} {shared.name} is accepted both on the client endpoint {shared.first} "
            f"and on the agent endpoint {shared.second}: a client could register as an agent; {fix}"
        )
