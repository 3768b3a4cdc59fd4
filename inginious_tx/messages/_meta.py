"""The message metaclass: declaration checks, compiled validation, msgpack codec.

A message class is declared in the INGInious 0.6 style::

    class ClientHello(metaclass=MessageMeta, msgtype="client_hello"):
        def __init__(self, name: str):
            self.name = name

or, for the 0.9 dialect (``msgtype`` is then the class name and the wire key
is ``"@type"``)::

    class ClientHello(metaclass=MessageMeta, dialect="0.9"):
        def __init__(self, name: str):
            self.name = name

Each dialect has its own registry: both have a ``ClientHello``.

When the class is defined, the metaclass checks the declaration (every argument
annotated and assigned once to ``self`` under its own name, no field called
``type``), learns the field order from the ``__init__`` itself, and compiles a
validator and a decoder for the class.  Decoding a message is then one msgpack
call plus one generated function: no per-message introspection.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import linecache
import types
import typing
from typing import Any, Callable, ClassVar, Dict, List, Tuple

import msgpack

__all__ = [
    "MessageMeta",
    "MessageError",
    "MalformedMessage",
    "UnknownMessageType",
    "FieldError",
    "MissingField",
    "ExtraField",
    "WrongFieldType",
    "DIALECT_NAMES",
    "load_any",
    "load_dialect",
]

#: The dialects a message class can belong to, and the key naming its type.
DIALECT_NAMES = ("0.6", "0.9")
_TYPE_KEYS = {"0.6": "type", "0.9": "@type"}


class MessageError(ValueError):
    """A message could not be decoded, encoded or built.

    ``msgtype`` and ``field`` name what is at fault when it is known.
    On decoding, ``job_id`` and ``dialect`` are filled in on a best-effort
    basis (None when unreadable), so that a rejected job can still be
    answered, in its sender's dialect.
    """

    def __init__(
        self,
        text: str,
        msgtype: str | None = None,
        field: str | None = None,
        job_id: Any = None,
        dialect: str | None = None,
    ):
        super().__init__(text)
        self.msgtype = msgtype
        self.field = field
        self.job_id = job_id
        self.dialect = dialect


class MalformedMessage(MessageError):
    """The bytes are not a msgpack map with a string ``type`` (or ``@type``)."""


class UnknownMessageType(MessageError):
    """The ``type`` names no registered message class."""


class FieldError(MessageError):
    """A field is missing, extra, or of the wrong type."""


class MissingField(FieldError):
    pass


class ExtraField(FieldError):
    pass


class WrongFieldType(FieldError):
    pass


_RESERVED = "type"
_RESERVED_FIELDS = ("type",)
_NoneType = type(None)
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


_unpackb = functools.partial(msgpack.unpackb, raw=False, use_list=False, strict_map_key=False)


# ---------------------------------------------------------------------------
# Type checks compiled to Python expressions
# ---------------------------------------------------------------------------

_SIMPLE = {str: "str", bytes: "bytes", bool: "bool", int: "int"}


def _check_expr(
    tp: Any, var: str, helpers: Dict[str, Any] | None = None, depth: int = 0, str_key_dicts: List[str] | None = None
) -> str | None:
    """A Python expression that is true when ``var`` matches ``tp``.

    ``None`` means "anything goes" (``Any``).  Sequences accept tuples (what
    the decoder gives) and lists (what Python callers often pass).  Item
    checks inside containers become small functions stored in ``helpers``
    and are applied with ``all(map(...))``, which runs the loop in C.
    With ``str_key_dicts``, a top-level ``Dict[str, ...]`` leaves its key
    check to the caller, who checks all such dicts' keys in one pass.
    """
    if helpers is None:
        helpers = {}
    if tp is Any or tp is object:
        return None
    if tp is _NoneType or tp is None:
        return f"{var} is None"
    if tp in _SIMPLE:
        # ``type(x) is int`` on purpose: a bool is not an int on the wire.
        return f"type({var}) is {_SIMPLE[tp]}"
    if tp is float:
        return f"(type({var}) is float or type({var}) is int)"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        alternatives = [_check_expr(a, var, helpers, depth) for a in args]
        checks = [c for c in alternatives if c is not None]
        if len(checks) < len(alternatives):
            return None
        return "(" + " or ".join(checks) + ")"
    if origin is dict or tp is dict:
        base = f"type({var}) is dict"
        kcheck = _item_check(args[0], helpers, depth) if args else None
        if str_key_dicts is not None and args and args[0] is str:
            str_key_dicts.append(var)
            kcheck = None
        vcheck = _item_check(args[1], helpers, depth) if args else None
        parts = [base]
        # "not var or": nothing to loop over in the common empty dict.
        if kcheck:
            parts.append(f"(not {var} or all(map({kcheck}, {var})))")
        if vcheck:
            parts.append(f"(not {var} or all(map({vcheck}, {var}.values())))")
        return "(" + " and ".join(parts) + ")"
    if origin in (tuple, list) or tp in (tuple, list):
        base = f"(type({var}) is tuple or type({var}) is list)"
        # Tuple[X] (as the seed writes it) and Tuple[X, ...] and List[X] are
        # homogeneous sequences of any length; Tuple[X, Y, ...] is fixed.
        if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis:
            checks = [base, f"len({var}) == {len(args)}"]
            for i, a in enumerate(args):
                e = _check_expr(a, f"{var}[{i}]", helpers, depth + 1)
                if e is not None:
                    checks.append(e)
            return "(" + " and ".join(checks) + ")"
        icheck = _item_check(args[0], helpers, depth) if args else None
        if icheck is None:
            return base
        return f"({base} and all(map({icheck}, {var})))"
    raise TypeError(f"unsupported field annotation {tp!r}")


def _item_check(tp: Any, helpers: Dict[str, Any], depth: int) -> str | None:
    """The name of a one-argument predicate for ``tp`` (None for ``Any``)."""
    if tp is str or tp is bytes:
        # isinstance is exact enough here (msgpack never makes subclasses)
        # and much cheaper than a Python-level loop.
        name = f"_is_{tp.__name__}"
        helpers[name] = type.__instancecheck__.__get__(tp)
        return name
    expr = _check_expr(tp, "x", helpers, depth + 1)
    if expr is None:
        return None
    name = f"_item{len(helpers)}"
    env: Dict[str, Any] = {}
    source = f"def {name}(x):\n    return {expr}\n"
    exec(_compile_source(source, f"<message check {next(_check_numbers)}>"), helpers, env)  # noqa: S102
    helpers[name] = env[name]
    return name


_check_numbers = itertools.count(1)


def _compile_source(source: str, filename: str) -> Any:
    """Compile generated code and keep its text in :mod:`linecache`.

    Tracebacks through generated loaders and validators then show the
    line at fault instead of nothing.
    """
    code = compile(source, filename, "exec")
    # mtime None: linecache.checkcache() leaves the entry alone.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return code


def _describe(tp: Any) -> str:
    if tp is _NoneType:
        return "None"
    if isinstance(tp, type):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def _freeze(value: Any) -> Any:
    """Lists to tuples, recursively, so that equality ignores the difference."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def _short_repr(value: Any) -> str:
    if isinstance(value, (bytes, str)) and len(value) > 80:
        return f"<{type(value).__name__} of length {len(value)}>"
    return repr(value)


