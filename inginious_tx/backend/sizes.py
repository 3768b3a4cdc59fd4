"""How many bytes a decoded value took on the wire, without encoding it again.

The backend bounds what a peer makes it hold in bytes (``max_inputdata``,
``max_queued_bytes``...).  Those bytes are measured at the edge, where a
message arrives, by :func:`packed_size`: the exact length of the msgpack
encoding of a value as both INGInious dialects write it (``use_bin_type``),
computed from the decoded objects in one walk that copies nothing (an ASCII
string's length is its byte length; only non-ASCII strings are encoded to
count their UTF-8 bytes).  The backend core never encodes or decodes.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

__all__ = ["packed_size", "rejected_job"]


def _header(n: int, small: int, one: bool) -> int:
    """Bytes of a str/bin/array/map header for ``n`` items or bytes.

    ``small`` is the largest n the type's fix form holds (31 for str, 15 for
    arrays and maps, -1 for bin which has none); ``one`` is whether the type
    has a 1-byte-length form (str8, bin8; arrays and maps do not).
    """
    if n <= small:
        return 1
    if one and n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    return 5


def _int_size(v: int) -> int:
    if v >= 0:
        if v < 0x80:
            return 1
        if v < 0x100:
            return 2
        if v < 0x10000:
            return 3
        if v < 0x100000000:
            return 5
        return 9
    if v >= -32:
        return 1
    if v >= -0x80:
        return 2
    if v >= -0x8000:
        return 3
    if v >= -0x80000000:
        return 5
    return 9


def packed_size(value: Any) -> int:
    """The length of ``msgpack.packb(value, use_bin_type=True)``, computed without packing.

    Iterative, so any nesting depth the decoder let through is fine.  A value
    of a type msgpack would not produce when decoding counts as 9 bytes.
    """
    if type(value) is dict:
        # The usual inputdata: a flat map of ASCII names to text or bytes.
        n = len(value)
        total = 1 if n < 16 else 3 if n < 0x10000 else 5
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return _walk(value)
            n = len(key)
            total += n + (1 if n < 32 else 2 if n < 0x100 else 3 if n < 0x10000 else 5)
            kind = type(item)
            if kind is str and item.isascii():
                n = len(item)
                total += n + (1 if n < 32 else 2 if n < 0x100 else 3 if n < 0x10000 else 5)
            elif kind is bytes:
                n = len(item)
                total += n + (2 if n < 0x100 else 3 if n < 0x10000 else 5)
            else:
                return _walk(value)
        return total
    return _walk(value)


def _walk(value: Any) -> int:
    """:func:`packed_size` of anything, one item at a time."""
    total = 0
    stack: List[Any] = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        v = pop()
        t = type(v)
        if t is str:
            n = len(v) if v.isascii() else len(v.encode("utf-8", "surrogatepass"))
            total += _header(n, 31, True) + n
        elif t is bytes:
            n = len(v)
            total += _header(n, -1, True) + n
        elif t is dict:
            total += _header(len(v), 15, False)
            for key, item in v.items():
                push(key)
                push(item)
        elif t is tuple or t is list:
            total += _header(len(v), 15, False)
            extend(v)
        elif t is int:
            total += _int_size(v)
        elif v is None or t is bool:
            total += 1
        elif t is float:
            total += 9
        else:
            data = getattr(v, "data", None)  # msgpack.ExtType(code, data)
            if type(data) is bytes:
                n = len(data)
                total += (2 if n in (1, 2, 4, 8, 16) else _header(n, -1, True) + 1) + n
            else:
                total += 9
    return total


def rejected_job(error: Exception, payload: bytes) -> Tuple[Optional[str], Any]:
    """``(msgtype, job_id)`` of a frame that did not decode, each None if unreadable.

    The decoder records both on the error (``MessageError.msgtype`` and
    ``.job_id``, contract 3 of the dialect work).  For a decoder from before
    ``job_id`` existed, they are read leniently from the frame, streaming, so
    that a deeply nested inputdata is never unpacked: ``job_id`` then
    ``priority`` are the first two fields of a new job in both dialects, so a
    frame that starts so is a job even when its type key, written last,
    cannot be reached.
    """
    msgtype = getattr(error, "msgtype", None)
    if hasattr(error, "job_id"):
        return msgtype, error.job_id
    import msgpack

    job_id: Any = None
    keys: List[Any] = []
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(payload), 1))
        unpacker.feed(payload)
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            keys.append(key)
            if key == "job_id":
                job_id = unpacker.unpack()
            elif key in ("type", "@type") and msgtype is None:
                value = unpacker.unpack()
                msgtype = value if type(value) is str else None
            else:
                unpacker.skip()
    except Exception:
        pass
    if msgtype is None and keys[:2] == ["job_id", "priority"]:
        msgtype = "client_new_job"
    return msgtype, job_id
