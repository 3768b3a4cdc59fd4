"""The INGInious 0.9 dialect (0.7 to 0.9.x): its eighteen messages and its
:class:`Dialect`.  See ``PROTOCOL-0.9.md``."""

from ._dialect import V09 as DIALECT
from ._types09 import (
    AgentHello,
    AgentJobDone,
    AgentJobSSHDebug,
    AgentJobStarted,
    BackendGetQueue,
    BackendJobDone,
    BackendJobSSHDebug,
    BackendJobStarted,
    BackendKillJob,
    BackendNewJob,
    BackendUpdateEnvironments,
    ClientGetQueue,
    ClientHello,
    ClientKillJob,
    ClientNewJob,
    JobId,
    Ping,
    Pong,
    SPResult,
    Unknown,
)

#: Every message class of the dialect.
ALL_MESSAGES = DIALECT.messages
load = DIALECT.load

__all__ = [
    "DIALECT", "ALL_MESSAGES", "load", "JobId", "SPResult",
    "ClientHello", "ClientNewJob", "ClientKillJob", "ClientGetQueue", "BackendUpdateEnvironments",
    "BackendJobStarted", "BackendJobDone", "BackendJobSSHDebug", "BackendGetQueue", "BackendNewJob",
    "BackendKillJob", "AgentHello", "AgentJobStarted", "AgentJobDone", "AgentJobSSHDebug", "Ping", "Pong",
    "Unknown",
]  # fmt: skip