class _Probe:
    """Stand-in ``self`` used to watch what a message ``__init__`` assigns."""


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


# ---------------------------------------------------------------------------
# The metaclass
# ---------------------------------------------------------------------------


class MessageMeta(type):
    """Metaclass of every message type; also the registries and the decoder.

    ``registry`` is the 0.6 registry (as it always was); every dialect's is
    in ``registries``.
    """

    registries: ClassVar[Dict[str, Dict[str, type]]] = {d: {} for d in DIALECT_NAMES}
    registry: ClassVar[Dict[str, type]] = registries["0.6"]
    _all_loaders: ClassVar[Dict[str, Dict[str, Callable[[Dict[str, Any]], Any]]]] = {d: {} for d in DIALECT_NAMES}
    _loaders: ClassVar[Dict[str, Callable[[Dict[str, Any]], Any]]] = _all_loaders["0.6"]

    msgtype: str
    dialect: str
    fields: Tuple[str, ...]
    field_types: Dict[str, Any]

    def __new__(
        mcs,
        name: str,
        bases: Tuple[type, ...],
        namespace: Dict[str, Any],
        msgtype: str | None = None,
        dialect: str = "0.6",
        **kwargs: Any,
    ) -> MessageMeta:
        if dialect not in _TYPE_KEYS:
            raise TypeError(f"message class {name}: dialect must be one of {', '.join(DIALECT_NAMES)}")
        if msgtype is None:
            if dialect == "0.6":
                raise TypeError(f"message class {name} needs msgtype=...")
            msgtype = name  # 0.9 names a message by its class name
        if not isinstance(msgtype, str) or not msgtype:
            raise TypeError(f"message class {name}: msgtype must be a non-empty str")
        init = namespace.get("__init__")
        if init is None:
            raise TypeError(f"message class {name} must define __init__")
        registry = mcs.registries[dialect]
        previous = registry.get(msgtype)
        if previous is not None and (previous.__module__, previous.__qualname__) != (
            namespace.get("__module__"),
            namespace.get("__qualname__"),
        ):
            raise TypeError(f"msgtype {msgtype!r} is already used by {previous.__module__}.{previous.__qualname__}")

        field_types, order, pure = mcs._inspect_init(name, init)
        fields = tuple(order)

        namespace = dict(namespace)
        namespace.setdefault("__eq__", _message_eq)
        namespace.setdefault("__hash__", None)
        namespace.setdefault("__repr__", _message_repr)
        namespace.setdefault("__setattr__", _message_setattr)
        namespace.setdefault("__delattr__", _message_delattr)
        cls = super().__new__(mcs, name, bases, namespace)
        cls.msgtype = msgtype
        cls.dialect = dialect
        cls.fields = fields
        cls.field_types = field_types
        mcs._compile(cls, init, pure)
        registry[msgtype] = cls
        return cls

    def __init__(
        cls,
        name: str,
        bases: Tuple[type, ...],
        namespace: Dict[str, Any],
        msgtype: str | None = None,
        dialect: str = "0.6",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, bases, namespace)

    # -- declaration checks -------------------------------------------------

    @staticmethod
    def _inspect_init(name: str, init: Callable[..., None]) -> tuple[Dict[str, Any], List[str], bool]:
        sig = inspect.signature(init)
        params = list(sig.parameters.values())[1:]
        try:
            hints = typing.get_type_hints(init)
        except Exception as e:  # a broken annotation should fail at import
            raise TypeError(f"message class {name}: cannot resolve annotations: {e}") from e
        field_types: Dict[str, Any] = {}
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise TypeError(f"message class {name}: argument {p.name} must be a plain named argument")
            if p.name in _RESERVED_FIELDS:
                raise TypeError(
                    f"message class {name}: a field cannot be named {p.name!r} (reserved by the wire format)"
                )
            if p.name not in hints:
                raise TypeError(f"message class {name}: argument {p.name} has no type annotation")
            field_types[p.name] = hints[p.name]
            _check_expr(hints[p.name], "x", {})  # unsupported annotations fail now

        # Watch the __init__ assign its arguments: this gives the wire order
        # (assignment order, as INGInious encodes it) and proves the contract.
        probe = _Probe()
        sentinels = {n: _Sentinel(n) for n in field_types}
        try:
            init(probe, **sentinels)
        except Exception:
            # An __init__ that does more than assign cannot be probed with
            # stand-in values; keep it as it is and use argument order.
            return field_types, list(field_types), False
        assigned = vars(probe)
        for n in field_types:
            if assigned.get(n) is not sentinels[n]:
                raise TypeError(f"message class {name}: __init__ must assign argument {n} to self.{n}")
        extra = [k for k in assigned if k not in field_types]
        if extra:
            raise TypeError(f"message class {name}: __init__ sets {extra[0]!r}, which is not an argument")
        return field_types, list(assigned), True

    # -- code generation ----------------------------------------------------

    @staticmethod
    def _compile(cls: Any, init: Callable[..., None], pure: bool) -> None:
        msgtype = cls.msgtype
        fields = cls.fields
        types = cls.field_types
        key = _TYPE_KEYS[cls.dialect]
        env: Dict[str, Any] = {
            "_new": object.__new__,
            "_set": object.__setattr__,
            "_cls": cls,
            "_bad": lambda f, v: _wrong_type(cls, f, v),
            "_diagnose": lambda d: _diagnose(cls, d),
            "_packb": _packb,
            "_T": msgtype,
            "_orig_init": init,
            "MessageError": MessageError,
        }
        checks = []
        fast_checks = []
        str_key_dicts: List[str] = []
        for i, f in enumerate(fields):
            e = _check_expr(types[f], f"f{i}", env)
            if e is not None:
                checks.append(f"    if not {e}: _bad({f!r}, f{i})")
            e = _check_expr(types[f], f"f{i}", env, str_key_dicts=str_key_dicts)
            if e is not None:
                fast_checks.append(f"    if not {e}: _bad({f!r}, f{i})")
        if str_key_dicts:
            # One C-level pass over the keys of every Dict[str, ...] field; on
            # failure the full per-field check names the field at fault.
            env["_chain"] = itertools.chain
            env["_is_str"] = type.__instancecheck__.__get__(str)
            fast_checks.append(f"    if not all(map(_is_str, _chain({', '.join(str_key_dicts)}))): _validate(d)")
        checks_src = "\n".join(checks) if checks else "    pass"
        fast_checks_src = "\n".join(fast_checks) if fast_checks else "    pass"
        fetch = "\n".join(f"        f{i} = d[{f!r}]" for i, f in enumerate(fields)) or "        pass"
        dump_build = ", ".join(f"{f!r}: d[{f!r}]" for f in fields)

        src = [
            "def _load(d):",
            f"    if len(d) != {len(fields) + 1}: _diagnose(d)",
            "    try:",
            fetch,
            "    except KeyError:",
            "        _diagnose(d)",
            fast_checks_src,
            # The decoded map itself becomes the instance dict (dump() writes
            # fields in declaration order, whatever order a peer used).
            f"    del d[{key!r}]",
            "    obj = _new(_cls)",
            "    _set(obj, '__dict__', d)",
            "    return obj",
            "",
            "def _validate(d):",
            *[f"    f{i} = d[{f!r}]" for i, f in enumerate(fields)],
            checks_src,
            "",
            "def dump(self):",
            f'    """This message as msgpack bytes, fields in declaration order then ``{key}``."""',
            "    d = self.__dict__",
            "    try:",
            f"        return _packb({{{dump_build}{', ' if fields else ''}{key!r}: _T}})",
            "    except Exception as e:",
            "        raise MessageError(f'cannot encode {_T}: {e}', _T) from e",
        ]
        if pure:
            sig = inspect.signature(init)
            params = []
            for p in list(sig.parameters.values())[1:]:
                if p.default is not p.empty:
                    env[f"_default_{p.name}"] = p.default
                    params.append(f"{p.name}=_default_{p.name}")
                else:
                    params.append(p.name)
                if p.kind is p.KEYWORD_ONLY and "*" not in params[:-1]:
                    params.insert(len(params) - 1, "*")
            order = ", ".join(f"{f!r}: {f}" for f in fields)
            src += [
                "",
                f"def __init__(self, {', '.join(params)}):",
                f"    d = {{{order}}}",
                "    _validate(d)",
                "    _set(self, '__dict__', d)",
                "",
                # For a sender whose every field comes from a message of the
                # same declared types that was checked when decoded: the
                # backend relaying a result (see MessageMeta.trusted).
                f"def _trusted({', '.join(params)}):",
                "    obj = _new(_cls)",
                f"    _set(obj, '__dict__', {{{order}}})",
                "    return obj",
            ]
        else:
            src += [
                "",
                "def __init__(self, *args, **kwargs):",
                "    _orig_init(self, *args, **kwargs)",
                "    _validate(self.__dict__)",
            ]
        filename = f"<message {cls.dialect} {cls.__module__}.{cls.__qualname__}>"
        exec(_compile_source("\n".join(src) + "\n", filename), env)  # noqa: S102
        init_fn = env["__init__"]
        init_fn.__doc__ = init.__doc__
        init_fn.__wrapped__ = init
        init_fn.__qualname__ = f"{cls.__qualname__}.__init__"
        type.__setattr__(cls, "__init__", init_fn)
        type.__setattr__(cls, "dump", env["dump"])
        if pure:
            type.__setattr__(cls, "_trusted", staticmethod(env["_trusted"]))
        MessageMeta._all_loaders[cls.dialect][msgtype] = env["_load"]

    # -- decoding -----------------------------------------------------------

    @staticmethod
    def load(data: bytes) -> Any:
        """Decode one 0.6 message; raises :class:`MessageError` and nothing else.

        A 0.9 message is an error here (no ``type`` key): see :func:`load_any`.
        """
        try:
            d = _unpackb(data)
        except Exception as e:
            raise _salvaged(MalformedMessage(f"not a msgpack message: {_why(e)}"), data, "0.6") from None
        try:
            loader = _LOADERS[d["type"]]
        except (KeyError, TypeError, IndexError, AttributeError):
            _bad_envelope(d, "0.6")
        try:
            return loader(d)
        except MessageError as e:
            raise _annotated(e, d, "0.6")
        except Exception as e:  # pragma: no cover - the generated code should not get here
            raise _annotated(MalformedMessage(f"cannot decode: {e}"), d, "0.6") from None


