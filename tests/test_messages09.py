"""The 0.9 dialect: golden vectors, dialect detection, errors that say which job."""

from __future__ import annotations

import linecache
import traceback
from typing import Any, Dict, Optional

import msgpack
import pytest
from wire_vectors import from_json, vectors

from inginious_tx import messages as M
from inginious_tx.messages import (
    DIALECTS,
    Dialect,
    MalformedMessage,
    MessageError,
    MessageMeta,
    UnknownMessageType,
    WrongFieldType,
    get_dialect,
    load_any,
    v06,
    v09,
)

VECTORS = vectors("0.9")
VECTORS_06 = vectors("0.6")


def packed(d: Dict[str, Any]) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{i}-{v['class']}" for i, v in enumerate(VECTORS)])
def test_wire_vector_encodes_byte_identical_and_decodes_equal(vector):
    cls = getattr(v09, vector["class"])
    assert cls.msgtype == vector["msgtype"] == cls.__name__
    message = cls(**from_json(vector["fields"]))
    assert message.dump().hex() == vector["hex"]
    for load in (load_any, v09.load, v09.DIALECT.load):
        decoded = load(bytes.fromhex(vector["hex"]))
        assert type(decoded) is cls
        assert decoded == message
        assert decoded.dump().hex() == vector["hex"]
    assert list(cls.fields) == list(vector["fields"])


def test_vectors_cover_every_type():
    assert {v["class"] for v in VECTORS} == {cls.__name__ for cls in v09.ALL_MESSAGES}
    assert len(v09.ALL_MESSAGES) == 18


@pytest.mark.parametrize("vector", VECTORS_06, ids=[f"{i}-{v['class']}" for i, v in enumerate(VECTORS_06)])
def test_load_any_decodes_06_vectors_to_the_06_classes(vector):
    decoded = load_any(bytes.fromhex(vector["hex"]))
    assert type(decoded) is getattr(M, vector["class"]) is getattr(v06, vector["class"])
    assert decoded.dialect == "0.6"
    assert decoded.dump().hex() == vector["hex"]


def test_each_dialect_has_its_own_classes_and_registry():
    assert M.ClientHello is v06.ClientHello is not v09.ClientHello
    assert M.ClientHello.dialect == "0.6" and v09.ClientHello.dialect == "0.9"
    assert all(cls.dialect == "0.9" for cls in v09.ALL_MESSAGES)
    assert all(cls.dialect == "0.6" for cls in M.ALL_MESSAGES)
    # The 0.6 registry is what it always was; 0.9's is apart.
    assert MessageMeta.registry is MessageMeta.registries["0.6"]
    assert "ClientHello" not in MessageMeta.registry
    assert v09.DIALECT.registry["ClientHello"] is v09.ClientHello
    assert v06.DIALECT.registry["client_hello"] is M.ClientHello
    assert v09.DIALECT.classes["ClientHello"] is v09.ClientHello
    assert v06.DIALECT.classes["ClientHello"] is M.ClientHello
    assert isinstance(v09.DIALECT, Dialect) and v09.DIALECT.name == "0.9"
    assert DIALECTS["0.6"] is v06.DIALECT and get_dialect("0.9") is v09.DIALECT
    with pytest.raises(ValueError, match="unknown dialect '0.7'"):
        get_dialect("0.7")
    assert v09.ClientHello("a") != M.ClientHello("a")


def test_06_api_still_decodes_06_only():
    data = v09.ClientHello("me").dump()
    with pytest.raises(MalformedMessage, match="'type'"):
        MessageMeta.load(data)
    with pytest.raises(MalformedMessage, match="0.9 message .* where 0.6"):
        v06.DIALECT.load(data)
    with pytest.raises(MalformedMessage, match="0.6 message .* where 0.9"):
        v09.DIALECT.load(M.ClientKillJob("j").dump())
    assert M.load(M.Ping().dump()) == M.Ping()


def test_dialect_dump_refuses_the_other_dialect():
    assert v09.DIALECT.dump(v09.Ping()) == v09.Ping().dump()
    with pytest.raises(MessageError, match="not a 0.9 message"):
        v09.DIALECT.dump(M.Ping())


def test_encoding_puts_at_type_last_in_declaration_order():
    d = msgpack.unpackb(v09.BackendKillJob("j", "s").dump(), raw=False)
    assert list(d) == ["job_id", "state", "@type"]
    assert d["@type"] == "BackendKillJob"


def test_field_errors_name_type_field_job_and_dialect():
    d = msgpack.unpackb(bytes.fromhex(VECTORS[1]["hex"]), raw=False)
    d["priority"] = "high"
    with pytest.raises(WrongFieldType) as e:
        load_any(packed(d))
    assert (e.value.msgtype, e.value.field, e.value.job_id, e.value.dialect) == (
        "ClientNewJob", "priority", d["job_id"], "0.9",
    )  # fmt: skip
    del d["priority"]
    with pytest.raises(MessageError) as e:
        load_any(packed(d))
    assert (e.value.field, e.value.job_id) == ("priority", d["job_id"])


