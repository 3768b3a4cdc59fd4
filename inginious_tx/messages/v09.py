"""The INGInious 0.9 dialect (0.7 to 0.9.x): its eighteen messages and its
:class:`Dialect`.  See ``PROTOCOL-0.9.md``."""

from ._dialect import V09 as DIALECT
from ._types09 import *  # noqa: F403  (the names are listed once, in _types09.__all__)
from ._types09 import __all__ as _TYPES

#: Every message class of the dialect.
ALL_MESSAGES = DIALECT.messages
load = DIALECT.load

__all__ = ["DIALECT", "ALL_MESSAGES", "load", *_TYPES]
