"""The contract of INGInious grading images (``org.inginious.grading.agent_version=3``).

An INGInious grading image runs its own program (``INGInious``, its ``CMD``)
and talks to the agent over the container's standard input and output,
attached through the engine.  This module holds the pieces of that contract
that need neither Twisted nor the engine, so that each can be tested alone:

- the image labels, and :func:`pick_images`: which labelled images an agent
  offers (the newest image of each name, as INGInious does);
- :class:`AttachDemuxer`: the engine multiplexes an attached stream of a
  container without a TTY into frames (an 8-byte header: the stream number,
  three zero bytes, a big-endian 32-bit length; then the payload);
- :class:`MessageDecoder` and :func:`encode_message`: the messages, each a
  big-endian 32-bit length followed by that many bytes of msgpack (a map with
  a string ``type``), in both directions;
- :func:`result_from_message`: the container's ``result`` message as a
  :class:`~inginious_tx.agent.result.JobResult`, checked as INGInious checks it.

``docs/inginious-images.rst`` describes the whole contract.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import msgpack

from .result import JobResult

__all__ = [
    "LABEL_VERSION",
    "LABEL_NAME",
    "LABEL_NEED_ROOT",
    "LABEL_NEED_GPU",
    "LABEL_PORTS",
    "CONTRACT_VERSION",
    "ImageInfo",
    "ProtocolError",
    "image_info",
    "pick_images",
    "AttachDemuxer",
    "MessageDecoder",
    "encode_message",
    "result_from_message",
    "RETVAL_NOT_AVAILABLE",
    "RETVAL_OVERFLOW",
    "RETVAL_TIMEOUT",
    "RETVAL_ERROR",
]

LABEL_VERSION = "org.inginious.grading.agent_version"
LABEL_NAME = "org.inginious.grading.name"
LABEL_NEED_ROOT = "org.inginious.grading.need_root"
LABEL_NEED_GPU = "org.inginious.grading.need_gpu"
LABEL_PORTS = "org.inginious.grading.ports"
#: The contract version this agent speaks (INGInious 0.7 to 0.9's).
CONTRACT_VERSION = "3"

#: What ``run_student`` returns when the student container could not be had,
#: ran out of memory, ran out of time, or failed (the image's own convention).
RETVAL_NOT_AVAILABLE = 251
RETVAL_OVERFLOW = 252
RETVAL_TIMEOUT = 253
RETVAL_ERROR = 254

#: Problem and custom ids as INGInious accepts them; tests ids may also hold ``*``.
_ID = re.compile(r"[a-z0-9\-._]+\Z", re.IGNORECASE)
_TEST_ID = re.compile(r"[a-z0-9\-._*]+\Z", re.IGNORECASE)


class ProtocolError(Exception):
    """The container broke the framing (bad header, oversized or undecodable message)."""


@dataclass(frozen=True)
class ImageInfo:
    """What the labels of one image say."""

    image_id: str
    name: Optional[str]
    version: Optional[str]
    created: str
    need_root: bool = False
    need_gpu: bool = False
    ports: Tuple[int, ...] = ()
    #: why the agent cannot offer it (None: it can)
    refused: Optional[str] = None


def image_info(image_id: str, labels: Optional[Dict[str, str]], created: str) -> ImageInfo:
    """Read an image's labels; ``refused`` says why this agent cannot run it as an INGInious image."""
    labels = labels or {}
    name = labels.get(LABEL_NAME)
    version = labels.get(LABEL_VERSION)
    need_root = LABEL_NEED_ROOT in labels
    need_gpu = LABEL_NEED_GPU in labels
    refused: Optional[str] = None
    ports: Tuple[int, ...] = ()
    try:
        text = labels.get(LABEL_PORTS, "")
        ports = tuple(int(p) for p in text.split(",") if p.strip()) if text else ()
    except ValueError:
        refused = f"its {LABEL_PORTS} label is not a list of port numbers"
    if version != CONTRACT_VERSION:
        refused = f"it is made for agent version {version!r}, this agent speaks {CONTRACT_VERSION}"
    elif need_root:
        refused = "it needs root (need_root): this agent runs no job as root on the host's kernel"
    elif need_gpu:
        refused = "it needs a GPU (need_gpu): this agent offers none"
    elif ports and refused is None:
        refused = f"it needs ports {list(ports)} published: this agent publishes no port"
    return ImageInfo(image_id, name, version, created, need_root, need_gpu, ports, refused)


def pick_images(images: Iterable[ImageInfo]) -> Tuple[Dict[str, ImageInfo], List[ImageInfo]]:
    """``(offered, refused)``: the newest runnable image of each name, and the labelled images refused.

    ``created`` strings are compared as they come from the engine (RFC 3339
    in UTC, so their order is the time order).
    """
    offered: Dict[str, ImageInfo] = {}
    refused: List[ImageInfo] = []
    for info in images:
        if not info.name:
            continue
        if info.refused is not None:
            refused.append(info)
            continue
        best = offered.get(info.name)
        if best is None or best.created < info.created:
            offered[info.name] = info
    return offered, refused


