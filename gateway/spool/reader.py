"""Reading the spool in order: named, persisted cursors and a lock-free iterator for dumps.

Readers may run while a writer (in any process) appends. The newest segment is the one being
written: a bad or incomplete frame there means "not written yet", and reading stops until more
arrives. Older segments are sealed (complete and fsynced before the next one was created), so a bad
frame in one of them is damage: it is logged and the rest of that segment is skipped; every record
before it is still delivered.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.core.record import Record
from gateway.spool.crypto import Keyring
from gateway.spool.errors import SpoolError, SpoolLocked
from gateway.spool.format import HEADER_SIZE
from gateway.spool.locks import FileLock, purge_in_progress
from gateway.spool.segment import Stop, fsync_directory, list_segments, scan_segment, segment_name

log = logging.getLogger(__name__)

MiB = 1 << 20
_CURSOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CURSOR_PREFIX = "cursor-"


@dataclass(slots=True, frozen=True, order=True)
class SpoolPosition:
    """Where the next read starts: a segment number and a byte offset in it."""

    segment: int
    offset: int


@dataclass(slots=True, frozen=True)
class SpoolBatch:
    """Records read in order, and the position right after them (pass to `commit`)."""

    records: list[Record]
    position: SpoolPosition
    size: int = 0

    def __len__(self) -> int:
        return len(self.records)


@dataclass(slots=True)
class _Read:
    records: list[Record] = field(default_factory=list)
    count: int = 0
    size: int = 0


def _start_of(segment: int) -> SpoolPosition:
    return SpoolPosition(segment, HEADER_SIZE)


def _settle(position: SpoolPosition | None, segments: list[int]) -> SpoolPosition:
    """Move a position off a deleted segment to the next one that exists (`segments` is not empty)."""
    if position is None:
        return _start_of(segments[0])
    if position.segment in segments:
        return position
    later = [number for number in segments if number > position.segment]
    if later:
        return _start_of(later[0])
    # The position is past the newest segment: the log was reset under the cursor; start over.
    log.warning(
        "spool cursor at segment %d is past the newest segment %d; restarting from the oldest",
        position.segment,
        segments[-1],
    )
    return _start_of(segments[0])


def _read(
    directory: Path,
    position: SpoolPosition | None,
    max_records: int,
    max_bytes: int,
    decode: bool = True,
    keyring: Keyring | None = None,
) -> tuple[_Read, SpoolPosition | None]:
    """Read from `position` across segments until a limit or the end of what is written."""
    result = _Read()
    while result.count < max_records and result.size < max_bytes:
        # List before reading: a segment that has a successor is sealed, so it was complete when read.
        segments = list_segments(directory)
        if not segments:
            break
        position = _settle(position, segments)
        scan = scan_segment(
            directory / segment_name(position.segment),
            position.offset,
            max_records=max_records - result.count,
            max_bytes=max_bytes - result.size,
            decode=decode,
            keyring=keyring,
        )
        result.records += scan.records
        result.size += scan.size
        result.count += len(scan.records) if decode else scan.count
        if scan.stop is Stop.MISSING:
            continue
        position = SpoolPosition(position.segment, scan.end)
        if scan.stop is Stop.LIMIT or position.segment == segments[-1]:
            break
        if scan.stop in (Stop.CORRUPT, Stop.INCOMPLETE):
            log.error(
                "spool %s: segment %d is damaged at offset %d (%s); skipping the rest of it",
                directory,
                position.segment,
                scan.end,
                scan.stop.value,
            )
        position = _start_of(segments[segments.index(position.segment) + 1])
    return result, position


def iter_records(
    directory: Path, batch_records: int = 10_000, keyring: Keyring | None = None
) -> Iterator[Record]:
    """Every retained record in order, from the oldest segment, ignoring cursors and locks."""
    directory = Path(directory)
    position: SpoolPosition | None = None
    while True:
        result, position = _read(directory, position, batch_records, 16 * MiB, keyring=keyring)
        if not result.records:
            return
        yield from result.records


def count_frames(directory: Path) -> int:
    """Validate and count every retained frame (reads all the data, decodes none)."""
    result, _ = _read(Path(directory), None, max_records=1 << 62, max_bytes=1 << 62, decode=False)
    return result.count


def _cursor_path(directory: Path, name: str) -> Path:
    return directory / f"{CURSOR_PREFIX}{name}.json"


def write_cursor(directory: Path, name: str, segment: int, offset: int) -> None:
    """Persist reader `name`'s position atomically and durably."""
    path = _cursor_path(directory, name)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        data = json.dumps({"segment": segment, "offset": offset}).encode()
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, "short write")
        os.fsync(fd)
    except BaseException:  # e.g. disk full: the committed cursor stays as it was
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsync_directory(directory)


