"""GDPR purge of the local spool: matching records gone, the rest intact and read in order by cursors."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from gateway.cli import main
from gateway.core.record import Record
from gateway.spool import Spool, SpoolLocked, SpoolReader, iter_records
from gateway.spool.locks import PURGE_JOURNAL
from gateway.spool.segment import list_segments

VICTIM = "alice@example.com"


def rec(n: int, distinct_id: str) -> Record:
    headers = (("token", b"phc_x"), ("distinct_id", distinct_id.encode()), ("seq", str(n).encode()))
    return Record("events", str(n).encode(), headers, orjson.dumps({"n": n, "distinct_id": distinct_id}))


def people(start: int, count: int) -> list[Record]:
    """Every third record is the victim's."""
    return [rec(n, VICTIM if n % 3 == 0 else f"user-{n}") for n in range(start, start + count)]


def seqs(records: Sequence[Record]) -> list[int]:
    return [int(record.key or b"-1") for record in records]


async def write(directory: Path, batches: Sequence[Sequence[Record]]) -> None:
    """One writer session per batch: each session starts a new segment."""
    for batch in batches:
        spool = Spool(directory, fsync="never")
        await spool.open()
        await spool.append(batch)
        await spool.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "spool" / "worker-0"
    directory.mkdir(parents=True)
    asyncio.run(write(directory, [people(0, 10), people(10, 10), people(20, 10)]))
    return tmp_path


def purge(data_dir: Path, *extra: str) -> int:
    return main(["gdpr", "purge-spool", "--distinct-id", VICTIM, "--data-dir", str(data_dir),
                 "--audit-log", str(data_dir / "audit.jsonl"), *extra])


def test_purge_keeps_order_and_cursor_positions(data_dir: Path) -> None:
    directory = data_dir / "spool" / "worker-0"
    assert len(list_segments(directory)) == 3
    with SpoolReader(directory, "sink") as reader:
        reader.commit(reader.read_batch(max_records=3))  # cursor inside the first segment
    with SpoolReader(directory, "kafka") as reader:
        reader.commit(reader.read_batch(max_records=14))  # cursor inside the second segment, after 10..13
    assert purge(data_dir) == 0
    remaining = list(iter_records(directory))
    assert all(r.header("distinct_id") != VICTIM.encode() for r in remaining)
    assert seqs(remaining) == [n for n in range(30) if n % 3]
    with SpoolReader(directory, "kafka") as reader:
        assert seqs(reader.read_batch().records) == [n for n in range(14, 30) if n % 3]
    with SpoolReader(directory, "sink") as reader:
        assert seqs(reader.read_batch().records) == [n for n in range(3, 30) if n % 3]
    [entry] = [orjson.loads(line) for line in (data_dir / "audit.jsonl").read_bytes().splitlines()]
    assert entry["action"] == "purge-spool" and entry["status"] == "ok" and entry["removed"] == 10
    assert VICTIM not in str(entry) and entry["subjects"][0].startswith("sha256:")


def test_running_reader_refuses_the_purge(data_dir: Path) -> None:
    directory = data_dir / "spool" / "worker-0"
    with SpoolReader(directory, "kafka"):
        assert purge(data_dir) == 1
    assert len(list(iter_records(directory))) == 30


def test_running_writer_keeps_its_segment(data_dir: Path) -> None:
    directory = data_dir / "spool" / "worker-0"

    async def scenario() -> int:
        spool = Spool(directory, fsync="never")
        await spool.open()
        await spool.append(people(30, 6))
        try:
            return await asyncio.to_thread(purge, data_dir)
        finally:
            await spool.close()

    assert asyncio.run(scenario()) == 1  # incomplete: 2 victim records in the active segment
    remaining = seqs(iter_records(directory))
    assert remaining == [n for n in range(30) if n % 3] + list(range(30, 36))
    assert purge(data_dir) == 0
    assert seqs(iter_records(directory)) == [n for n in range(36) if n % 3]


def test_interrupted_purge_blocks_readers_until_finished(data_dir: Path) -> None:
    directory = data_dir / "spool" / "worker-0"
    # As if a purge died after journaling the rewrite of segment 1 and renaming the copy.
    (directory / PURGE_JOURNAL).write_text('{"segment": 1, "tmp": "gone.purge-tmp", "cursors": {"sink": 16}}')
    with pytest.raises(SpoolLocked):
        SpoolReader(directory, "sink")
    assert purge(data_dir) == 0
    with SpoolReader(directory, "sink") as reader:
        assert reader.position is not None and reader.position.offset == 16
        assert seqs(reader.read_batch().records) == [n for n in range(30) if n % 3]
