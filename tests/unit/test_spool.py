"""Behaviour of the durable spool: format, group commit, bounds, recovery, readers and crash safety."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.core.record import Record
from gateway.spool import (
    FsyncPolicy,
    Spool,
    SpoolBatch,
    SpoolClosed,
    SpoolFull,
    SpoolLocked,
    SpoolReader,
    SpoolWriteError,
    is_write_locked,
    iter_records,
    record_to_json,
    spool_stats,
)
from gateway.spool import writer as writer_module
from gateway.spool.format import FRAME_SIZE, HEADER_SIZE, FrameStatus, check_frame, encode_record
from gateway.spool.segment import list_segments, segment_name

REPO = Path(__file__).resolve().parents[2]


def rec(n: int, size: int = 100, topic: str = "events") -> Record:
    """A record whose key and value carry a sequence number."""
    body = f'{{"n":{n}}}'.encode()
    return Record(topic, str(n).encode(), (("token", b"phc_x"), ("seq", str(n).encode())),
                  body + b" " * max(0, size - len(body)))


def seqs(records: Sequence[Record]) -> list[int]:
    return [int(record.key or b"-1") for record in records]


async def write(directory: Path, batches: Sequence[Sequence[Record]], **options: object) -> Spool:
    """Open a spool, append each batch in turn, close it."""
    spool = Spool(directory, **options)  # type: ignore[arg-type]
    await spool.open()
    for batch in batches:
        await spool.append(batch)
    await spool.close()
    return spool


def read_all(directory: Path) -> list[Record]:
    return list(iter_records(directory))


def segment_paths(directory: Path) -> list[Path]:
    return [directory / segment_name(number) for number in list_segments(directory)]


# -- format ----------------------------------------------------------------------------------------


def test_round_trip_preserves_every_field(tmp_path: Path) -> None:
    records = [
        Record("events", None, (), b"{}"),
        Record("events", b"", (), b""),
        Record("évènements_🎉", "clé-ü".encode(), (("näme", "välue-✓".encode()), ("", b"")), "ü".encode()),
        Record("session_recording_events", b"k", (("a", b"\x00\xff"),) * 3, os.urandom(3 << 20)),
    ]
    asyncio.run(write(tmp_path, [records]))
    assert read_all(tmp_path) == records
    with SpoolReader(tmp_path, "r") as reader:
        assert reader.read_batch().records == records


def test_unencodable_record_is_rejected_before_anything_is_appended(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        with pytest.raises(ValueError):
            await spool.append([rec(1), Record("t", None, (("x" * 70_000, b""),), b"")])
        await spool.append([rec(2)])
        await spool.close()

    asyncio.run(scenario())
    assert seqs(read_all(tmp_path)) == [2]


def test_check_frame_detects_bad_crc_and_incomplete_frames() -> None:
    frame = encode_record(rec(1))
    assert check_frame(memoryview(frame), 0) == (FrameStatus.OK, len(frame))
    assert check_frame(memoryview(frame[:-1]), 0)[0] is FrameStatus.INCOMPLETE
    assert check_frame(memoryview(frame[:3]), 0)[0] is FrameStatus.INCOMPLETE
    damaged = bytearray(frame)
    damaged[-5] ^= 0x40
    assert check_frame(memoryview(bytes(damaged)), 0)[0] is FrameStatus.CORRUPT


def test_record_to_json() -> None:
    record = Record("events", "ü".encode(), (("token", b"phc"), ("bad", b"\xff")), b'{"event":"x"}')
    assert record_to_json(record) == {
        "topic": "events", "key": "ü", "headers": {"token": "phc", "bad": "\ufffd"}, "value": '{"event":"x"}'
    }
    assert record_to_json(Record("t", None, (), b""))["key"] is None


# -- writer ----------------------------------------------------------------------------------------


def test_concurrent_appends_keep_append_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path, segment_bytes=8 << 10, max_bytes=64 << 20)
        await spool.open()
        await asyncio.gather(*(spool.append([rec(3 * i + j) for j in range(3)]) for i in range(300)))
        await spool.close()

    asyncio.run(scenario())
    assert seqs(read_all(tmp_path)) == list(range(900))


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_every_policy_acks_and_batch_policies_group_fsyncs(
    tmp_path: Path, policy: FsyncPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_syncs = 0
    real_fdatasync = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        nonlocal data_syncs
        data_syncs += 1
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    appenders, rounds = 64, 10

    async def scenario() -> Spool:
        spool = Spool(tmp_path, fsync=policy, fsync_window_ms=2)
        await spool.open()

        async def appender(worker: int) -> None:
            for i in range(rounds):
                await spool.append([rec(worker * rounds + i)])

        await asyncio.gather(*(appender(w) for w in range(appenders)))
        stats = spool.stats()
        assert stats.records_written == appenders * rounds and stats.records_pending == 0
        await spool.close()
        return spool

    spool = asyncio.run(scenario())
    assert sorted(seqs(read_all(tmp_path))) == list(range(appenders * rounds))
    if policy is FsyncPolicy.NEVER:
        assert data_syncs == 0
    else:
        # One fsync per group, each group serving many concurrent appends.
        assert 1 <= data_syncs <= appenders * rounds / 8
        assert spool.stats().flushes == data_syncs


def test_a_cancelled_append_leaves_the_rest_of_its_group_acknowledged(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path, fsync=FsyncPolicy.BATCH, fsync_window_ms=100)
        await spool.open()
        await spool.append([rec(0)])  # opens a 100 ms window: the next appends wait in one group
        appends = [asyncio.create_task(spool.append([rec(i)])) for i in range(1, 4)]
        await asyncio.sleep(0.02)
        appends[1].cancel()  # e.g. its client went away
        results = await asyncio.gather(*appends, return_exceptions=True)
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], asyncio.CancelledError)
        assert spool.stats().flushes == 2
        await spool.close()

    asyncio.run(scenario())
    # The cancelled caller's record was in the group already: written all the same (at least once).
    assert seqs(read_all(tmp_path)) == [0, 1, 2, 3]


def test_batch_window_caps_fsync_rate_without_delaying_a_lone_append(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path, fsync=FsyncPolicy.BATCH, fsync_window_ms=100)
        await spool.open()
        started = time.monotonic()
        await spool.append([rec(0)])
        assert time.monotonic() - started < 0.08  # quiet spool: flushed at once
        started = time.monotonic()
        for round_ in range(1, 4):
            await asyncio.gather(*(spool.append([rec(round_ * 100 + i)]) for i in range(64)))
        assert time.monotonic() - started >= 0.25  # at most one fsync per 100 ms window
        assert spool.stats().flushes == 4
        await spool.close()

    asyncio.run(scenario())


def test_segments_roll_and_are_read_in_order(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, [[rec(i, size=300)] for i in range(100)], segment_bytes=2048))
    paths = segment_paths(tmp_path)
    assert len(paths) > 10
    assert all(path.stat().st_size <= 2048 for path in paths)
    with SpoolReader(tmp_path, "r") as reader:
        got: list[Record] = []
        while batch := reader.read_batch(max_records=7):
            got += batch.records
    assert seqs(got) == list(range(100))


def test_spool_full_rejects_whole_request_and_recovers_when_readers_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "_MEASURE_INTERVAL_S", 0.0)
    frame = len(encode_record(rec(0, size=400)))

    async def scenario() -> None:
        spool = Spool(tmp_path, segment_bytes=4 * frame + HEADER_SIZE, max_bytes=8 * frame + 3 * HEADER_SIZE)
        await spool.open()
        n = 0
        with pytest.raises(SpoolFull):
            while True:
                await spool.append([rec(n, size=400), rec(n + 1, size=400), rec(n + 2, size=400)])
                n += 3
        assert spool.stats().full_rejections == 1
        assert seqs(read_all(tmp_path)) == list(range(n))  # nothing of the rejected request
        with SpoolReader(tmp_path, "drain") as reader:
            reader.commit(reader.read_batch())
        await spool.append([rec(n, size=400), rec(n + 1, size=400), rec(n + 2, size=400)])
        await spool.close()

    asyncio.run(scenario())


def test_write_error_fails_the_appends_and_leaves_no_partial_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite
    failures = {"left": 0}

    def short_then_enospc(fd: int, data: bytes, offset: int) -> int:
        if failures["left"] and len(data) > HEADER_SIZE:
            failures["left"] -= 1
            real_pwrite(fd, bytes(data)[: len(data) // 2], offset)  # a torn write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", short_then_enospc)

    async def scenario() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        await spool.append([rec(0)])
        failures["left"] = 1
        results = await asyncio.gather(spool.append([rec(1)]), spool.append([rec(2)]), return_exceptions=True)
        assert all(isinstance(result, SpoolWriteError) for result in results)
        await spool.append([rec(3)])
        assert spool.stats().write_errors == 1
        await spool.close()

    asyncio.run(scenario())
    assert seqs(read_all(tmp_path)) == [0, 3]


@pytest.mark.parametrize(("os_errno", "reason"), [(errno.EIO, "io_error"), (errno.ENOSPC, "no_space"),
                                                (errno.EDQUOT, "no_space"), (errno.EROFS, "read_only")])
def test_failed_fsync_acknowledges_nothing_and_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, os_errno: int, reason: str
) -> None:
    real_fdatasync = os.fdatasync
    failures = {"left": 0}

    def failing_fdatasync(fd: int) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(os_errno, os.strerror(os_errno))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)

    async def scenario() -> None:
        spool = Spool(tmp_path, fsync=FsyncPolicy.ALWAYS)
        await spool.open()
        await spool.append([rec(0)])
        failures["left"] = 1
        with pytest.raises(SpoolWriteError) as failed:
            await spool.append([rec(1), rec(2)])
        assert failed.value.reason == reason
        await spool.append([rec(3)])  # the next group is written where the failed one was cut off
        await spool.close()

    asyncio.run(scenario())
    assert seqs(read_all(tmp_path)) == [0, 3]


def test_failed_segment_roll_leaves_the_spool_usable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = len(encode_record(rec(0)))
    real_pwrite = os.pwrite
    failures = {"left": 0}

    def enospc_on_segment_header(fd: int, data: bytes, offset: int) -> int:
        if failures["left"] and offset == 0:  # the new segment file exists, its header does not fit
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", enospc_on_segment_header)

    async def scenario() -> None:
        spool = Spool(tmp_path, segment_bytes=2 * frame + HEADER_SIZE, max_bytes=100 * frame)
        await spool.open()
        await spool.append([rec(0), rec(1)])  # the first segment is full
        failures["left"] = 1
        with pytest.raises(SpoolWriteError, match="No space"):
            await spool.append([rec(2)])
        assert not list(tmp_path.glob("*.tmp"))
        await spool.append([rec(3)])
        await spool.close()

    asyncio.run(scenario())
    assert seqs(read_all(tmp_path)) == [0, 1, 3]


def test_writer_lock_is_exclusive_and_observable(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = Spool(tmp_path)
        await first.open()
        assert is_write_locked(tmp_path)
        with pytest.raises(SpoolLocked, match="pid"):
            await Spool(tmp_path).open()
        await first.close()
        assert not is_write_locked(tmp_path)
        with pytest.raises(SpoolClosed):
            await first.append([rec(1)])

    assert not is_write_locked(tmp_path)
    asyncio.run(scenario())


# -- recovery --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        encode_record(rec(99))[:5],  # torn inside the frame header
        encode_record(rec(99))[:-7],  # torn inside the payload
        b"\x00" * 4096,  # preallocated zeros
        b"\x10\x00\x00\x00garbage-garbage-garbage",  # bad checksum
    ],
    ids=["header", "payload", "zeros", "garbage"],
)
def test_torn_tail_is_truncated_and_everything_before_it_kept(tmp_path: Path, tail: bytes) -> None:
    asyncio.run(write(tmp_path, [[rec(i)] for i in range(10)]))
    last = segment_paths(tmp_path)[-1]
    good_size = last.stat().st_size
    with open(last, "ab") as file:
        file.write(tail)
    with SpoolReader(tmp_path, "early") as reader:  # the newest segment: a bad tail is "not written yet"
        batch = reader.read_batch()
        assert seqs(batch.records) == list(range(10))
        reader.commit(batch)
        assert not reader.read_batch()
    asyncio.run(write(tmp_path, [[rec(10)]]))
    assert last.stat().st_size == good_size
    assert seqs(read_all(tmp_path)) == list(range(11))
    with SpoolReader(tmp_path, "early") as reader:  # resumes after the truncated segment, in the new one
        assert seqs(reader.read_batch().records) == [10]


def test_corruption_in_a_sealed_segment_skips_only_the_damaged_rest(tmp_path: Path) -> None:
    frame = len(encode_record(rec(0)))
    asyncio.run(write(tmp_path, [[rec(i)] for i in range(12)], segment_bytes=HEADER_SIZE + 4 * frame))
    first = segment_paths(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[HEADER_SIZE + frame + FRAME_SIZE + 10] ^= 0xFF  # damage the second record's payload
    first.write_bytes(bytes(data))
    assert seqs(read_all(tmp_path)) == [0, *range(4, 12)]
    assert spool_stats(tmp_path)["frames"] == 9


def test_segment_with_a_bad_header_is_set_aside(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, [[rec(1)]]))
    last = segment_paths(tmp_path)[-1]
    last.write_bytes(b"not a spool segment")
    asyncio.run(write(tmp_path, [[rec(2)]]))
    assert last.with_name(last.name + ".corrupt").exists()
    assert seqs(read_all(tmp_path)) == [2]


# -- readers ---------------------------------------------------------------------------------------


def test_reader_cursor_persists_and_uncommitted_reads_are_redelivered(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, [[rec(i) for i in range(30)]]))
    with SpoolReader(tmp_path, "kafka") as reader:
        batch = reader.read_batch(max_records=10)
        reader.commit(batch)
        assert seqs(reader.read_batch(max_records=5).records) == list(range(10, 15))  # not committed
        assert reader.lag() > 0
    with SpoolReader(tmp_path, "kafka") as reader:
        assert seqs(reader.read_batch().records) == list(range(10, 30))
        assert reader.lag() == 0
    with SpoolReader(tmp_path, "other") as reader:
        assert seqs(reader.read_batch(max_records=3).records) == [0, 1, 2]


def test_one_reader_per_name(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, []))
    with SpoolReader(tmp_path, "a"), SpoolReader(tmp_path, "b"), pytest.raises(SpoolLocked):
        SpoolReader(tmp_path, "a")
    with pytest.raises(ValueError):
        SpoolReader(tmp_path, "../escape")


def test_commit_deletes_segments_every_cursor_passed_but_never_the_active_one(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, [[rec(i, size=300)] for i in range(40)], segment_bytes=1024))
    total = len(list_segments(tmp_path))
    with SpoolReader(tmp_path, "slow") as slow, SpoolReader(tmp_path, "fast") as fast:
        slow.commit(slow.read_batch(max_records=5))
        fast.commit(fast.read_batch())
        kept = list_segments(tmp_path)
        assert kept[0] == slow.committed.segment and len(kept) < total  # slow pins its segment
        slow.commit(slow.read_batch())
        assert list_segments(tmp_path) == [kept[-1]]  # only the active segment is left
        assert seqs(fast.read_batch().records) == []
    stats = spool_stats(tmp_path)
    assert stats["segments"] == 1 and stats["frames"] == len(read_all(tmp_path)) > 0
    assert stats["cursors"]["slow"]["lag_bytes"] == 0
    asyncio.run(write(tmp_path, [[rec(40)]]))  # a new writer session continues after the kept segment
    with SpoolReader(tmp_path, "slow") as slow:
        batch = slow.read_batch()
        assert isinstance(batch, SpoolBatch) and seqs(batch.records) == [40]


def test_spool_stats_on_a_directory_being_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path, segment_bytes=4096)
        await spool.open()
        await spool.append([rec(i) for i in range(50)])
        stats = spool_stats(tmp_path)
        assert stats["writer_active"] and stats["frames"] == 50
        assert stats["bytes"] == spool.stats().bytes
        await spool.close()

    asyncio.run(scenario())


# -- other processes -------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from gateway.core.record import Record
    from gateway.spool import FsyncPolicy, Spool

    async def main() -> None:
        directory, policy, total, per_append, segment = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
        spool = Spool(Path(directory), fsync=FsyncPolicy(policy), segment_bytes=segment)
        await spool.open()
        counter = iter(range(total or 1 << 62))

        async def worker() -> None:
            for first in counter:
                batch = [first * per_append + i for i in range(per_append)]
                await spool.append([Record("t", str(n).encode(), (), b"x" * 200) for n in batch])
                sys.stdout.write("".join(f"{n}\\n" for n in batch))
                sys.stdout.flush()

        await asyncio.gather(*(worker() for _ in range(16)))
        await spool.close()

    asyncio.run(main())
    """
)


