"""Property-based tests: decoding never fails but with MessageError, and
every message type survives a round trip."""

from __future__ import annotations

import typing
from typing import Any, Dict, Sequence

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inginious_tx import messages as M
from inginious_tx.messages import MessageError, MessageMeta

FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any msgpack-representable value (what an ``Any`` field may hold).
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20),
)  # fmt: skip
any_value = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)


def strategy_for(tp: Any) -> st.SearchStrategy:
    """Values of the annotation ``tp``, as the validator understands it."""
    if tp is Any:
        return any_value
    if tp is str:
        return st.text(max_size=30)
    if tp is bytes:
        return st.binary(max_size=30)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if tp is float:
        return st.one_of(st.floats(allow_nan=False), st.integers(min_value=-(2**53), max_value=2**53))
    if tp is type(None):
        return st.none()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return st.one_of(*[strategy_for(a) for a in args])
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=4)
    if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis:
        return st.tuples(*[strategy_for(a) for a in args])
    if origin in (tuple, list):
        return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
    raise AssertionError(f"no strategy for {tp!r}")


def message_of(cls: type) -> st.SearchStrategy:
    return st.fixed_dictionaries({f: strategy_for(cls.field_types[f]) for f in cls.fields}).map(lambda kw: cls(**kw))


def mutated(encoding: bytes, data: Any, ops: Sequence[str] = ("flip", "insert", "delete", "truncate")) -> bytes:
    """``encoding`` after one to four random edits, each one of ``ops`` (``nest``:
    a run of one-item arrays, deeper than msgpack's own stack)."""
    raw = bytearray(encoding)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        op = data.draw(st.sampled_from(list(ops)))
        if not raw and op != "insert":
            op = "insert"
        if op == "flip":
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            i = data.draw(st.integers(0, len(raw)))
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "nest":
            i = data.draw(st.integers(0, len(raw)))
            raw[i:i] = b"\x91" * data.draw(st.integers(1, 3000))
        elif op == "delete":
            i = data.draw(st.integers(0, len(raw) - 1))
            del raw[i]
        else:
            raw = raw[: data.draw(st.integers(0, len(raw)))]
    return bytes(raw)


def some_fields(cls: Any, junk: Dict[Any, Any], data: Any) -> Dict[Any, Any]:
    """The fields of ``cls``, each valid, missing or random; sometimes ``junk`` too."""
    fields: Dict[Any, Any] = {}
    for f in cls.fields:
        choice = data.draw(st.sampled_from(["valid", "valid", "valid", "missing", "random"]))
        if choice == "valid":
            fields[f] = data.draw(strategy_for(cls.field_types[f]))
        elif choice == "random":
            fields[f] = data.draw(any_value)
    if data.draw(st.booleans()):
        fields.update(junk)
    return fields


any_message = st.one_of(*[message_of(cls) for cls in M.ALL_MESSAGES])


def load_or_error(data: bytes) -> Any:
    """The property under test: a message, or MessageError; nothing else."""
    try:
        message = MessageMeta.load(data)
    except MessageError as e:
        assert str(e)
        return None
    # What was accepted is a valid message that encodes and decodes again.
    assert type(message).msgtype in MessageMeta.registry
    again = MessageMeta.load(message.dump())
    assert again == message
    return message


@FUZZ
@given(any_message)
def test_round_trip_every_type(message):
    data = message.dump()
    back = MessageMeta.load(data)
    assert type(back) is type(message)
    assert back == message
    assert back.dump() == data


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    load_or_error(data)


@FUZZ
@given(any_message, st.data())
def test_mutated_encodings(message, data):
    load_or_error(mutated(message.dump(), data))


@FUZZ
@given(
    st.sampled_from(sorted(M.MessageMeta.registry)),
    st.dictionaries(
        st.one_of(st.text(max_size=12), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=4)), any_value, max_size=6
    ),
    st.data(),
)
def test_structured_maps_with_real_types(msgtype, junk, data):
    """Maps that name a real type and carry valid, missing, extra or wrong fields."""
    cls = MessageMeta.registry[msgtype]
    fields = some_fields(cls, junk, data)
    fields["type"] = msgtype
    packed = msgpack.packb(fields, use_bin_type=True)
    message = load_or_error(packed)
    if message is not None:
        assert type(message) is cls
