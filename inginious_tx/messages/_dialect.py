"""Dialects: which message set, which type key, how to decode and encode."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Tuple

from . import _types, _types09
from ._meta import _TYPE_KEYS, MessageError, MessageMeta, load_dialect

__all__ = ["Dialect", "DIALECTS", "get_dialect", "V06", "V09"]


class Dialect:
    """One wire dialect of the INGInious protocol.

    ``name`` is ``"0.6"`` or ``"0.9"``; ``registry`` maps a wire type to its
    class, ``classes`` a class name to its class (both dialects have a
    ``ClientHello``); ``load`` decodes this dialect only, ``dump`` encodes a
    message of this dialect.
    """

    __slots__ = ("name", "type_key", "messages", "registry", "classes")

    def __init__(self, name: str, messages: Tuple[type, ...]):
        self.name = name
        self.type_key = _TYPE_KEYS[name]
        self.messages = messages
        self.registry: Mapping[str, type] = MappingProxyType(MessageMeta.registries[name])
        self.classes: Mapping[str, type] = MappingProxyType({cls.__name__: cls for cls in messages})

    def load(self, data: bytes) -> Any:
        """Decode one message of this dialect; raises :class:`MessageError` only."""
        return load_dialect(data, self.name)

    def dump(self, message: Any) -> bytes:
        """Encode ``message``, which must belong to this dialect."""
        if getattr(type(message), "dialect", None) != self.name:
            raise MessageError(
                f"cannot encode {type(message).__name__} as {self.name}: it is not a {self.name} message",
                dialect=self.name,
            )
        data: bytes = message.dump()
        return data

    def __repr__(self) -> str:
        return f"<Dialect {self.name}>"

    def __reduce__(self) -> Any:
        return (get_dialect, (self.name,))


#: The INGInious 0.6 dialect (snake_case ``"type"``).
V06 = Dialect("0.6", _types.MESSAGES)
#: The INGInious 0.7 to 0.9.x dialect (class name in ``"@type"``).
V09 = Dialect("0.9", _types09.MESSAGES)
#: Every dialect by name.
DIALECTS: Mapping[str, Dialect] = MappingProxyType({"0.6": V06, "0.9": V09})


def get_dialect(name: str) -> Dialect:
    """The dialect called ``name`` ("0.6" or "0.9"); ValueError otherwise."""
    try:
        return DIALECTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dialect {name!r} (known: {', '.join(DIALECTS)})") from None