def start_writer(
    directory: Path, policy: str, total: int, per_append: int, segment: int
) -> subprocess.Popen[str]:
    """Run _CHILD: 16 tasks appending `per_append` records at a time, printing each acked number."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", _CHILD, str(directory), policy, str(total), str(per_append), str(segment)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("policy", ["batch", "never"])
def test_every_acked_record_survives_sigkill_exactly_once(tmp_path: Path, policy: str) -> None:
    child = start_writer(tmp_path, policy, total=0, per_append=3, segment=32 << 10)
    assert child.stdout is not None
    acked = []
    for line in child.stdout:
        acked.append(int(line))
        if len(acked) >= 3000:
            break
    child.send_signal(signal.SIGKILL)
    acked += [int(line) for line in child.stdout.read().split()]  # printed before the kill: acked too
    child.wait()
    for _ in range(2):  # as left by the kill, then after a writer recovered it
        found = seqs(read_all(tmp_path))
        assert len(found) == len(set(found)) and found == sorted(found)
        assert set(acked) <= set(found)
        asyncio.run(write(tmp_path, []))


def test_reader_follows_a_writer_in_another_process(tmp_path: Path) -> None:
    total_appends, per_append = 400, 5
    child = start_writer(tmp_path, "never", total=total_appends, per_append=per_append, segment=8 << 10)
    got: list[int] = []
    deadline = time.monotonic() + 15
    with SpoolReader(tmp_path, "replay") as reader:
        while len(got) < total_appends * per_append and time.monotonic() < deadline:
            batch = reader.read_batch(max_records=97)
            got += seqs(batch.records)
            if batch:
                reader.commit(batch)  # deletes passed segments while the writer is rolling new ones
            else:
                time.sleep(0.005)
    assert child.wait(timeout=10) == 0
    # Workers interleave, but each append's records are contiguous and every record arrives once.
    assert sorted(got) == list(range(total_appends * per_append))
    for i in range(0, len(got), per_append):
        assert got[i : i + per_append] == list(range(got[i], got[i] + per_append))
    assert len(list_segments(tmp_path)) <= 2
