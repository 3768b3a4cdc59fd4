"""Messages: declaration checks, immutability, golden wire vectors, errors."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import pytest
from wire_vectors import from_json, vectors

from inginious_tx import messages as M
from inginious_tx.messages import MessageError, MessageMeta

VECTORS = vectors("0.6")


def test_every_seed_type_is_exported_with_its_msgtype():
    expected = {
        "ClientHello": "client_hello", "ClientNewJob": "client_new_job", "ClientKillJob": "client_kill_job",
        "ClientGetQueue": "client_get_queue", "BackendUpdateContainers": "backend_update_containers",
        "BackendJobStarted": "backend_job_started", "BackendJobDone": "backend_job_done",
        "BackendJobSSHDebug": "backend_job_ssh_debug", "BackendGetQueue": "backend_get_queue",
        "BackendNewJob": "backend_new_job", "BackendKillJob": "backend_kill_job", "AgentHello": "agent_hello",
        "AgentJobStarted": "agent_job_started", "AgentJobDone": "agent_job_done",
        "AgentJobSSHDebug": "agent_job_ssh_debug", "Ping": "ping", "Pong": "pong", "Unknown": "unknown",
    }  # fmt: skip
    assert {cls.__name__: cls.msgtype for cls in M.ALL_MESSAGES} == expected
    for name, msgtype in expected.items():
        assert getattr(M, name).msgtype == msgtype
        assert MessageMeta.registry[msgtype] is getattr(M, name)


def test_field_order_is_the_seed_assignment_order():
    assert M.ClientNewJob.fields == (
        "job_id", "priority", "course_id", "task_id", "inputdata", "debug", "environment",
        "enable_network", "time_limit", "hard_time_limit", "mem_limit", "launcher", "run_cmd",
    )  # fmt: skip
    assert M.BackendNewJob.fields[4] == "debug"


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{i}-{v['class']}" for i, v in enumerate(VECTORS)])
def test_wire_vector_encodes_byte_identical_and_decodes_equal(vector):
    cls = getattr(M, vector["class"])
    message = cls(**from_json(vector["fields"]))
    assert message.dump().hex() == vector["hex"]
    decoded = MessageMeta.load(bytes.fromhex(vector["hex"]))
    assert type(decoded) is cls
    assert decoded == message
    assert decoded.dump().hex() == vector["hex"]


def test_vectors_cover_every_type():
    assert {v["class"] for v in VECTORS} == {cls.__name__ for cls in M.ALL_MESSAGES}


def test_messages_are_immutable():
    m = M.ClientHello("a")
    with pytest.raises(AttributeError):
        m.name = "b"
    with pytest.raises(AttributeError):
        m.other = 1
    with pytest.raises(AttributeError):
        del m.name
    assert m.name == "a"


def test_equality_and_repr():
    a = M.AgentJobStarted((b"\x00\x01", "j1"))
    assert a == M.AgentJobStarted([b"\x00\x01", "j1"])  # list or tuple: same message
    assert a != M.AgentJobStarted((b"\x00\x01", "j2"))
    assert a != M.BackendKillJob((b"\x00\x01", "j1"))
    assert repr(a) == "AgentJobStarted(job_id=(b'\\x00\\x01', 'j1'))"
    big = M.BackendJobDone("j", ("success", ""), 100.0, {}, {}, {}, "", b"x" * 1000, None, None)
    assert "<bytes of length 1000>" in repr(big)


def test_construction_checks_types():
    with pytest.raises(M.WrongFieldType) as e:
        M.ClientKillJob(3)
    assert e.value.msgtype == "client_kill_job" and e.value.field == "job_id"
    with pytest.raises(M.WrongFieldType):
        M.AgentHello("a", True, {})  # a bool is not an int
    M.BackendJobDone("j", ("success", "ok"), 100, {}, {}, {}, "", None, None, None)  # an int is a float


def test_decode_errors_name_type_and_field():
    good = M.ClientKillJob("j").dump()
    with pytest.raises(M.MissingField) as e:
        MessageMeta.load(good.replace(b"job_id", b"job_ix"))
    assert (e.value.msgtype, e.value.field) == ("client_kill_job", "job_id")
    hello = M.ClientHello("x").dump()
    with pytest.raises(M.ExtraField) as e:
        MessageMeta.load(b"\x83\xa5extra\x01" + hello[1:])
    assert e.value.field == "extra"
    with pytest.raises(M.WrongFieldType) as e:
        MessageMeta.load(
            M.AgentJobDone((b"a", "b"), ("x", "y"), 1.0, {}, {"k": 1}, {}, "", None, None, None)
            .dump()
            .replace(b"\xa1k", b"\x07")
        )
    assert (e.value.msgtype, e.value.field) == ("agent_job_done", "tests")
    with pytest.raises(M.UnknownMessageType) as e:
        MessageMeta.load(b"\x81\xa4type\xa3zzz")
    assert e.value.msgtype == "zzz"
    for junk in (b"", b"\xc1", b"\x93\x01\x02\x03", b"\x81\xa4type\x05", b"\x81\xa4type\x81\x01\x02"):
        with pytest.raises(M.MalformedMessage):
            MessageMeta.load(junk)
    assert all(issubclass(c, MessageError) for c in (M.MissingField, M.ExtraField, M.WrongFieldType))


def test_third_party_message_in_seed_style():
    class ThirdPartyStatus(metaclass=MessageMeta, msgtype="test_third_party_status"):
        def __init__(self, agent: str, load: float, tags: List[str], extra: Optional[Dict[str, Any]] = None):
            self.agent = agent
            self.load = load
            self.tags = tags
            self.extra = extra

    m = ThirdPartyStatus("a1", 0.5, ["x"])
    assert m.extra is None
    back = MessageMeta.load(m.dump())
    assert back == m and type(back) is ThirdPartyStatus
    assert back.tags == ("x",)


def test_declaration_checks_fail_at_class_definition():
    with pytest.raises(TypeError, match="no type annotation"):

        class NoAnnotation(metaclass=MessageMeta, msgtype="test_no_annotation"):
            def __init__(self, x):
                self.x = x

    with pytest.raises(TypeError, match="'type'"):

        class TypeField(metaclass=MessageMeta, msgtype="test_type_field"):
            def __init__(self, type: str):  # noqa: A002
                self.type = type

    with pytest.raises(TypeError, match="assign argument y"):

        class Unassigned(metaclass=MessageMeta, msgtype="test_unassigned"):
            def __init__(self, x: int, y: int):
                self.x = x

    with pytest.raises(TypeError, match="already used"):

        class Clash(metaclass=MessageMeta, msgtype="client_hello"):
            def __init__(self, name: str):
                self.name = name

    with pytest.raises(TypeError, match="msgtype"):

        class NoMsgtype(metaclass=MessageMeta):
            def __init__(self):
                pass

    assert "test_no_annotation" not in MessageMeta.registry


def test_init_that_does_more_than_assign_still_works():
    class Normalising(metaclass=MessageMeta, msgtype="test_normalising"):
        def __init__(self, name: str, tags: Tuple[str, ...]):
            if not name:
                raise ValueError("empty name")
            self.name = name.strip()
            self.tags = tuple(tags)

    m = Normalising("  x ", ["a"])
    assert m.name == "x"
    assert MessageMeta.load(m.dump()) == m
    with pytest.raises(AttributeError):
        m.name = "y"


def test_dump_of_unencodable_value_is_a_message_error():
    m = M.AgentHello("a", 1, {"default": {"id": object()}})
    with pytest.raises(MessageError):
        m.dump()
