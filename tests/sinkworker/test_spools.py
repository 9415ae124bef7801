"""Every worker spool of a data dir drained into one table: each event exactly once, on chdb and on
ClickHouse 18.16 over HTTP (no insert dedup tokens there: the replay guard alone must hold).

Every worker's spool starts at segment 1, so two spools hold records at the same (topic, segment,
offset); the sink must still tell them apart, drained one after the other, together, and across a
crash between insert and commit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.clickhouse.chdb_writer import ChdbWriter
from gateway.clickhouse.http_writer import HttpWriter
from gateway.clickhouse.schema import events_table_ddl, table_name
from gateway.clickhouse.writer import Writer
from gateway.core.record import Record
from gateway.sinkworker.batch import Coordinates, FlushPolicy
from gateway.sinkworker.dlq import FileDeadLetters
from gateway.sinkworker.frames import SpooledFrame
from gateway.sinkworker.rows import RowEncoder
from gateway.sinkworker.sources import DataDirSource, Source, SpoolSource
from gateway.sinkworker.teams import TeamResolver
from gateway.sinkworker.worker import SinkWorker, WorkerConfig
from gateway.spool import Spool
from tests.sinkworker.helpers import TOPIC, captured_value
from tests.support.spools import Draining, fill_worker_spools, spooled_request

PER_SPOOL = 120
WORKERS = 2
WriterFactory = Callable[[], AbstractAsyncContextManager[Writer]]


@pytest.fixture(params=["chdb", "clickhouse-18.16"])
def open_table(request: pytest.FixtureRequest) -> tuple[WriterFactory, str]:
    """A way to open a writer (inside the test's event loop) and a fresh events table on it."""
    name = f"events_spools_{uuid.uuid4().hex[:10]}"
    if request.param == "chdb":
        writer: ChdbWriter = request.getfixturevalue("chdb_writer")  # one chdb per process: shared

        @asynccontextmanager
        async def opened() -> AsyncIterator[Writer]:
            yield writer
    else:
        url = request.getfixturevalue("clickhouse_http_url")

        @asynccontextmanager
        async def opened() -> AsyncIterator[Writer]:
            http = await HttpWriter.connect(url, max_in_flight=2, compression="none")
            try:
                yield http
            finally:
                await http.close()

    async def create() -> None:
        async with opened() as writer:
            await writer.command(events_table_ddl(writer.caps, "default", name, retention_days=3650))

    asyncio.run(create())
    return opened, table_name("default", name)


class Crashing:
    """Runs a source until the first commit, which fails like a crash after the insert."""

    def __init__(self, source: Source) -> None:
        self._source = source

    def __getattr__(self, name: str):
        return getattr(self._source, name)

    async def commit(self, offsets: dict) -> None:
        raise RuntimeError("simulated crash between insert and commit")


def drain(open_table: tuple[WriterFactory, str], make_source: Callable[[], Source], dlq: Path,
          rows: int = 50) -> None:
    opened, table = open_table

    async def main() -> None:
        async with opened() as writer:
            source = Draining(make_source())
            config = WorkerConfig(table, FlushPolicy(max_rows=rows, max_age_s=0.05), shutdown_timeout_s=10)
            encoder = RowEncoder(TeamResolver({}), subsecond=writer.caps.datetime64)
            worker = SinkWorker(source, writer, FileDeadLetters(dlq), encoder, config)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            drained = asyncio.create_task(source.drained.wait())
            await asyncio.wait([task, drained], return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            drained.cancel()
            await task

    asyncio.run(main())


def counts(open_table: tuple[WriterFactory, str]) -> tuple[int, int]:
    opened, table = open_table

    async def query() -> list[list[str]]:
        async with opened() as writer:
            return await writer.select(f"SELECT count(), uniqExact(uuid) FROM {table}")

    (count, distinct), = asyncio.run(query())
    return int(count), int(distinct)


def test_worker_spools_drained_one_after_the_other_store_every_event_once(
    open_table: tuple[WriterFactory, str], tmp_path: Path
) -> None:
    fill_worker_spools(tmp_path, WORKERS, PER_SPOOL)
    for worker in range(WORKERS):
        drain(open_table, lambda w=worker: SpoolSource(tmp_path / "spool" / f"worker-{w}"), tmp_path / "dlq")
    assert counts(open_table) == (WORKERS * PER_SPOOL, WORKERS * PER_SPOOL)


def test_data_dir_source_stores_every_event_once_across_a_crash(
    open_table: tuple[WriterFactory, str], tmp_path: Path
) -> None:
    fill_worker_spools(tmp_path, WORKERS, PER_SPOOL)
    with pytest.raises(RuntimeError, match="simulated crash"):
        drain(open_table, lambda: Crashing(DataDirSource(tmp_path)), tmp_path / "dlq", rows=37)
    stored, _ = counts(open_table)
    assert stored > 0 and not list(tmp_path.glob("spool/*/cursor-sink.json"))  # the restart re-reads them
    drain(open_table, lambda: DataDirSource(tmp_path), tmp_path / "dlq", rows=45)
    assert counts(open_table) == (WORKERS * PER_SPOOL, WORKERS * PER_SPOOL)
    drain(open_table, lambda: DataDirSource(tmp_path), tmp_path / "dlq")  # cursors committed: nothing new
    assert counts(open_table) == (WORKERS * PER_SPOOL, WORKERS * PER_SPOOL)


def test_spool_source_reads_a_message_again_by_its_coordinates(tmp_path: Path) -> None:
    """What the DLQ needs when ClickHouse refuses a row: batches keep coordinates, not values."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()

    async def scenario() -> None:
        spool = Spool(spool_dir, segment_bytes=16 * 1024)
        await spool.open()
        for start in range(0, 60, 10):
            await spool.append([Record(TOPIC, b"k", (), captured_value(i)) for i in range(start, start + 10)])
        await spool.close()
        source = SpoolSource(spool_dir)
        await source.start(None)  # type: ignore[arg-type]  # a spool has no assignment
        messages = await source.read(1000)
        assert len(messages) == 60 and len({m.partition for m in messages}) > 1  # several segments
        for message in (messages[0], messages[31], messages[-1]):
            where = Coordinates(message.topic, message.partition, message.offset, message.timestamp)
            assert await source.refetch(where) == message
        assert await source.refetch(Coordinates(TOPIC, messages[5].partition, messages[5].offset - 1, 0)) is None
        await source.stop()

    asyncio.run(scenario())


def test_spool_source_positions_inside_request_frames(tmp_path: Path) -> None:
    """A request frame of N records yields them at its last N byte positions; a commit inside it keeps the
    cursor at its start, so a restart reads the frame again at the same positions (the replay guard skips
    what was stored)."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()

    async def scenario() -> None:
        spool = Spool(spool_dir)
        await spool.open()
        await spool.append([Record(TOPIC, b"k", (), captured_value(0))])
        await spool.append_request(spooled_request(range(1, 8)), 7)
        await spool.append_request(spooled_request(range(8, 11)), 3)
        await spool.close()
        source = SpoolSource(spool_dir)
        await source.start(None)  # type: ignore[arg-type]  # a spool has no assignment
        read = await source.read(2)  # frames are never split: the first request comes whole, as one message
        assert len(read) == 2 and type(read[1]) is SpooledFrame and read[1].count == 7
        messages = one_by_one(read)
        assert [m.offset for m in messages[1:]] == list(read[1].positions()) and read[1].offset == messages[-1].offset
        offsets = [m.offset for m in messages]
        assert offsets == sorted(set(offsets)) and offsets[1:] == list(range(offsets[-1] - 6, offsets[-1] + 1))
        rest = one_by_one(await source.read(100))
        assert len(rest) == 3 and rest[0].offset > offsets[-1]
        where = Coordinates(rest[1].topic, rest[1].partition, rest[1].offset, rest[1].timestamp)
        assert message_fields(await source.refetch(where)) == message_fields(rest[1])
        partition = messages[0].partition
        await source.commit({(TOPIC, partition): messages[3].offset + 1})  # after 3 of the request's 7 records
        await source.stop()
        again = SpoolSource(spool_dir)
        await again.start(None)  # type: ignore[arg-type]
        assert [m.offset for m in one_by_one(await again.read(100))] == offsets[1:] + [m.offset for m in rest]
        await again.commit({(TOPIC, partition): offsets[-1] + 1})  # the request's end: a frame boundary
        await again.stop()
        last = SpoolSource(spool_dir)
        await last.start(None)  # type: ignore[arg-type]
        assert [(m.offset, m.value) for m in one_by_one(await last.read(100))] == [(m.offset, m.value) for m in rest]
        await last.stop()

    asyncio.run(scenario())


def one_by_one(messages: list[Any]) -> list[Any]:
    """The messages with each request read whole (SpooledFrame) as its events (SpooledEvents)."""
    return [event for m in messages for event in (m.events_placed() if type(m) is SpooledFrame else [m])]


def message_fields(message: object) -> tuple[object, ...]:
    """A message's ConsumerRecord attributes (a request frame's events are read as SpooledEvents, a
    refetch gives the record itself)."""
    names = ("topic", "partition", "offset", "timestamp", "key", "value", "headers")
    return tuple(getattr(message, name) for name in names)


REPLAY = "session_recording_snapshot_item_events"


def small_segments(spool_dir: Path, groups: list[list[Record]]) -> int:
    """A spool of 4 KB segments holding `groups` (one append each); how many segments it has."""
    spool_dir.mkdir()

    async def write() -> None:
        spool = Spool(spool_dir, segment_bytes=4 * 1024)
        await spool.open()
        for group in groups:
            await spool.append(group)
        await spool.close()

    asyncio.run(write())
    return len(list(spool_dir.glob("*.seg")))


@pytest.mark.parametrize("first", ["sink", "recordings"])
def test_a_reader_alone_keeps_what_the_other_reader_never_read(tmp_path: Path, first: str) -> None:
    """An embedded spool holds events (`gateway sink`, reader `sink`) and session recordings (`gateway
    recordings sink`, reader `recordings`). Whichever runs first, alone, must not delete segments holding
    the other's records before the other has read them; segments holding only its own records go."""
    spool_dir = tmp_path / "spool"
    events_only = [[Record(TOPIC, b"k", (), captured_value(i)) for i in range(start, start + 10)]
                   for start in range(0, 60, 10)]  # fmt: skip
    mixed = [[Record(REPLAY if i % 2 else TOPIC, b"k", (), captured_value(i)) for i in range(start, start + 10)]
             for start in range(60, 120, 10)]  # fmt: skip
    segments = small_segments(spool_dir, events_only + mixed)

    def source(name: str) -> SpoolSource:
        own = (lambda topic: topic == REPLAY) if name == "recordings" else (lambda topic: topic != REPLAY)
        return SpoolSource(spool_dir, name, foreign=lambda topic: not own(topic))

    async def drain(name: str) -> list[str]:
        reader = source(name)
        await reader.start(None)  # type: ignore[arg-type]  # a spool has no assignment
        messages = await reader.read(10_000)
        if messages:
            last = messages[-1]
            await reader.commit({(last.topic, last.partition): last.offset + 1})
        await reader.stop()
        return [m.topic for m in messages]

    assert segments > 4
    other = "recordings" if first == "sink" else "sink"
    assert len(asyncio.run(drain(first))) == 120
    if first == "recordings":  # the first segments held events only: still there for the events sink
        assert len(list(spool_dir.glob("*.seg"))) == segments
    else:  # segments of events only are gone, those holding recordings stay
        assert 1 < len(list(spool_dir.glob("*.seg"))) < segments
    topics = asyncio.run(drain(other))
    wanted = [t for t in topics if (t == REPLAY) == (other == "recordings")]
    assert len(wanted) == (30 if other == "recordings" else 90)
    asyncio.run(drain(first))  # both cursors exist now: everything read by both is deleted
    assert len(list(spool_dir.glob("*.seg"))) == 1  # the active segment


def test_a_lone_events_reader_restarted_inside_a_segment_still_deletes_what_it_read(tmp_path: Path) -> None:
    """No recordings: the spool keeps shrinking behind `gateway sink` across restarts (it looks at the part of
    its cursor's segment it read before the restart, which it did not read in this run)."""
    spool_dir = tmp_path / "spool"
    segments = small_segments(
        spool_dir, [[Record(TOPIC, b"k", (), captured_value(i)) for i in range(start, start + 5)]
                    for start in range(0, 120, 5)]
    )  # fmt: skip

    async def scenario() -> None:
        first = SpoolSource(spool_dir, foreign=lambda topic: topic == REPLAY)
        await first.start(None)  # type: ignore[arg-type]  # a spool has no assignment
        head = (await first.read(7))[-1]  # stops inside the first segment
        await first.commit({(head.topic, head.partition): head.offset + 1})
        await first.stop()
        again = SpoolSource(spool_dir, foreign=lambda topic: topic == REPLAY)
        await again.start(None)  # type: ignore[arg-type]
        last = (await again.read(10_000))[-1]
        await again.commit({(last.topic, last.partition): last.offset + 1})
        await again.stop()
        assert segments > 4 and len(list(spool_dir.glob("*.seg"))) == 1  # the active segment

    asyncio.run(scenario())


def test_the_sink_keeps_the_recordings_of_its_replay_topic(tmp_path: Path) -> None:
    """`gateway sink --replay-topic` names the records its spool readers keep for the recordings sink."""
    from gateway.settings import SinkSettings
    from gateway.sinkworker.app import _source_and_dlq

    for topic in (REPLAY, "custom_replay"):
        settings = SinkSettings(data_dir=tmp_path, replay_topic=topic).validate()
        source, _ = asyncio.run(_source_and_dlq(settings, asyncio.Event()))
        assert isinstance(source, DataDirSource)
        assert source._foreign is not None and source._foreign(topic) and not source._foreign(TOPIC)
