"""INGInious messages: the metaclass, the errors, the dialects.

The names here are the 0.6 dialect's, as they always were; the 0.9 dialect
is :mod:`inginious_tx.messages.v09` (and 0.6 is also :mod:`.v06`).
:func:`load_any` decodes a message of either dialect.
"""

from ._meta import (
    ExtraField,
    FieldError,
    MalformedMessage,
    MessageError,
    MessageMeta,
    MissingField,
    UnknownMessageType,
    WrongFieldType,
    load_any,
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

# After the types: the dialect modules name them.
from . import v06, v09  # noqa: E402
from ._dialect import DIALECTS, Dialect, get_dialect  # noqa: E402

__all__ = [
    "ALL_MESSAGES", "load", "load_any", "Dialect", "DIALECTS", "get_dialect", "v06", "v09",
    "MessageMeta", "MessageError", "MalformedMessage", "UnknownMessageType",
    "FieldError", "MissingField", "ExtraField", "WrongFieldType",
    "BackendJobId", "ClientJobId", "SPResult",
    # the message classes, as in ALL_MESSAGES (written out: type checkers read __all__ as text)
    "ClientHello", "ClientNewJob", "ClientKillJob", "ClientGetQueue",
    "BackendUpdateContainers", "BackendJobStarted", "BackendJobDone", "BackendJobSSHDebug", "BackendGetQueue",
    "BackendNewJob", "BackendKillJob",
    "AgentHello", "AgentJobStarted", "AgentJobDone", "AgentJobSSHDebug",
    "Ping", "Pong", "Unknown",
]  # fmt: skip
assert __all__[-len(ALL_MESSAGES) :] == [cls.__name__ for cls in ALL_MESSAGES]
