"""INGInious 0.6 messages: the metaclass, the eighteen types, the errors."""

from ._meta import (
    ExtraField,
    FieldError,
    MalformedMessage,
    MessageError,
    MessageMeta,
    MissingField,
    UnknownMessageType,
    WrongFieldType,
)
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

#: Every message class defined here, in the seed's order.
ALL_MESSAGES = (
    ClientHello, ClientNewJob, ClientKillJob, ClientGetQueue,
    BackendUpdateContainers, BackendJobStarted, BackendJobDone, BackendJobSSHDebug, BackendGetQueue,
    BackendNewJob, BackendKillJob,
    AgentHello, AgentJobStarted, AgentJobDone, AgentJobSSHDebug,
    Ping, Pong, Unknown,
)  # fmt: skip

load = MessageMeta.load

__all__ = [
    "ALL_MESSAGES", "load",
    "MessageMeta", "MessageError", "MalformedMessage", "UnknownMessageType",
    "FieldError", "MissingField", "ExtraField", "WrongFieldType",
    "BackendJobId", "ClientJobId", "SPResult",
    *(cls.__name__ for cls in ALL_MESSAGES),
]  # fmt: skip
