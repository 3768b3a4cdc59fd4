"""The INGInious 0.6 dialect: its eighteen messages and its :class:`Dialect`.

The same names as :mod:`inginious_tx.messages`, which still means 0.6.
"""

from ._dialect import V06 as DIALECT
from ._types import *  # noqa: F403  (the names are listed once, in _types.__all__)
from ._types import __all__ as _TYPES

#: Every message class of the dialect.
ALL_MESSAGES = DIALECT.messages
load = DIALECT.load

__all__ = ["DIALECT", "ALL_MESSAGES", "load", *_TYPES]
