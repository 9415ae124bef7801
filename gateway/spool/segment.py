"""Segment files: naming, listing and scanning frames from a position.

Shared by the writer (recovery) and the readers; nothing here takes locks or writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from gateway.capture.spooled import request_records
from gateway.core.record import Record
from gateway.spool.crypto import Keyring, key_for
from gateway.spool.format import (
    FRAME_SIZE,
    HEADER_SIZE,
    FrameStatus,
    RequestExpander,
    check_frame,
    decode_records,
    header_key_id,
)

SUFFIX = ".seg"
_NAME_DIGITS = 20
_READ_CHUNK = 1 << 20


def segment_name(number: int) -> str:
    """File name of segment `number`: zero-padded so names sort like numbers."""
    return f"{number:0{_NAME_DIGITS}d}{SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    """Numbers of the segment files in `directory`, oldest first."""
    numbers = []
    for name in os.listdir(directory):
        if name.endswith(SUFFIX) and name[: -len(SUFFIX)].isdigit():
            numbers.append(int(name[: -len(SUFFIX)]))
    numbers.sort()
    return numbers


def segment_sizes(directory: Path) -> dict[int, int]:
    """Size in bytes of every segment file (files deleted meanwhile are left out)."""
    sizes = {}
    for number in list_segments(directory):
        try:
            sizes[number] = os.stat(directory / segment_name(number)).st_size
        except FileNotFoundError:
            continue
    return sizes


class Stop(Enum):
    """Why `scan_segment` stopped."""

    LIMIT = "limit"  # max_records or max_bytes reached: more may follow
    END = "end"  # clean end of the data written so far
    INCOMPLETE = "incomplete"  # the file ends inside a frame (being written, or torn)
    CORRUPT = "corrupt"  # bad header, impossible length or checksum mismatch
    MISSING = "missing"  # the file is gone (consumed and deleted by a reader)


@dataclass(slots=True)
class Scan:
    """Result of `scan_segment`: records (if decoded), how many frames, and the offset after the last good frame.

    A frame holds one record, or all the records of a spooled capture request; `ends[i]` is the offset
    right after the frame that `records[i]` came from.
    """

    end: int
    stop: Stop
    count: int = 0
    size: int = 0
    records: list[Record] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    key_id: int = 0  # nonzero: the segment is encrypted with that key (crypto.py)


def scan_segment(
    path: Path,
    offset: int = HEADER_SIZE,
    *,
    max_records: int | None = None,
    max_bytes: int | None = None,
    decode: bool = True,
    keyring: Keyring | None = None,
    expand: RequestExpander = request_records,
) -> Scan:
    """Read valid frames of one segment from `offset` until a limit, the end, or the first bad frame.

    `max_records` counts records when decoding, else frames; `max_bytes` counts frame bytes. Both are
    checked after each frame, so one frame is always returned even when it alone is over a limit.
    With `decode=False` frames are only validated and counted.
    Decoding an encrypted segment needs its key in `keyring`: a missing or wrong key raises
    SpoolKeyError; validating and counting need no key. `expand` turns a spooled request into its
    records (format.py).
    """
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below, on every path
    except FileNotFoundError:
        return Scan(offset, Stop.MISSING)
    with file:
        key_id = header_key_id(file.read(HEADER_SIZE))
        if key_id is None:
            return Scan(offset, Stop.CORRUPT)
        offset = max(offset, HEADER_SIZE)
        key = key_for(key_id, f"spool segment {path}", keyring) if key_id and decode else None
        file.seek(offset)
        result = Scan(offset, Stop.END, key_id=key_id)
        chunk = _READ_CHUNK if max_bytes is None else max(FRAME_SIZE, min(_READ_CHUNK, max_bytes))
        data = file.read(chunk)
        view = memoryview(data)
        pos = 0
        records = result.records
        while True:
            if (max_records is not None and (len(records) if decode else result.count) >= max_records) or (
                max_bytes is not None and result.size >= max_bytes
            ):
                result.stop = Stop.LIMIT
                break
            status, end = check_frame(view, pos)
            if status is FrameStatus.INCOMPLETE:
                more = file.read(max(chunk, end - len(data)))
                if not more:
                    result.stop = Stop.END if pos == len(data) else Stop.INCOMPLETE
                    break
                view.release()
                data = data[pos:] + more
                view = memoryview(data)
                pos = 0
                continue
            if status is FrameStatus.CORRUPT:
                result.stop = Stop.CORRUPT
                break
            if decode:
                try:
                    if key is None:
                        decoded = decode_records(data, pos + FRAME_SIZE, end, expand)
                    else:
                        plain = key.open(view[pos + FRAME_SIZE : end], f"spool segment {path} at {result.end}")
                        decoded = decode_records(plain, 0, len(plain), expand)
                except ValueError:
                    result.stop = Stop.CORRUPT
                    break
                records += decoded
                result.ends += [result.end + end - pos] * len(decoded)
            result.count += 1
            result.size += end - pos
            result.end += end - pos
            pos = end
        view.release()
    return result


def fsync_directory(directory: Path) -> None:
    """Make file creations, renames and deletions in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