class AttachDemuxer:
    """Splits the engine's multiplexed attach stream; keeps stdout, counts what else came."""

    HEADER = struct.Struct(">BxxxL")

    def __init__(self, max_frame: int) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame
        #: bytes received on the other streams (stderr): not part of the protocol
        self.other_bytes = 0

    def feed(self, data: bytes) -> List[bytes]:
        """The stdout payloads completed by ``data``; :class:`ProtocolError` on a bad header."""
        self._buffer += data
        out: List[bytes] = []
        size = self.HEADER.size
        while len(self._buffer) >= size:
            stream, length = self.HEADER.unpack_from(self._buffer)
            if stream not in (0, 1, 2) or length > self._max_frame:
                raise ProtocolError(f"bad attach frame header (stream {stream}, length {length})")
            if len(self._buffer) < size + length:
                break
            payload = bytes(self._buffer[size : size + length])
            del self._buffer[: size + length]
            if stream == 1:
                out.append(payload)
            else:
                self.other_bytes += length
        return out


class MessageDecoder:
    """Length-prefixed msgpack maps, at most ``max_message`` bytes each."""

    LENGTH = struct.Struct(">I")

    def __init__(self, max_message: int) -> None:
        self._buffer = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        """The messages completed by ``data``; :class:`ProtocolError` on an oversized or bad one."""
        self._buffer += data
        out: List[Dict[str, Any]] = []
        while len(self._buffer) >= 4:
            (length,) = self.LENGTH.unpack_from(self._buffer)
            if length > self._max:
                raise ProtocolError(f"message of {length} bytes (more than {self._max})")
            if len(self._buffer) < 4 + length:
                break
            raw = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            try:
                message = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=False)
            except Exception as e:
                raise ProtocolError(f"undecodable message ({type(e).__name__})") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ProtocolError("a message is not a map with a string 'type'")
            out.append(message)
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message."""
        return len(self._buffer)


def encode_message(message: Dict[str, Any]) -> bytes:
    """One message, framed for the container's standard input."""
    body = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


#: The fields a ``result`` may carry, and their types (a float grade, as INGInious asks).
_RESULT_TYPES: Dict[str, Any] = {
    "stdout": str,
    "stderr": str,
    "result": str,
    "text": str,
    "grade": float,
    "problems": dict,
    "custom": dict,
    "tests": dict,
    "state": str,
    "archive": str,
}
_RESULTS = ("success", "failed", "error", "crash", "timeout", "overflow", "killed")


@dataclass
class _Checked:
    problems: Dict[str, Tuple[str, str]] = field(default_factory=dict)


def result_from_message(result: Any, state: str = "") -> JobResult:
    """The container's ``result`` payload as a JobResult; a malformed one is a ``crash`` saying why.

    ``state`` is the job's previous ``@state``, kept if the result is refused.
    """
    try:
        return _result(result)
    except ValueError as e:
        return JobResult("crash", f"The grading container returned a malformed result: {e}", state=state)


def _result(result: Any) -> JobResult:
    if not isinstance(result, dict):
        raise ValueError("it is not a map")
    for key, value in result.items():
        wanted = _RESULT_TYPES.get(key) if isinstance(key, str) else None
        if wanted is None:
            raise ValueError(f"unknown field {key!r}")
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise ValueError(f"field {key!r} is a {type(value).__name__}, not a {wanted.__name__}")
    problems: Dict[str, Tuple[str, str]] = {}
    for pid, value in result.get("problems", {}).items():
        if not isinstance(pid, str) or not _ID.match(pid):
            raise ValueError(f"invalid problem id {pid!r}")
        if isinstance(value, str):
            # a message without a result (the image stores the bare text): INGInious passes the text on
            # as it is; the wire types of this project want a pair, so the result is empty
            problems[pid] = ("", value)
            continue
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, str) for v in value):
            raise ValueError(f"problem {pid!r} is not a (result, text) pair")
        problems[pid] = (value[0], value[1])
    tests = result.get("tests", {})
    for tid, value in tests.items():
        if not isinstance(tid, str) or not _TEST_ID.match(tid) or isinstance(value, dict):
            raise ValueError(f"invalid test {tid!r}")
    outcome = result.get("result", "error")
    if outcome not in _RESULTS:
        raise ValueError(f"unknown result type {outcome!r}")
    archive: Optional[bytes] = None
    if "archive" in result:
        try:
            archive = base64.b64decode(result["archive"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the archive is not base64") from None
    grade = result.get("grade")
    if grade is not None and grade != grade:  # NaN
        raise ValueError("the grade is not a number")
    return JobResult(
        outcome,
        result.get("text", ""),
        None if grade is None else round(grade, 2),
        problems,
        dict(tests),
        dict(result.get("custom", {})),
        result.get("state", ""),
        archive,
        result.get("stdout"),
        result.get("stderr"),
    )
