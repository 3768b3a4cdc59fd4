"""The INGInious image contract's pieces without an engine: framing, labels, results, socket links."""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import Any, Dict, List

import msgpack
import pytest

from inginious_tx.agent.inginious_folder import IngiFolder, link_socket, prepare_ingi_job
from inginious_tx.agent.inginious_image import (
    AttachDemuxer,
    MessageDecoder,
    ProtocolError,
    encode_message,
    image_info,
    pick_images,
    result_from_message,
)
from inginious_tx.agent.job_folder import TaskError


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_messages_survive_any_split_of_the_multiplexed_stream() -> None:
    messages: List[Dict[str, Any]] = [{"type": "run_student", "socket_id": "p1"}, {"type": "result", "result": {}}]
    wire = b"".join(encode_message(m) for m in messages)
    # the engine cuts stdout where it likes, and interleaves stderr frames
    raw = frame(1, wire[:3]) + frame(2, b"log line\n") + frame(1, wire[3:20]) + frame(1, wire[20:])
    for step in (1, 5, len(raw)):
        demux, decoder = AttachDemuxer(1 << 20), MessageDecoder(1 << 20)
        got: List[Dict[str, Any]] = []
        for i in range(0, len(raw), step):
            for payload in demux.feed(raw[i : i + step]):
                got += decoder.feed(payload)
        assert got == messages
        assert demux.other_bytes == len(b"log line\n")
        assert decoder.pending == 0


@pytest.mark.parametrize(
    "raw",
    [
        frame(7, b"x"),  # unknown stream
        struct.pack(">BxxxL", 1, 1 << 30),  # oversized frame
    ],
)
def test_a_bad_frame_header_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        AttachDemuxer(1 << 20).feed(raw)


@pytest.mark.parametrize(
    "body",
    [
        struct.pack(">I", 1 << 30),  # announces more than the bound
        struct.pack(">I", 2) + b"\xc1\xc1",  # not msgpack
        struct.pack(">I", 1) + msgpack.packb(3),  # not a map
        encode_message({"kind": "result"})[:],  # no type
    ],
)
def test_a_bad_message_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        MessageDecoder(1 << 20).feed(body)


def test_labels_decide_what_is_offered() -> None:
    base = {"org.inginious.grading.name": "default", "org.inginious.grading.agent_version": "3"}
    old = image_info("sha256:old", base, "2024-01-01T00:00:00+00:00")
    new = image_info("sha256:new", base, "2025-01-01T00:00:00+00:00")
    root = image_info(
        "sha256:r", dict(base, **{"org.inginious.grading.name": "r", "org.inginious.grading.need_root": ""}), "x"
    )
    gpu = image_info(
        "sha256:g", dict(base, **{"org.inginious.grading.name": "g", "org.inginious.grading.need_gpu": "1"}), "x"
    )
    ports = image_info(
        "sha256:p", dict(base, **{"org.inginious.grading.name": "p", "org.inginious.grading.ports": "22"}), "x"
    )
    v2 = image_info(
        "sha256:v2", dict(base, **{"org.inginious.grading.name": "v2", "org.inginious.grading.agent_version": "2"}), "x"
    )
    offered, refused = pick_images([new, old, root, gpu, ports, v2])
    assert {k: v.image_id for k, v in offered.items()} == {"default": "sha256:new"}
    assert sorted(i.name for i in refused) == ["g", "p", "r", "v2"]
    assert all(i.refused for i in refused)


def test_a_result_maps_as_inginious_reads_it() -> None:
    archive = b"\x1f\x8b fake tgz"
    r = result_from_message(
        {
            "result": "failed",
            "text": "t",
            "grade": 12.345,
            "problems": {"q1": ["success", "ok"], "q2": "message only"},
            "tests": {"t*": 1},
            "custom": {"any": {"thing": [1]}},
            "state": "s",
            "archive": base64.b64encode(archive).decode(),
        },
        state="previous",
    )
    assert (r.result, r.text, r.grade, r.state, r.archive) == ("failed", "t", 12.35, "s", archive)
    assert r.problems == {"q1": ("success", "ok"), "q2": ("", "message only")}
    assert r.custom == {"any": {"thing": [1]}} and r.tests == {"t*": 1}
    assert (r.stdout, r.stderr) == (None, None)
    default = result_from_message({})
    assert (default.result, default.grade) == ("error", 0.0)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {"grade": 10},  # an int grade: INGInious refuses it too
        {"result": "great"},
        {"unknown": "field"},
        {"problems": {"bad id!": ["success", ""]}},
        {"problems": {"q": ["success"]}},
        {"tests": {"t": {"nested": 1}}},
        {"archive": "not base64!"},
        {"grade": float("nan")},
    ],
)
def test_a_malformed_result_is_a_crash_that_keeps_the_state(bad: Any) -> None:
    r = result_from_message(bad, state="kept")
    assert (r.result, r.state) == ("crash", "kept")
    assert "malformed" in r.text


def _folder(tmp_path: Any) -> IngiFolder:
    tasks = tmp_path / "tasks"
    (tasks / "c" / "t" / "student").mkdir(parents=True)
    (tasks / "c" / "t" / "run").write_text("#!/bin/sh\n")
    (tasks / "c" / "t" / "student" / "given.py").write_text("x")
    (tasks / "c" / "$common" / "student").mkdir(parents=True)
    (tasks / "c" / "$common" / "run").write_text("#!/bin/sh\n")
    (tasks / "c" / "t" / "systemfiles").mkdir()
    (tasks / "c" / "t" / "systemfiles" / "hosts").write_text("10.0.0.1 db\n")
    return prepare_ingi_job(str(tasks), "c", "t", str(tmp_path / "work"))


def test_the_job_folder_layout(tmp_path: Any) -> None:
    f = _folder(tmp_path)
    assert os.path.isfile(os.path.join(f.task, "run"))
    assert os.listdir(os.path.join(f.task, "student")) == []  # the mount point of student/
    assert sorted(os.listdir(f.student)) == ["given.py", "scripts"]
    assert os.path.isfile(os.path.join(f.common, "run"))
    assert os.path.isdir(os.path.join(f.common, "student")) and os.path.isdir(f.common_student)
    assert os.listdir(f.systemfiles) == ["hosts"]
    assert os.stat(f.private).st_mode & 0o777 == 0o700
    with pytest.raises(TaskError):
        prepare_ingi_job(str(tmp_path / "tasks"), "c", "../t", str(tmp_path / "work"))
    with pytest.raises(TaskError):
        prepare_ingi_job(str(tmp_path / "tasks"), "c", "missing", str(tmp_path / "work"))


def test_only_a_real_socket_is_linked_for_a_student_container(tmp_path: Any) -> None:
    f = _folder(tmp_path)
    server = socket.socket(socket.AF_UNIX)
    server.bind(os.path.join(f.sockets, "pgood.sock"))
    try:
        linked = link_socket(f, "pgood", 1)
        assert linked.startswith(f.private + os.sep) or os.geteuid() != 0
        # a grader swapping the socket for a link to a host file gets nothing mounted
        os.symlink("/etc/passwd", os.path.join(f.sockets, "pevil.sock"))
        with pytest.raises(ValueError):
            link_socket(f, "pevil", 2)
        open(os.path.join(f.sockets, "pfile.sock"), "w").close()
        with pytest.raises(ValueError):
            link_socket(f, "pfile", 3)
        for bad in ("../x", "p/../../y", "", "a" * 65):
            with pytest.raises(ValueError):
                link_socket(f, bad, 4)
        with pytest.raises(ValueError):
            link_socket(f, "pmissing", 5)
    finally:
        server.close()
