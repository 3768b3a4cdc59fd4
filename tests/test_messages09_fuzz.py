"""Property-based tests of the 0.9 decoder and of :func:`load_any`: decoding
never fails but with MessageError, and every 0.9 type survives a round trip."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from test_messages_fuzz import FUZZ, any_value, message_of, mutated, some_fields

from inginious_tx.messages import MessageError, MessageMeta, load_any, v09

any_message09 = st.one_of(*[message_of(cls) for cls in v09.ALL_MESSAGES])


def load_or_error(data: bytes) -> Any:
    """The property under test: a message of either dialect, or MessageError."""
    try:
        message = load_any(data)
    except MessageError as e:
        assert str(e)
        assert e.dialect in (None, "0.6", "0.9")
        assert e.job_id is None or isinstance(e.job_id, (str, tuple))
        return None
    assert MessageMeta.registries[message.dialect][message.msgtype] is type(message)
    again = load_any(message.dump())
    assert again == message
    return message


@FUZZ
@given(any_message09)
def test_round_trip_every_type(message):
    data = message.dump()
    for load in (load_any, v09.load):
        back = load(data)
        assert type(back) is type(message)
        assert back == message
        assert back.dump() == data


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    load_or_error(data)


@FUZZ
@given(any_message09, st.data())
def test_mutated_encodings(message, data):
    load_or_error(mutated(message.dump(), data, ("flip", "insert", "delete", "truncate", "nest")))


@FUZZ
@given(
    st.sampled_from(sorted(c.msgtype for c in v09.ALL_MESSAGES)),
    st.dictionaries(
        st.one_of(st.text(max_size=12), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=4)), any_value, max_size=6
    ),
    st.data(),
)
def test_structured_maps_with_real_types(msgtype, junk, data):
    """Maps that name a real 0.9 type and carry valid, missing, extra or wrong fields."""
    cls = MessageMeta.registries["0.9"][msgtype]
    fields = some_fields(cls, junk, data)
    fields["@type"] = msgtype
    if data.draw(st.integers(0, 9)) == 0:
        fields["type"] = data.draw(any_value)
    message = load_or_error(msgpack.packb(fields, use_bin_type=True))
    if message is not None:
        assert type(message) is cls
    elif type(fields.get("job_id")) is str and "type" not in fields:
        # Whatever was wrong, the job id was readable: the error says it.
        try:
            load_any(msgpack.packb(fields, use_bin_type=True))
        except MessageError as e:
            assert e.job_id == fields["job_id"]
            assert e.dialect == "0.9"