_LOADERS = MessageMeta._loaders
_LOADERS_09 = MessageMeta._all_loaders["0.9"]


def load_any(data: bytes) -> Any:
    """Decode one message of either dialect; raises :class:`MessageError` only.

    A map with an ``"@type"`` key is 0.9, else one with ``"type"`` is 0.6.
    The error says, as far as the bytes allow, the message type, the job id
    and the dialect, so that a rejected job can be answered.
    """
    try:
        d = _unpackb(data)
    except Exception as e:
        raise _salvaged(MalformedMessage(f"not a msgpack message: {_why(e)}"), data, None) from None
    try:
        t = d.get("@type")
    except (AttributeError, TypeError):
        _bad_envelope(d, None)
    if t is None:
        dialect = "0.6"
        try:
            loader = _LOADERS[d["type"]]
        except (KeyError, TypeError):
            _bad_envelope(d, None)
    else:
        dialect = "0.9"
        try:
            loader = _LOADERS_09[t]
        except (KeyError, TypeError):
            _bad_envelope(d, "0.9")
    try:
        return loader(d)
    except MessageError as e:
        raise _annotated(e, d, dialect)
    except Exception as e:  # pragma: no cover - the generated code should not get here
        raise _annotated(MalformedMessage(f"cannot decode: {e}"), d, dialect) from None


