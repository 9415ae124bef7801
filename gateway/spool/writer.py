"""The spool writer: an append-only segmented log with group commit, owned by one process at a time.

`append` encodes records on the event loop into a pending group and waits for it; each group goes to
a dedicated thread that writes it (and fsyncs, per policy) so the loop never blocks on disk, one
group at a time, in append order. Every append waiting on a group is acknowledged by the same write
and fsync. The thread's completion answers the group's appends and starts the next group in one loop
pass (no executor future, flusher task or shield per append in between): every pass between
"durable" and the answer costs a loop iteration, and under load an iteration is long.

Each writer session starts a new segment: offsets a reader saw before a crash can never point into
bytes written after it. Recovery checks only the newest segment (older ones were fsynced when they
were sealed) and truncates it at the first incomplete or corrupt frame, as a torn tail: after a
crash that tail was never acknowledged under ALWAYS/BATCH, and nothing before it is touched. (Media
damage inside the newest segment therefore also drops the records after the damage; in older
segments readers skip only the damaged rest of the segment, see reader.py.)

With a keyring, every segment this writer creates is encrypted with its newest key (crypto.py);
opening refuses (SpoolKeyError) a directory holding a segment whose key the keyring lacks.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gateway.core.record import Record
from gateway.spool.crypto import Keyring, key_for
from gateway.spool.errors import SpoolClosed, SpoolFull, SpoolWriteError
from gateway.spool.format import (
    HEADER_SIZE,
    encode_record,
    encode_request,
    header_is_valid,
    header_key_id,
    segment_header,
)
from gateway.spool.locks import WRITE_LOCK, FileLock
from gateway.spool.segment import (
    Stop,
    fsync_directory,
    list_segments,
    scan_segment,
    segment_name,
    segment_sizes,
)

log = logging.getLogger(__name__)

GiB = 1 << 30
MiB = 1 << 20
# When the spool looks full, re-measure disk usage (readers delete segments) at most this often.
_MEASURE_INTERVAL_S = 1.0


class FsyncPolicy(StrEnum):
    """When an append is acknowledged."""

    ALWAYS = "always"  # after an fsync, flushing as soon as the previous flush finished
    # After an fsync, at most one per fsync_window_ms: appends arriving meanwhile share the next one.
    # An append after a quiet spell is flushed at once, so the window only adds latency under load.
    BATCH = "batch"
    NEVER = "never"  # after write(): survives a process crash, not a power loss


@dataclass(slots=True, frozen=True)
class SpoolStats:
    """Counters of one writer since open; `bytes` includes accepted bytes not yet written."""

    segments: int
    bytes: int
    max_bytes: int
    records_pending: int
    records_written: int
    flushes: int
    fsyncs: int
    full_rejections: int
    write_errors: int


class Spool:
    """Durable local log of records in one directory; exactly one open writer per directory."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy = FsyncPolicy.BATCH,
        fsync_window_ms: float = 2.0,
        max_bytes: int = 4 * GiB,
        segment_bytes: int = 64 * MiB,
        keyring: Keyring | None = None,
    ) -> None:
        if segment_bytes <= HEADER_SIZE or max_bytes < segment_bytes:
            raise ValueError("need max_bytes >= segment_bytes > segment header size")
        if fsync_window_ms < 0:
            raise ValueError("fsync_window_ms must not be negative")
        self.directory = Path(directory)
        self.fsync = FsyncPolicy(fsync)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._window_s = fsync_window_ms / 1000
        # Encryption at rest (crypto.py): new segments are sealed with the newest key; the keyring
        # is also what this spool's readers need (`keyring`).
        self.keyring = keyring
        self._key = None if keyring is None else keyring.newest
        self._lock = FileLock(self.directory / WRITE_LOCK)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._open = False
        self._closing = False
        # Event-loop side: the group being gathered (its frames and the appends waiting for it) and
        # whether one is being written or its flush is scheduled (a call_soon or the window's timer).
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_records = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._writing = False
        self._flush_scheduled = False
        self._flush_started = float("-inf")
        self._inflight_bytes = 0
        self._inflight_records = 0
        self._drained: asyncio.Future[None] | None = None  # close() waits for the last group
        self._measured_at = 0.0
        # Flusher-thread side (read by the loop only for stats).
        self._fd = -1
        self._segment = 0
        self._segment_size = 0
        self._segments = 0
        self._disk_bytes = 0
        self._broken: OSError | None = None
        # Counters.
        self._records_written = 0
        self._flushes = 0
        self._fsyncs = 0
        self._full_rejections = 0
        self._write_errors = 0

    # -- public API -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory, take the write lock (SpoolLocked if held), recover, start flushing."""
        if self._loop is not None:
            raise RuntimeError("spool already opened")
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spool-flush")
        try:
            await self._loop.run_in_executor(self._executor, self._open_sync)
        except BaseException:
            self._executor.shutdown()
            self._loop = None
            raise
        self._open = True

    async def append(self, records: Sequence[Record]) -> None:
        """Append all of `records` (or none) and return once they are durable per the fsync policy.

        Raises SpoolFull at once when they would not fit in max_bytes, SpoolWriteError when the
        write failed, SpoolClosed when the spool is not open.
        """
        if not self._open or self._closing:
            raise SpoolClosed("spool is not open")
        if not records:
            return
        key = self._key
        await self._append([encode_record(record, key) for record in records], len(records))

    async def append_request(self, content: bytes, records: int) -> None:
        """Append a spooled capture request (gateway/capture/spooled.py) holding `records` records as
        one frame, like `append`."""
        if not self._open or self._closing:
            raise SpoolClosed("spool is not open")
        await self._append([encode_request(content, self._key)], records)

    async def _append(self, frames: list[bytes], records: int) -> None:
        size = sum(map(len, frames))
        if self.used_bytes + size > self.max_bytes:
            await self._make_room(size)
        if self._closing:
            raise SpoolClosed("spool is closing")
        loop = self._loop
        assert loop is not None
        self._pending += frames
        self._pending_bytes += size
        self._pending_records += records
        # Its own future, not a shared one: a cancelled append (client gone) cancels only itself.
        waiter = loop.create_future()
        self._waiters.append(waiter)
        if not self._writing and not self._flush_scheduled:
            # In the next pass, so the appends of this pass join the same group.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        await waiter

    async def close(self) -> None:
        """Write and fsync everything accepted, then close the segment and release the lock."""
        if not self._open or self._loop is None or self._executor is None:
            return
        self._closing = True
        if self._writing or self._flush_scheduled:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await self._drained
        try:
            await self._loop.run_in_executor(self._executor, self._close_sync)
        finally:
            self._executor.shutdown()
            self._open = False

    async def remeasure(self) -> None:
        """Re-read disk usage now, e.g. after a reader in this process deleted consumed segments."""
        assert self._loop is not None and self._executor is not None
        self._measured_at = self._loop.time()
        await self._loop.run_in_executor(self._executor, self._measure)

    @property
    def used_bytes(self) -> int:
        """Segment bytes on disk plus bytes accepted but not yet written."""
        return self._disk_bytes + self._inflight_bytes + self._pending_bytes

    def stats(self) -> SpoolStats:
        """A snapshot of the counters (no I/O)."""
        return SpoolStats(
            segments=self._segments,
            bytes=self.used_bytes,
            max_bytes=self.max_bytes,
            records_pending=self._pending_records + self._inflight_records,
            records_written=self._records_written,
            flushes=self._flushes,
            fsyncs=self._fsyncs,
            full_rejections=self._full_rejections,
            write_errors=self._write_errors,
        )

    # -- event loop side --------------------------------------------------------------------------

    async def _make_room(self, size: int) -> None:
        """Re-measure disk usage (at most once a second) and raise SpoolFull if `size` still won't fit."""
        loop = self._loop
        assert loop is not None and self._executor is not None
        if loop.time() - self._measured_at >= _MEASURE_INTERVAL_S:
            self._measured_at = loop.time()
            try:
                await loop.run_in_executor(self._executor, self._measure)
            except OSError as exc:
                raise SpoolWriteError(f"spool {self.directory}: cannot measure: {exc}", exc.errno) from exc
        if self.used_bytes + size > self.max_bytes:
            self._full_rejections += 1
            raise SpoolFull(f"spool {self.directory} is full ({self.used_bytes} of {self.max_bytes} bytes)")

    def _flush(self) -> None:
        """Hand the pending group to the flush thread, or wait out the batch window first."""
        loop = self._loop
        assert loop is not None and self._executor is not None
        self._flush_scheduled = False
        if not self._pending:
            self._maybe_drained()
            return
        if self.fsync is FsyncPolicy.BATCH and not self._closing:
            delay = self._flush_started + self._window_s - loop.time()
            if delay > 0:
                self._flush_scheduled = True
                loop.call_later(delay, self._flush)
                return
        frames, waiters = self._pending, self._waiters
        self._flush_started = loop.time()
        self._inflight_bytes, self._inflight_records = self._pending_bytes, self._pending_records
        self._pending, self._waiters, self._pending_bytes, self._pending_records = [], [], 0, 0
        self._writing = True
        written = self._executor.submit(self._write, frames)
        written.add_done_callback(lambda done: _call_on(loop, self._written, done, waiters))

    def _written(self, done: Future[None], waiters: list[asyncio.Future[None]]) -> None:
        """On the loop, once the flush thread wrote a group: answer its appends, start the next group."""
        exc = done.exception()
        if exc is None:
            self._flushes += 1
            self._records_written += self._inflight_records
            for waiter in waiters:
                if not waiter.done():  # cancelled: the append's caller is gone
                    waiter.set_result(None)
        else:
            self._write_errors += 1
            log.error(
                "spool %s: write failed, %d records not acknowledged: %s",
                self.directory,
                self._inflight_records,
                exc,
            )
            error = SpoolWriteError(f"spool write failed: {exc}", getattr(exc, "errno", None))
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
        self._inflight_bytes = self._inflight_records = 0
        self._writing = False
        if self._pending and not self._flush_scheduled:
            self._flush()
        else:
            self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self._drained is not None and not self._drained.done() and not (self._writing or self._pending):
            self._drained.set_result(None)

    # -- flusher thread side ----------------------------------------------------------------------

    def _open_sync(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            for leftover in self.directory.glob("*.seg.tmp"):
                leftover.unlink()
            segments = list_segments(self.directory)
            self._check_keys(segments)
            if segments:
                self._recover(segments[-1])
            self._create_segment(segments[-1] + 1 if segments else 1)
            self._measure()
        except BaseException:
            self._lock.release()
            raise

    def _check_keys(self, segments: list[int]) -> None:
        """Refuse to open (SpoolKeyError) when a retained segment is encrypted with a key not configured:
        its records could not be replayed, so fail at startup rather than later in a reader."""
        for number in segments:
            try:
                with open(self.directory / segment_name(number), "rb") as file:
                    key_id = header_key_id(file.read(HEADER_SIZE))
            except FileNotFoundError:
                continue
            if key_id:
                key_for(key_id, f"spool segment {self.directory / segment_name(number)}", self.keyring)

    def _recover(self, number: int) -> None:
        """Truncate a torn tail of the newest segment; set a segment with a bad header aside."""
        path = self.directory / segment_name(number)
        with open(path, "rb") as file:
            header = file.read(HEADER_SIZE)
        if not header_is_valid(header):
            aside = path.with_name(path.name + ".corrupt")
            log.error(
                "spool %s: %s has no valid header; set aside as %s", self.directory, path.name, aside.name
            )
            path.rename(aside)
            return
        scan = scan_segment(path, decode=False)
        if scan.stop is Stop.END:
            return
        size = path.stat().st_size
        log.warning(
            "spool %s: %s has a %s frame at offset %d after %d good records; truncating %d bytes",
            self.directory,
            path.name,
            scan.stop.value,
            scan.end,
            scan.count,
            size - scan.end,
        )
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, scan.end)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _create_segment(self, number: int) -> None:
        """Create segment `number` atomically (header written and synced before it appears)."""
        path = self.directory / segment_name(number)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, segment_header(0 if self._key is None else self._key.key_id), 0)
            os.fsync(fd)
            os.rename(tmp, path)
        except BaseException:  # e.g. disk full: the active segment stays; the next write tries again
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        # Switch at once: once the new segment exists, readers take the previous one as sealed.
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._segment, self._segment_size = fd, number, HEADER_SIZE
        self._fsyncs += 2
        fsync_directory(self.directory)

    def _measure(self) -> None:
        """Re-read the size of every segment: readers may have deleted consumed ones."""
        sizes = segment_sizes(self.directory)
        self._segments = len(sizes)
        self._disk_bytes = sum(sizes.values())

    def _write(self, frames: list[bytes]) -> None:
        """Write one group at the end of the active segment (rolling first if it would overflow)."""
        if self._broken is not None:
            raise self._broken
        data = b"".join(frames)
        if self._segment_size > HEADER_SIZE and self._segment_size + len(data) > self.segment_bytes:
            self._roll()
        start = self._segment_size
        try:
            _pwrite_all(self._fd, data, start)
            if self.fsync is not FsyncPolicy.NEVER:
                # A failed fdatasync (ENOSPC at delayed allocation, EIO) is never retried: Linux may
                # mark the failed pages clean, so a retry could "succeed" without the data. The group
                # is cut off instead and its appends fail; earlier groups were synced before.
                os.fdatasync(self._fd)
                self._fsyncs += 1
        except OSError:
            self._undo(start)
            raise
        self._segment_size += len(data)
        self._disk_bytes += len(data)

    def _roll(self) -> None:
        """Seal the active segment (fsync) and continue in a new one."""
        os.fsync(self._fd)
        self._fsyncs += 1
        self._create_segment(self._segment + 1)
        self._measure()

    def _undo(self, start: int) -> None:
        """Cut a failed write off the segment so no partial frame sits before later ones."""
        try:
            os.ftruncate(self._fd, start)
        except OSError as exc:
            log.error(
                "spool %s: cannot truncate after a failed write; refusing further writes: %s",
                self.directory,
                exc,
            )
            self._broken = exc

    def _close_sync(self) -> None:
        try:
            if self._fd >= 0:
                os.fsync(self._fd)
                self._fsyncs += 1
                os.close(self._fd)
                self._fd = -1
        finally:
            self._lock.release()


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> None:
    """From the flush thread: run `callback` on the loop, unless the loop is gone (as asyncio's own
    executor futures do)."""
    if not loop.is_closed():
        loop.call_soon_threadsafe(callback, *args)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite until all of `data` is written (a short write is legal, e.g. near a full disk)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
