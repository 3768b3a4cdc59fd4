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

# The 0.6 names, as they always were: listed once, in _types.__all__.
from ._types import *  # noqa: F403
from ._types import MESSAGES as ALL_MESSAGES
from ._types import __all__ as _TYPES

load = MessageMeta.load

from . import v06, v09  # noqa: E402
from ._dialect import DIALECTS, Dialect, get_dialect  # noqa: E402

__all__ = [
    "ALL_MESSAGES", "load", "load_any", "Dialect", "DIALECTS", "get_dialect", "v06", "v09",
    "MessageMeta", "MessageError", "MalformedMessage", "UnknownMessageType",
    "FieldError", "MissingField", "ExtraField", "WrongFieldType",
    *_TYPES,
]  # fmt: skip