def load_dialect(data: bytes, dialect: str) -> Any:
    """Decode one message of ``dialect`` only; raises :class:`MessageError` only."""
    message = load_any(data)
    if message.dialect != dialect:
        raise MalformedMessage(
            f"a {message.dialect} message ({message.msgtype}) where {dialect} was expected",
            msgtype=message.msgtype,
            job_id=_job_id_of(getattr(message, "job_id", None)),
            dialect=message.dialect,
        )
    return message


def _why(e: Exception) -> str:
    return str(e) or type(e).__name__


def _job_id_of(value: Any) -> Any:
    """``value`` if it looks like a job id of either dialect, else None."""
    if type(value) is str:
        return value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is bytes and type(value[1]) is str:
        return value
    return None


def _annotated(e: MessageError, d: Any, dialect: str | None) -> MessageError:
    """Fill in what ``e`` does not say yet about the decoded map ``d``."""
    if e.dialect is None:
        e.dialect = dialect
    if e.job_id is None and type(d) is dict:
        e.job_id = _job_id_of(d.get("job_id"))
    return e


def _bad_envelope(d: Any, dialect: str | None) -> typing.NoReturn:
    """Explain why ``d`` has no loader: not a map, no str type, unknown type."""
    if type(d) is not dict:
        raise MalformedMessage(f"a message must be a msgpack map, not {type(d).__name__}", dialect=dialect)
    if dialect is None:
        dialect = "0.9" if "@type" in d else "0.6" if "type" in d else None
    key = _TYPE_KEYS.get(dialect or "", "type")
    job_id = _job_id_of(d.get("job_id"))
    t = d.get(key)
    if type(t) is not str:
        what = "'type' (0.6) or '@type' (0.9)" if dialect is None else repr(key)
        raise MalformedMessage(f"a message needs a str {what} field", field=key, job_id=job_id, dialect=dialect)
    raise UnknownMessageType(
        f"unknown message type {t[:100]!r} ({dialect})", msgtype=t[:100], job_id=job_id, dialect=dialect
    )