def test_unknown_type_and_envelope_errors():
    with pytest.raises(UnknownMessageType) as e:
        load_any(packed({"job_id": "x", "@type": "ClientNewJobs"}))
    assert (e.value.msgtype, e.value.job_id, e.value.dialect) == ("ClientNewJobs", "x", "0.9")
    # A 0.9 class name under the 0.6 key is an unknown 0.6 type.
    with pytest.raises(UnknownMessageType) as e:
        load_any(packed({"type": "ClientHello", "name": "x"}))
    assert e.value.dialect == "0.6"
    with pytest.raises(MalformedMessage, match="'@type'"):
        load_any(packed({"@type": 3}))
    with pytest.raises(MalformedMessage, match="'type' \\(0.6\\) or '@type' \\(0.9\\)"):
        load_any(packed({"name": "x"}))
    with pytest.raises(MalformedMessage, match="map"):
        load_any(packed([1, 2]))
    # Both keys: the 0.9 reading wins and the other key is an extra field.
    with pytest.raises(MessageError, match="unexpected field 'type'"):
        load_any(packed({"name": "x", "type": "client_hello", "@type": "ClientHello"}))
    for junk in (b"", b"\xc1", b"\x81", "not bytes", None):
        with pytest.raises(MessageError):
            load_any(junk)  # type: ignore[arg-type]


def deep(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


@pytest.mark.parametrize("dialect", ["0.6", "0.9"])
def test_5000_deep_value_is_a_message_error_that_keeps_the_job_id(dialect):
    key = "type" if dialect == "0.6" else "@type"
    msgtype = "client_new_job" if dialect == "0.6" else "ClientNewJob"
    data = (
        b"\x83" + packed("job_id") + packed("deep-1") + packed("inputdata") + deep(5000) + packed(key) + packed(msgtype)
    )
    loads = [load_any, get_dialect(dialect).load] + ([MessageMeta.load] if dialect == "0.6" else [])
    for load in loads:
        with pytest.raises(MalformedMessage) as e:
            load(data)
        assert (e.value.job_id, e.value.msgtype, e.value.dialect) == ("deep-1", msgtype, dialect)
        assert str(e.value)
    # The deep value first, the job id after it: still found.
    data = b"\x83" + packed("x") + deep(5000) + packed(key) + packed(msgtype) + packed("job_id") + packed("j")
    with pytest.raises(MalformedMessage) as e:
        load_any(data)
    assert e.value.job_id == "j"
    # Deep everywhere, or not a map: nothing readable, still a MessageError.
    for data in (deep(5000), b"\x81" + deep(5000) + packed(1)):
        with pytest.raises(MalformedMessage) as e:
            load_any(data)
        assert (e.value.job_id, e.value.msgtype) == (None, None)


def test_0_6_agent_job_id_is_salvaged_as_a_pair():
    data = b"\x82" + packed("job_id") + packed((b"addr", "j")) + packed("x") + deep(5000)
    with pytest.raises(MalformedMessage) as e:
        load_any(data)
    assert e.value.job_id == (b"addr", "j")


def test_pep604_unions_are_accepted_like_optional():
    class PepClient(metaclass=MessageMeta, dialect="0.9", msgtype="PepClientTest"):
        def __init__(self, name: str | None, count: int | str):
            self.name = name
            self.count = count

    assert PepClient(None, 1).name is None
    assert load_any(PepClient("a", "b").dump()) == PepClient("a", "b")
    with pytest.raises(WrongFieldType, match="name"):
        PepClient(3, 1)  # type: ignore[arg-type]


def test_generated_code_shows_in_tracebacks():
    with pytest.raises(WrongFieldType) as e:
        v09.ClientHello(3)  # type: ignore[arg-type]
    frames = traceback.extract_tb(e.value.__traceback__)
    generated = [f for f in frames if f.filename.startswith("<message")]
    assert generated and all(f.line for f in generated)
    assert "_bad('name'" in "".join(f.line or "" for f in generated)
    assert linecache.getline(generated[0].filename, generated[0].lineno).strip() == generated[0].line


def test_third_party_09_message_and_declaration_checks():
    class ClientStatsTest(metaclass=MessageMeta, dialect="0.9"):
        def __init__(self, count: int, note: Optional[str] = None):
            self.count = count
            self.note = note

    assert ClientStatsTest.msgtype == "ClientStatsTest" and ClientStatsTest.dialect == "0.9"
    assert load_any(ClientStatsTest(2).dump()) == ClientStatsTest(2, None)
    with pytest.raises(TypeError, match="dialect"):

        class Bad(metaclass=MessageMeta, dialect="1.0", msgtype="bad"):  # noqa: F841
            def __init__(self):
                pass

    with pytest.raises(TypeError, match="needs msgtype"):

        class Bad06(metaclass=MessageMeta):  # noqa: F841
            def __init__(self):
                pass


def test_the_salvage_walk_is_bounded():
    # 60,000 items before the deep value: the walk gives up (in bounded
    # time) after the job id and before the type.
    data = (
        b"\x84" + packed("job_id") + packed("j") + packed("x") + b"\xdd" + (60000).to_bytes(4, "big") + b"\x00" * 60000
        + packed("inputdata") + deep(5000) + packed("@type") + packed("ClientNewJob")
    )  # fmt: skip
    with pytest.raises(MalformedMessage) as e:
        load_any(data)
    assert (e.value.job_id, e.value.msgtype) == ("j", None)