def load_cursors(directory: Path) -> dict[str, SpoolPosition]:
    """Every persisted cursor in `directory` by reader name (unreadable files are logged and skipped)."""
    cursors = {}
    for path in Path(directory).glob(f"{CURSOR_PREFIX}*.json"):
        name = path.name[len(CURSOR_PREFIX) : -len(".json")]
        try:
            data = json.loads(path.read_bytes())
            cursors[name] = SpoolPosition(int(data["segment"]), int(data["offset"]))
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError) as exc:
            log.error("spool %s: ignoring unreadable cursor %s: %s", directory, path.name, exc)
    return cursors


def cursor_mtime(directory: Path, name: str) -> float | None:
    """When reader `name` last committed progress (epoch seconds), or None if it never did."""
    try:
        return _cursor_path(Path(directory), name).stat().st_mtime
    except FileNotFoundError:
        return None


def lag_bytes(directory: Path, position: SpoolPosition | None) -> int:
    """Frame bytes written after `position` (None: from the beginning), from file sizes only."""
    lag = 0
    for number in list_segments(directory):
        if position is not None and number < position.segment:
            continue
        try:
            size = os.stat(directory / segment_name(number)).st_size
        except FileNotFoundError:
            continue
        start = position.offset if position is not None and number == position.segment else HEADER_SIZE
        lag += max(0, size - start)
    return lag


_KEPT_WARNED: set[tuple[str, str]] = set()  # (directory, reader): said once per process


def _warn_kept(directory: Path, name: str, segment: int) -> None:
    if (str(directory), name) in _KEPT_WARNED:
        return
    _KEPT_WARNED.add((str(directory), name))
    log.warning(
        "spool %s: reader %r keeps segment %d and those after it: they hold records for another reader that "
        "has not read this spool yet (session recordings: `gateway recordings sink`; events: `gateway sink`); "
        "they are deleted once it has read them",
        directory, name, segment,
    )  # fmt: skip


class SpoolReader:
    """Reads records in order and persists its position under `name`; one reader per name at a time.

    Synchronous (run it in a thread from asyncio). Use as a context manager, or call `close`.
    """

    def __init__(self, directory: Path, name: str, keyring: Keyring | None = None) -> None:
        if not _CURSOR_NAME.fullmatch(name):
            raise ValueError(f"invalid reader name {name!r}: use up to 64 of [A-Za-z0-9_.-]")
        self.directory = Path(directory)
        self.name = name
        self.keyring = keyring  # None: no keys, an encrypted segment raises SpoolKeyError
        if not self.directory.is_dir():
            raise SpoolError(f"spool directory {self.directory} does not exist")
        self._lock = FileLock(self.directory / f"{CURSOR_PREFIX}{name}.lock")
        self._lock.acquire()
        if purge_in_progress(self.directory):
            self._lock.release()
            raise SpoolLocked(f"a spool purge is running or was interrupted in {self.directory}")
        self.committed: SpoolPosition | None = load_cursors(self.directory).get(name)
        self._position = self.committed

    @property
    def position(self) -> SpoolPosition | None:
        """Where the next `read_batch` starts (None: at the oldest segment)."""
        return self._position

    def read_batch(self, max_records: int = 10_000, max_bytes: int = 16 * MiB) -> SpoolBatch:
        """The next records in order (at least one if any is available); empty when caught up."""
        result, position = _read(self.directory, self._position, max_records, max_bytes, keyring=self.keyring)
        self._position = position
        if position is None:
            position = _start_of(0)
        return SpoolBatch(result.records, position, result.size)

    def commit(self, batch_or_position: SpoolBatch | SpoolPosition, deletable: Container[int] | None = None) -> None:
        """Persist the cursor (atomically, durably), then delete segments every cursor has passed. While this
        reader's cursor is the only one, `deletable` (when given) limits that to the segments before the
        first one not in it: the others may hold records of a reader that has not started yet."""
        position = batch_or_position
        if isinstance(position, SpoolBatch):
            position = position.position
        write_cursor(self.directory, self.name, position.segment, position.offset)
        self.committed = position
        self._delete_passed(deletable)

    def lag(self) -> int:
        """Bytes written after this reader's position (cheap: directory listing and file sizes)."""
        return lag_bytes(self.directory, self._position)

    def close(self) -> None:
        """Release the reader lock (the committed cursor stays)."""
        self._lock.release()

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _delete_passed(self, deletable: Container[int] | None) -> None:
        """Delete segments older than every cursor's segment, never the newest (active) one."""
        cursors = load_cursors(self.directory)
        if not cursors:
            return
        oldest_needed = min(position.segment for position in cursors.values())
        alone = cursors.keys() == {self.name}
        segments = list_segments(self.directory)
        for number in segments[:-1]:
            if number >= oldest_needed:
                break
            if alone and deletable is not None and number not in deletable:
                _warn_kept(self.directory, self.name, number)
                break
            try:
                os.unlink(self.directory / segment_name(number))
            except FileNotFoundError:
                continue