# -- what can be read of a message msgpack could not decode -----------------

#: How many msgpack items the salvage walk may visit (it runs in Python).
_SALVAGE_BUDGET = 50_000
# Extra bytes after the first byte of an item, or how to read a length.
_FIXED = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}  # fmt: skip
# first byte -> (size of the length, extra bytes after the length (ext type))
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
          0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}  # fmt: skip
# first byte -> (size of the count, items per count)
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


class _Unreadable(Exception):
    pass


def _skip(data: bytes, pos: int, budget: List[int]) -> int:
    """The offset just after the msgpack item at ``pos``.

    Iterative (a count of items still to skip, no stack), so nesting depth
    costs nothing; ``budget[0]`` bounds the number of items visited.
    """
    pending = 1
    end = len(data)
    while pending:
        budget[0] -= 1
        if budget[0] < 0 or pos >= end:
            raise _Unreadable()
        b = data[pos]
        pos += 1
        pending -= 1
        if b <= 0x7F or b >= 0xE0:
            continue
        if b <= 0x8F:
            pending += 2 * (b & 0x0F)
        elif b <= 0x9F:
            pending += b & 0x0F
        elif b <= 0xBF:
            pos += b & 0x1F
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _SIZED:
            size, extra = _SIZED[b]
            pos += size + extra + int.from_bytes(data[pos : pos + size], "big")
        elif b in _CONTAINERS:
            size, per = _CONTAINERS[b]
            pending += per * int.from_bytes(data[pos : pos + size], "big")
            pos += size
        else:
            raise _Unreadable()
    if pos > end:
        raise _Unreadable()
    return pos


