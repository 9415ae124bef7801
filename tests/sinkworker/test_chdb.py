"""Embedded chdb: schema, round trip, dedup tokens, and the worker end to end (crash, DLQ, spool)."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY

from gateway.capture.events import RecordOptions, RequestContext, check_events
from gateway.capture.parse import ParsedRequest
from gateway.capture.spooled import request_content, request_records
from gateway.clickhouse.chdb_writer import ChdbWriter
from gateway.core.record import Record
from gateway.settings.sink import DEFAULT_TOPICS
from gateway.sinkworker.batch import FlushPolicy
from gateway.sinkworker.dlq import FileDeadLetters
from gateway.sinkworker.frames import SpooledFrame
from gateway.sinkworker.rows import RowEncoder, SourceMessage
from gateway.sinkworker.sources import SpoolSource
from gateway.sinkworker.teams import TeamResolver
from gateway.sinkworker.worker import SinkWorker, WorkerConfig
from gateway.spool import Spool
from tests.sinkworker.helpers import TOKEN, TOPIC, ListDeadLetters, ListSource, captured_value, record, stream
from tests.support.spools import Draining, spooled_request

ENCODER = RowEncoder(TeamResolver({}))


def counts(writer: ChdbWriter, table: str) -> tuple[int, int]:
    """(count(), uniqExact(uuid)) of a table."""
    rows = asyncio.run(writer.select(f"SELECT count(), uniqExact(uuid) FROM {table}"))
    return int(rows[0][0]), int(rows[0][1])


def run_worker(writer: ChdbWriter, table: str, source, dead_letters, encoder=ENCODER, rows: int = 50) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        config = WorkerConfig(table, FlushPolicy(max_rows=rows, max_age_s=0.05), shutdown_timeout_s=10)
        worker = SinkWorker(source, writer, dead_letters, encoder, config)
        task = asyncio.create_task(worker.run(stop))
        drained = asyncio.create_task(source.drained.wait())
        await asyncio.wait([task, drained], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await task

    asyncio.run(main())


def test_round_trip_keeps_microseconds(chdb_writer: ChdbWriter, chdb_table: str) -> None:
    body = ENCODER.encode(record(captured_value(0, properties={"$elements_chain": "div"})))
    asyncio.run(chdb_writer.insert(chdb_table, body, "t1"))
    row = asyncio.run(
        chdb_writer.select(
            f"SELECT toString(timestamp), elements_chain, JSONExtractString(properties, '$ip') "
            f"FROM {chdb_table}"
        )
    )
    assert row == [["2023-09-15 09:15:02.325000", "div", "203.0.113.7"]]


def test_same_batch_inserted_twice_is_stored_once(chdb_writer: ChdbWriter, chdb_table: str) -> None:
    body = b"".join(ENCODER.encode(m) for m in stream(100))
    for _ in range(2):
        asyncio.run(chdb_writer.insert(chdb_table, body, "sink-same-token"))
    assert counts(chdb_writer, chdb_table) == (100, 100)


def test_worker_stores_every_row_once_and_dead_letters_garbage(
    chdb_writer: ChdbWriter, chdb_table: str
) -> None:
    messages = stream(500, partitions=3, garbage=(5, 77))
    source, dead = ListSource(messages), ListDeadLetters()
    run_worker(chdb_writer, chdb_table, source, dead)
    assert counts(chdb_writer, chdb_table) == (498, 498)
    assert sorted(error.reason for _, error in dead.items) == ["invalid_json", "invalid_json"]
    ends = {(TOPIC, p): len([m for m in messages if m.partition == p]) for p in range(3)}
    assert source.committed == ends


def test_check_events_are_dropped_not_stored_nor_dead_lettered(chdb_writer: ChdbWriter, chdb_table: str) -> None:
    """Defence in depth: the gateway never writes `gateway check`'s event; if one arrives, it is skipped."""
    messages = stream(20, partitions=1)
    messages[5] = record(captured_value(5, event="$gateway_check"), offset=5)
    source, dead = ListSource(messages), ListDeadLetters()
    dropped = "gateway_sink_check_events_dropped_total"
    before = REGISTRY.get_sample_value(dropped) or 0.0
    run_worker(chdb_writer, chdb_table, source, dead)
    assert counts(chdb_writer, chdb_table) == (19, 19)
    assert dead.items == []
    assert source.committed == {(TOPIC, 0): 20}  # consumed past it
    assert REGISTRY.get_sample_value(dropped) == before + 1


