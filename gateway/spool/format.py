"""On-disk format of the spool: segment header, record frames and the record payload encoding.

A segment file is a 16-byte header followed by frames:

    header  = magic b"GWSPOOL\\0" | u32 version | u32 key id
    frame   = u32 payload length | u32 crc32(payload) | payload
    payload = u16 topic length | i32 key length (-1: no key) | u16 header count
              | topic | key | (u16 name length | u32 value length | name | value) * count | value

All integers are little-endian. The record value takes the rest of the payload, so it needs no length.

A payload may instead hold a whole capture request (embedded mode, gateway/capture/spooled.py):

    payload = u16 0xFFFF (no topic is that long) | u16 kind (1) | content

and stands for the records `request_records(content)` builds, in order.
Version 1: plaintext, key id 0. Version 2: encrypted; every frame payload is sealed (crypto.py) with
the key whose id the header records, and the CRC covers the sealed bytes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

from gateway.capture.spooled import request_records
from gateway.core.record import Record

if TYPE_CHECKING:
    from gateway.spool.crypto import SpoolKey

MAGIC = b"GWSPOOL\0"
VERSION = 1
VERSION_ENCRYPTED = 2
SEGMENT_HEADER = struct.Struct("<8sII")
HEADER_SIZE = SEGMENT_HEADER.size
FRAME = struct.Struct("<II")
FRAME_SIZE = FRAME.size
_FIXED = struct.Struct("<HiH")
# Other lengths can only come from damage (e.g. zeros after a crash); writes refuse larger payloads.
MAX_PAYLOAD = 1 << 28
_HEADER_ITEM = struct.Struct("<HI")
_REQUEST = struct.Struct("<HH")
_REQUEST_MARK = 0xFFFF
_REQUEST_KIND = 1
_REQUEST_PREFIX = _REQUEST.pack(_REQUEST_MARK, _REQUEST_KIND)
_crc32 = zlib.crc32
# The header names capture writes, encoded once.
_NAME_BYTES = {name: name.encode() for name in ("token", "distinct_id", "timestamp", "event", "uuid", "now",
                                                 "historical_migration")}


class FrameStatus(Enum):
    """What `check_frame` found at a position."""

    OK = "ok"
    INCOMPLETE = "incomplete"  # the buffer ends inside the frame: not written (yet), or torn
    CORRUPT = "corrupt"  # impossible length or checksum mismatch


def segment_header(key_id: int = 0) -> bytes:
    """The header every segment file starts with (`key_id`: frames are sealed with that key)."""
    return SEGMENT_HEADER.pack(MAGIC, VERSION_ENCRYPTED if key_id else VERSION, key_id)


def header_key_id(data: bytes) -> int | None:
    """The key id of a valid header (0: plaintext), None when `data` is no header this code reads."""
    if len(data) < HEADER_SIZE:
        return None
    magic, version, key_id = SEGMENT_HEADER.unpack_from(data)
    if magic != MAGIC:
        return None
    if version == VERSION and key_id == 0:
        return 0
    if version == VERSION_ENCRYPTED and key_id:
        return key_id
    return None


def header_is_valid(data: bytes) -> bool:
    """True when `data` starts with a segment header of a version this code reads."""
    return header_key_id(data) is not None


def encode_record(record: Record, sealer: SpoolKey | None = None) -> bytes:
    """Frame one record (hot path: one struct call per part, one join, one checksum)."""
    try:
        topic = record.topic.encode()
        key = record.key
        headers = record.headers
        parts = [_FIXED.pack(len(topic), -1 if key is None else len(key), len(headers)), topic]
        if key:
            parts.append(key)
        for name, value in headers:
            name_bytes = _NAME_BYTES.get(name) or name.encode()
            parts += (_HEADER_ITEM.pack(len(name_bytes), len(value)), name_bytes, value)
        parts.append(record.value)
        payload = b"".join(parts)
    except struct.error as exc:
        raise ValueError(f"record cannot be spooled: {exc}") from exc
    return _frame(payload, sealer)


def encode_request(content: bytes, sealer: SpoolKey | None = None) -> bytes:
    """Frame a whole capture request (`content` from gateway.capture.spooled.request_content)."""
    return _frame(_REQUEST_PREFIX + content, sealer)


def _frame(payload: bytes, sealer: SpoolKey | None) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"record of {len(payload)} bytes exceeds the spool limit of {MAX_PAYLOAD}")
    if sealer is not None:
        payload = sealer.seal(payload)
    return FRAME.pack(len(payload), _crc32(payload)) + payload


def check_frame(view: memoryview, pos: int) -> tuple[FrameStatus, int]:
    """Validate the frame starting at `pos`; returns its status and where it ends (or would end)."""
    if len(view) - pos < FRAME_SIZE:
        return FrameStatus.INCOMPLETE, pos + FRAME_SIZE
    length, crc = FRAME.unpack_from(view, pos)
    if length < _FIXED.size or length > MAX_PAYLOAD:
        return FrameStatus.CORRUPT, pos
    end = pos + FRAME_SIZE + length
    if end > len(view):
        return FrameStatus.INCOMPLETE, end
    if _crc32(view[pos + FRAME_SIZE : end]) != crc:
        return FrameStatus.CORRUPT, pos
    return FrameStatus.OK, end


RequestExpander = Callable[[memoryview], list[Any]]
"""What becomes of a spooled request's content when read: its records (`request_records`), or another
form of them, one item per record, in order (the embedded sink's events, gateway/sinkworker/spooled.py)."""


def decode_records(data: bytes, start: int, end: int, expand: RequestExpander = request_records) -> list[Any]:
    """The records of the payload `data[start:end]` of a frame `check_frame` accepted: one, or those of
    a spooled request as `expand` makes them (ValueError if malformed)."""
    try:
        if _FIXED.unpack_from(data, start)[0] == _REQUEST_MARK:
            kind = _REQUEST.unpack_from(data, start)[1]
            if kind != _REQUEST_KIND:
                raise ValueError(f"unknown spool frame kind {kind}")
            return expand(memoryview(data)[start + _REQUEST.size : end])
        return [_decode(data, start, end)]
    except struct.error as exc:
        raise ValueError(f"malformed record payload: {exc}") from exc


def _decode(data: bytes, start: int, end: int) -> Record:
    topic_len, key_len, count = _FIXED.unpack_from(data, start)
    pos = start + _FIXED.size
    topic = data[pos : pos + topic_len].decode()
    pos += topic_len
    key = None
    if key_len >= 0:
        key = data[pos : pos + key_len]
        pos += key_len
    headers = []
    for _ in range(count):
        name_len, value_len = _HEADER_ITEM.unpack_from(data, pos)
        pos += _HEADER_ITEM.size
        name = data[pos : pos + name_len].decode()
        pos += name_len
        headers.append((name, data[pos : pos + value_len]))
        pos += value_len
    if pos > end:
        raise ValueError("record payload is shorter than its fields")
    return Record(topic=topic, key=key, headers=tuple(headers), value=data[pos:end])