def _salvage(data: Any) -> Dict[str, Any]:
    """The ``type``, ``@type`` and ``job_id`` entries of a top-level map that
    msgpack refused as a whole (e.g. a value nested too deep)."""
    found: Dict[str, Any] = {}
    try:
        data = bytes(data)
        first = data[0]
        if 0x80 <= first <= 0x8F:
            count, pos = first & 0x0F, 1
        elif first in (0xDE, 0xDF):
            size = 2 if first == 0xDE else 4
            count, pos = int.from_bytes(data[1 : 1 + size], "big"), 1 + size
        else:
            return found
        budget = [_SALVAGE_BUDGET]
        for _ in range(count):
            key_end = _skip(data, pos, budget)
            value_end = _skip(data, key_end, budget)
            if data[pos] in (0xA4, 0xA5, 0xA6):  # short str keys only
                key = data[pos + 1 : key_end]
                if key in (b"type", b"@type", b"job_id"):
                    try:
                        found[key.decode()] = _unpackb(data[key_end:value_end])
                    except Exception:
                        pass
            pos = value_end
    except Exception:  # anything unreadable: keep what was found
        pass
    return found


def _salvaged(e: MessageError, data: Any, dialect: str | None) -> MessageError:
    """Fill in ``e`` with what can be read of undecodable bytes."""
    found = _salvage(data)
    if dialect is None:
        dialect = "0.9" if "@type" in found else "0.6" if "type" in found else None
    if dialect is not None:
        t = found.get(_TYPE_KEYS[dialect])
        if type(t) is str:
            e.msgtype = t[:100]
    e.dialect = dialect
    e.job_id = _job_id_of(found.get("job_id"))
    return e


def _wrong_type(cls: Any, field: str, value: Any) -> typing.NoReturn:
    raise WrongFieldType(
        f"{cls.msgtype}: field {field!r} must be {_describe(cls.field_types[field])}, "
        f"got {type(value).__name__} {_short_repr(value)[:100]}",
        cls.msgtype,
        field,
    )


def _diagnose(cls: Any, d: Dict[str, Any]) -> typing.NoReturn:
    key = _TYPE_KEYS[cls.dialect]
    for f in cls.fields:
        if f not in d:
            raise MissingField(f"{cls.msgtype}: missing field {f!r}", cls.msgtype, f)
    for k in d:
        if k != key and k not in cls.field_types:
            raise ExtraField(f"{cls.msgtype}: unexpected field {str(k)[:100]!r}", cls.msgtype, str(k)[:100])
    raise MalformedMessage(f"{cls.msgtype}: malformed message", cls.msgtype)  # pragma: no cover


def _message_eq(self: Any, other: Any) -> Any:
    if type(other) is not type(self):
        return NotImplemented
    return _freeze(self.__dict__) == _freeze(other.__dict__)


def _message_repr(self: Any) -> str:
    args = ", ".join(f"{f}={_short_repr(v)}" for f, v in self.__dict__.items())
    return f"{type(self).__name__}({args})"


def _message_setattr(self: Any, name: str, value: Any) -> None:
    # Set-once: an __init__ that is not a pure assigner may still fill its
    # fields; after that, nothing changes.
    cls = type(self)
    if name in cls.field_types and name not in self.__dict__:
        object.__setattr__(self, name, value)
        return
    raise AttributeError(f"{cls.__name__} messages are immutable")


def _message_delattr(self: Any, name: str) -> None:
    raise AttributeError(f"{type(self).__name__} messages are immutable")