def test_crash_between_insert_and_commit_then_restart_is_exact(
    chdb_writer: ChdbWriter, chdb_table: str
) -> None:
    messages = stream(400, partitions=2)
    crashing = ListSource(messages, crash_on_commit=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_worker(chdb_writer, chdb_table, crashing, ListDeadLetters())
    stored, _ = counts(chdb_writer, chdb_table)
    assert stored > 0 and crashing.committed == {}
    run_worker(chdb_writer, chdb_table, ListSource(messages), ListDeadLetters(), rows=37)
    assert counts(chdb_writer, chdb_table) == (400, 400)


class CorruptingEncoder:
    """Encodes normally but gives one offset's last column (`_topic`) a length the server refuses."""

    TOO_LONG = bytes([0x80] * 5 + [0x20])  # LEB128 of 2**40: over ClickHouse's string size limit

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def encode_binary(self, message: SourceMessage) -> bytes:
        row = ENCODER.encode_binary(message)
        if message.offset == self._offset and message.partition == 0:
            row = row[: -len(TOPIC) - 1] + self.TOO_LONG
        return row

    def frame_rows(self, frame: SpooledFrame) -> None:
        return None  # every record through encode_binary


def test_rows_the_server_rejects_are_bisected_to_the_dlq(chdb_writer: ChdbWriter, chdb_table: str) -> None:
    dead = ListDeadLetters()
    messages = stream(200, partitions=1)
    run_worker(chdb_writer, chdb_table, ListSource(messages), dead, CorruptingEncoder(33))
    assert counts(chdb_writer, chdb_table) == (199, 199)
    assert [(m.offset, e.reason) for m, e in dead.items] == [(33, "rejected_by_clickhouse")]
    assert dead.items[0][0] == messages[33]  # the batch kept no values: the DLQ gets the message re-read


def test_spool_source_drains_once_across_restarts(
    chdb_writer: ChdbWriter, chdb_table: str, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()

    async def fill() -> None:
        spool = Spool(spool_dir, segment_bytes=16 * 1024)
        await spool.open()
        await spool.append([Record(TOPIC, b"k", (), captured_value(i)) for i in range(300)])
        await spool.append([Record(TOPIC, b"k", (), b"garbage")])
        await spool.close()

    asyncio.run(fill())
    for _ in range(2):
        run_worker(
            chdb_writer, chdb_table, Draining(SpoolSource(spool_dir)), FileDeadLetters(tmp_path / "dlq")
        )
    assert counts(chdb_writer, chdb_table) == (300, 300)
    dead = [orjson.loads(line) for line in next((tmp_path / "dlq").iterdir()).read_bytes().splitlines()]
    assert [d["headers"]["dlq_reason"] for d in dead] == ["invalid_json"]


def test_spool_records_of_topics_not_consumed_are_skipped_and_committed(
    chdb_writer: ChdbWriter, chdb_table: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool holds every topic the gateway writes; as in Kafka mode (which subscribes to --topics only),
    heatmaps and client ingestion warnings become no rows: skipped, counted per topic, committed."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    names = ["$pageview", "$$heatmap", "$autocapture", "$$client_ingestion_warning", "$$heatmap", "$exception"]
    events = [{"uuid": str(uuid.UUID(int=i + 1)), "event": name, "properties": {"distinct_id": f"user-{i}"},
               "timestamp": "2023-09-15T09:15:02.325Z"} for i, name in enumerate(names)]
    parsed = ParsedRequest(events, TOKEN, None, False)
    check_events(parsed)
    context = RequestContext("203.0.113.7", datetime(2023, 9, 15, 9, 15, 2, tzinfo=UTC))

    async def fill() -> None:
        spool = Spool(spool_dir, segment_bytes=16 * 1024)
        await spool.open()
        await spool.append_request(request_content(parsed, context, RecordOptions()), len(events))  # embedded mode
        await spool.append([Record("heatmaps_ingestion", b"k", (), captured_value(10, event="$$heatmap")),
                            Record(TOPIC, b"k", (), captured_value(11))])
        await spool.close()

    def skipped() -> dict[str, float]:
        return {topic: REGISTRY.get_sample_value("gateway_sink_messages_skipped_total", {"topic": topic}) or 0.0
                for topic in ("heatmaps_ingestion", "ingestion-clientwarnings-main-1")}

    asyncio.run(fill())
    caplog.set_level(logging.INFO, logger="gateway.sinkworker.rows")
    encoder = RowEncoder(TeamResolver({}), topics=frozenset(DEFAULT_TOPICS))
    before = skipped()
    run_worker(chdb_writer, chdb_table, Draining(SpoolSource(spool_dir)), FileDeadLetters(tmp_path / "dlq"),
               encoder=encoder)
    rows = asyncio.run(chdb_writer.select(f"SELECT event, _topic FROM {chdb_table} ORDER BY event"))
    assert rows == [["$autocapture", TOPIC], ["$exception", "error_tracking_events"], ["$pageview", TOPIC],
                    ["$pageview", TOPIC]]
    after = skipped()
    assert after["heatmaps_ingestion"] == before["heatmaps_ingestion"] + 3
    assert after["ingestion-clientwarnings-main-1"] == before["ingestion-clientwarnings-main-1"] + 1
    assert not (tmp_path / "dlq").exists()
    said = [r.getMessage() for r in caplog.records if "are skipped (not in --topics" in r.getMessage()]
    assert len(said) == 2 and "'heatmaps_ingestion'" in said[0] + said[1]  # once per topic, not per record

    # Their positions were committed with the rows': a restarted sink reads none of them again.
    run_worker(chdb_writer, chdb_table, Draining(SpoolSource(spool_dir)), FileDeadLetters(tmp_path / "dlq"),
               encoder=encoder)
    assert skipped() == after
    assert counts(chdb_writer, chdb_table) == (4, 4)


class CorruptingNth:
    """Encodes normally but makes the `nth` row one the server refuses (see CorruptingEncoder)."""

    def __init__(self, encoder: RowEncoder, nth: int) -> None:
        self._encoder, self._left = encoder, nth
        self.corrupted: SourceMessage | None = None

    def encode_binary(self, message: SourceMessage) -> bytes | None:
        row = self._encoder.encode_binary(message)
        self._left -= 1
        if self._left == 0 and row is not None:
            self.corrupted = message
            row = row[: -len(message.topic) - 1] + CorruptingEncoder.TOO_LONG
        return row

    def frame_rows(self, frame: SpooledFrame) -> None:
        return None  # every record through encode_binary


def test_spooled_request_rows_rejected_here_or_by_the_server_reach_the_dlq_as_records(
    chdb_writer: ChdbWriter, chdb_table: str, tmp_path: Path
) -> None:
    """Events of a request frame become rows without their records being built; what the DLQ gets is
    still the record (rejected while encoding: built on demand; refused by the server: read again)."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    refused = spooled_request(range(3), token="phc_huge_team")  # team id beyond Int64: invalid_data
    stored = spooled_request(range(3, 13))

    async def fill() -> None:
        spool = Spool(spool_dir)
        await spool.open()
        await spool.append_request(refused, 3)
        await spool.append_request(stored, 10)
        await spool.close()

    asyncio.run(fill())
    encoder = CorruptingNth(RowEncoder(TeamResolver({"phc_huge_team": 2**64})), 5)  # the 5th of `stored`
    run_worker(chdb_writer, chdb_table, Draining(SpoolSource(spool_dir)), FileDeadLetters(tmp_path / "dlq"), encoder)
    assert counts(chdb_writer, chdb_table) == (9, 9)
    dead = [orjson.loads(line) for line in next((tmp_path / "dlq").iterdir()).read_bytes().splitlines()]
    records = [*request_records(refused), request_records(stored)[4]]
    assert [d["headers"]["dlq_reason"] for d in dead] == ["invalid_data"] * 3 + ["rejected_by_clickhouse"]
    assert [base64.b64decode(d["value"]) for d in dead] == [record.value for record in records]
    assert [d["headers"]["dlq_offset"] for d in dead][-1] == str(encoder.corrupted.offset)
