"""The INGInious 0.6 dialect: its eighteen messages and its :class:`Dialect`.

The same names as :mod:`inginious_tx.messages`, which still means 0.6.
"""

from ._dialect import V06 as DIALECT
from ._types import (
    AgentHello,
    AgentJobDone,
    AgentJobSSHDebug,
    AgentJobStarted,
    BackendGetQueue,
    BackendJobDone,
    BackendJobId,
    BackendJobSSHDebug,
    BackendJobStarted,
    BackendKillJob,
    BackendNewJob,
    BackendUpdateContainers,
    ClientGetQueue,
    ClientHello,
    ClientJobId,
    ClientKillJob,
    ClientNewJob,
    Ping,
    Pong,
    SPResult,
    Unknown,
)

#: Every message class of the dialect.
ALL_MESSAGES = DIALECT.messages
load = DIALECT.load

__all__ = [
    "DIALECT", "ALL_MESSAGES", "load", "BackendJobId", "ClientJobId", "SPResult",
    "ClientHello", "ClientNewJob", "ClientKillJob", "ClientGetQueue", "BackendUpdateContainers",
    "BackendJobStarted", "BackendJobDone", "BackendJobSSHDebug", "BackendGetQueue", "BackendNewJob",
    "BackendKillJob", "AgentHello", "AgentJobStarted", "AgentJobDone", "AgentJobSSHDebug", "Ping", "Pong",
    "Unknown",
]  # fmt: skip
