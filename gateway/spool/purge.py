"""Erase matching records from a spool (GDPR): filtered copies of sealed segments, renamed in place.

The spool is append-only for the writer and readers, so a purge is a maintenance operation:
- every reader must be stopped: the purge takes each `cursor-*.lock` (a running reader, e.g. the
  Kafka replayer of a running gateway or a spool-draining sink worker, makes it fail with
  SpoolLocked) and holds `purge.lock`, which readers that start meanwhile refuse to open under;
- a running writer may stay: it only appends to the newest segment, which is then left alone (its
  matches are reported as `skipped`; run again once the gateway has stopped or rolled the segment);
  without a writer the purge holds the write lock, so none starts, and rewrites every segment.
A segment is rewritten as a filtered copy (kept records re-encoded byte-for-byte, fsynced; in an
encrypted segment re-sealed with the same key and fresh nonces; a spooled request's kept records
become one frame each) renamed over the original. Cursors inside a rewritten segment are moved to the
same logical position (the offset after the same kept records), so readers neither skip nor repeat
anything. The rename and
the cursor updates are made crash-safe by a journal: while `purge.journal` exists readers refuse to
open, and the next purge finishes the interrupted one first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.core.record import Record
from gateway.spool.crypto import Keyring, key_for
from gateway.spool.errors import SpoolError, SpoolLocked
from gateway.spool.format import HEADER_SIZE, encode_record, segment_header
from gateway.spool.locks import PURGE_JOURNAL, PURGE_LOCK, WRITE_LOCK, FileLock
from gateway.spool.reader import CURSOR_PREFIX, load_cursors, write_cursor
from gateway.spool.segment import Stop, fsync_directory, list_segments, scan_segment, segment_name

_TMP_SUFFIX = ".purge-tmp"


@dataclass(slots=True)
class PurgeResult:
    removed: int = 0
    segments_rewritten: int = 0
    skipped: int = 0  # matches left in the segment a running writer is appending to


def purge_spool(
    directory: Path, matches: Callable[[Record], bool], keyring: Keyring | None = None
) -> PurgeResult:
    """Remove every record for which `matches` is true from `directory`'s spool (see module doc)."""
    directory = Path(directory)
    locks = [FileLock(directory / PURGE_LOCK)]
    try:
        locks[0].acquire()
        for path in sorted(directory.glob(f"{CURSOR_PREFIX}*.lock")):
            lock = FileLock(path)
            try:
                lock.acquire()
            except SpoolLocked:
                name = path.name[len(CURSOR_PREFIX) : -len(".lock")]
                raise SpoolLocked(f"spool reader {name!r} is running in {directory}: stop it first") from None
            locks.append(lock)
        writer = FileLock(directory / WRITE_LOCK)
        try:
            writer.acquire()
            locks.append(writer)
            writer_active = False
        except SpoolLocked:
            writer_active = True
        _finish_interrupted(directory)
        return _purge(directory, matches, writer_active, keyring)
    finally:
        for lock in reversed(locks):
            lock.release()


def _purge(
    directory: Path, matches: Callable[[Record], bool], writer_active: bool, keyring: Keyring | None
) -> PurgeResult:
    result = PurgeResult()
    segments = list_segments(directory)
    for number in segments:
        scan = scan_segment(directory / segment_name(number), keyring=keyring)
        if scan.stop is Stop.MISSING:
            continue
        if writer_active and number == segments[-1]:
            result.skipped += sum(1 for record in scan.records if matches(record))
            continue
        keep = [not matches(record) for record in scan.records]
        if all(keep):
            continue
        key = key_for(scan.key_id, f"spool segment {number}", keyring) if scan.key_id else None
        frames = [encode_record(record, key) for record in scan.records]
        _rewrite(directory, number, frames, keep, scan.ends, scan.key_id)
        result.removed += keep.count(False)
        result.segments_rewritten += 1
    return result


def _rewrite(
    directory: Path, number: int, frames: list[bytes], keep: list[bool], ends: list[int], key_id: int
) -> None:
    """Replace segment `number` by its kept frames and move cursors inside it, crash-safely."""
    path = directory / segment_name(number)
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    _write_synced(tmp, segment_header(key_id) + b"".join(f for f, k in zip(frames, keep, strict=True) if k))
    cursors = {}
    for name, position in load_cursors(directory).items():
        if position.segment == number:
            cursors[name] = _translate(position.offset, frames, keep, ends)
    journal = {"segment": number, "tmp": tmp.name, "cursors": cursors}
    _write_synced(directory / PURGE_JOURNAL, json.dumps(journal).encode())
    fsync_directory(directory)
    _apply(directory, journal)


def _translate(offset: int, frames: list[bytes], keep: list[bool], ends: list[int]) -> int:
    """Offset in the filtered segment that follows the same kept records as `offset` in the original
    (`ends[i]`: where the original frame of record i ended; cursors stand between frames)."""
    new = HEADER_SIZE
    for frame, kept, end in zip(frames, keep, ends, strict=True):
        if end > offset:
            break
        if kept:
            new += len(frame)
    return new


def _apply(directory: Path, journal: dict) -> None:
    """Roll a journaled rewrite forward (idempotent): rename the copy, move cursors, drop the journal."""
    number = int(journal["segment"])
    tmp = directory / journal["tmp"]
    if tmp.exists():
        os.rename(tmp, directory / segment_name(number))
    for name, offset in journal["cursors"].items():
        write_cursor(directory, name, number, int(offset))
    os.unlink(directory / PURGE_JOURNAL)
    fsync_directory(directory)


def _finish_interrupted(directory: Path) -> None:
    """Complete a purge that crashed after journaling; drop copies that never got a journal."""
    journal_path = directory / PURGE_JOURNAL
    if journal_path.exists():
        try:
            journal = json.loads(journal_path.read_bytes())
        except ValueError as exc:
            raise SpoolError(f"unreadable {journal_path}: {exc}") from exc
        _apply(directory, journal)
    for stale in directory.glob(f"*{_TMP_SUFFIX}"):
        stale.unlink()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
