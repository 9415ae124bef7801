"""A spooled request read whole (`SpooledFrame`) gives the rows its records give (`request_records`,
what every other reader of the spool and the Kafka path get), byte for byte; shapes it does not cover
give None, and the batch then encodes the request's events one by one, with the same result.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.capture.events import RecordOptions, RequestContext, check_events
from gateway.capture.parse import ParsedRequest
from gateway.capture.spooled import request_content, request_records
from gateway.clickhouse.chdb_writer import ChdbWriter
from gateway.sinkworker.batch import Batch
from gateway.sinkworker.dlq import FileDeadLetters
from gateway.sinkworker.frames import SpooledFrame, spooled_messages
from gateway.sinkworker.rows import IpMode, RowEncoder
from gateway.sinkworker.sources import SpoolMessage, SpoolSource
from gateway.sinkworker.teams import TeamResolver
from gateway.spool import Spool
from tests.sinkworker.test_chdb import CorruptingEncoder, counts, run_worker
from tests.sinkworker.test_spooled_rows import NOW, TOKEN, encoders, node_event, outcome, requests, web_event
from tests.support.spools import Draining, spooled_request

READ_MS = 1_765_084_502_000
SENT_AT = NOW - timedelta(seconds=2)
CONTEXT = RequestContext("203.0.113.7", NOW)


def one(event: dict[str, Any], token: str = TOKEN, sent_at: Any = SENT_AT) -> tuple[Any, ...]:
    return ParsedRequest([event], token, sent_at, False), CONTEXT, RecordOptions()


# (request, whether its frame gives the rows itself under the default encoder)
SHAPES: list[tuple[tuple[Any, ...], bool]] = [
    # plain web events; then mixed topics and special names, `$set`, rerouting: events one by one
    *((request, index == 0) for index, request in enumerate(requests())),
    (one(web_event(60)), True),
    (one(web_event(61, properties={"$ip": "10.0.0.1"})), True),
    (one(web_event(62, properties={"$ip": None, "capture_internal": True})), True),
    (one(web_event(63, properties={"$process_person_profile": False, "$cookieless_mode": True})), True),
    (one(web_event(64, properties={"$elements_chain": 7, "$set": {"a": 1}})), True),
    (one(web_event(65, properties={"$elements_chain": 'a\\"b"c\\\\', "n": {"$elements_chain": "x"}})), True),
    (one(web_event(66, timestamp="2026-12-07T05:15:00.999999+02:00")), True),
    (one(web_event(67, timestamp="2026-12-07T05:15:00")), True),
    (one(web_event(68, timestamp="2126-12-07T05:15:00Z"), sent_at=None), True),  # past DateTime64's range
    (one(web_event(69, timestamp="1960-12-07T05:15:00Z"), sent_at=None), True),
    (one(web_event(70, timestamp=None)), True),
    (one(node_event(71), sent_at=None), True),
    (one(node_event(72, distinct_id="ユーザー😀", properties={})), True),
    (one({**web_event(73), "uuid": "0190C6B2-7D1E-7A4C-9F3E-4B1C2D3E0049"}), True),
    (one(web_event(74), token="phc_other"), True),
    (one(web_event(75, properties={"$elements_chain": "x", "n": {"$elements_chain": "x"}})), False),  # ambiguous
    (one(web_event(76, properties={"a": '","$ip":"1"', "$ip": "1"})), True),
    (one(web_event(91, timestamp="2126-12-07T05:15:00.000Z"), sent_at=None), True),
    (one(web_event(92, timestamp="2027-12-07T05:15:00.500Z")), True),  # a year ahead: now
    (one(web_event(93, timestamp="2026-12-07 05:15:01.123Z")), True),
    (one(web_event(94, timestamp="2026-13-07T05:15:01.123Z")), False),
    (one(web_event(95, timestamp="2026-12-07T05:15:01.1a3Z")), False),
    (one(web_event(77, offset=1500)), False),
    (one(web_event(78, timestamp="garbage")), False),
    (one(web_event(79, properties={"$clock_skew": 250})), False),
    (one(web_event(80, properties={"$ignore_sent_at": True})), False),
    (one(node_event(81, **{"$set": {"plan": "pro"}})), False),
    (one(node_event(82, distinct_id=12345)), False),
    (one({**web_event(83), "uuid": "not-a-uuid"}), False),
    (one(web_event(84, timestamp="0001-01-01T00:00:00Z"), sent_at=None), True),
    ((ParsedRequest([web_event(85), web_event(86, timestamp="garbage"), web_event(87)], TOKEN, SENT_AT, True),
      CONTEXT, RecordOptions()), False),  # one event the frame does not cover: the whole request one by one
]


def contents() -> list[bytes]:
    out = []
    for (parsed, context, options), _ in SHAPES:
        check_events(parsed)
        out.append(request_content(parsed, context, options))
    return out


def record_messages(content: bytes, partition: int, first: int) -> list[SpoolMessage]:
    return [SpoolMessage(record.topic, partition, offset, READ_MS, record.key, record.value, record.headers)
            for offset, record in enumerate(request_records(content), first)]  # fmt: skip


def frame_of(content: bytes, partition: int, first: int) -> SpooledFrame | None:
    read = spooled_messages(memoryview(content))
    assert len(read) == len(request_records(content))
    if type(read[0]) is not SpooledFrame:
        return None
    assert all(message is read[0] for message in read)  # one frame, listed once per record
    return read[0].placed(partition, first, READ_MS)


@pytest.mark.parametrize("strict", [False, True])
def test_frame_rows_are_the_record_rows_byte_for_byte(strict: bool) -> None:
    for index, content in enumerate(contents()):
        frame = frame_of(content, index, 1000 * index)
        expected_by_encoder = [[outcome(encoder, m) for m in record_messages(content, index, 1000 * index)]
                               for encoder in encoders(strict=strict)]  # fmt: skip
        for encoder, expected in zip(encoders(strict=strict), expected_by_encoder, strict=True):
            rows = frame.rows(encoder) if frame is not None else None
            if rows is not None:
                assert rows == expected, (index, encoder)


def test_common_shapes_take_the_frame_path() -> None:
    encoder = RowEncoder(TeamResolver({TOKEN: 42}))
    taken = []
    for content in contents():
        frame = frame_of(content, 0, 0)
        taken.append(frame is not None and frame.rows(encoder) is not None)
    assert taken == [covered for _, covered in SHAPES]


@pytest.mark.parametrize("ip_mode", list(IpMode))
def test_a_batch_of_frames_holds_the_rows_and_positions_of_the_records(ip_mode: IpMode) -> None:
    """Frames, frames that fall back to their events, and the replay guard's skips inside a frame."""
    encoder = RowEncoder(TeamResolver({TOKEN: 42}, strict=True), ip_mode)
    frames, records = Batch(0), Batch(0)
    replayed_positions = {3, 5000, 1004}  # in frames (then encoded event by event), and in events
    for index, content in enumerate(contents()):
        first = 1000 * index
        read = spooled_messages(memoryview(content))
        messages = [read[0].placed(7, first, READ_MS)] if type(read[0]) is SpooledFrame else [
            event.placed(7, offset, READ_MS) for offset, event in enumerate(read, first)]  # fmt: skip
        frames.add_run(messages, encoder.encode_binary, replayed_positions, lambda f: f.rows(encoder))
        records.add_run(record_messages(content, 7, first), encoder.encode_binary, replayed_positions)
    assert frames.rows == records.rows and frames.sources == records.sources
    assert frames.skipped == records.skipped and frames.ranges == records.ranges
    assert [(m.offset, e.reason) for m, e in frames.rejects] == [(m.offset, e.reason) for m, e in records.rejects]
    assert frames.size == records.size and frames.dedup_token() == records.dedup_token()
    assert len(frames.rows) > 40 and frames.records == 4 + 3 + 2  # requests of 5, 4 and 3 events read whole



def test_a_frame_row_the_server_refuses_reaches_the_dlq_as_its_record_and_a_restart_stores_nothing_twice(
    chdb_writer: ChdbWriter, chdb_table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows built from a whole request: a row chdb refuses is bisected out and its record (read again
    from the spool) reaches the DLQ; the rest is stored once, also when the spool is read again."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    requests = [spooled_request(range(first, first + 10)) for first in (0, 10)]

    async def fill() -> None:
        spool = Spool(spool_dir)
        await spool.open()
        for content in requests:
            await spool.append_request(content, 10)
        await spool.close()

    asyncio.run(fill())
    rows_of = SpooledFrame.rows
    frames_seen: list[int] = []

    def corrupting(frame: SpooledFrame, encoder: RowEncoder) -> list[bytes] | None:
        rows = rows_of(frame, encoder)
        frames_seen.append(frame.first)
        if rows is not None and len(frames_seen) == 2:  # the second request's 4th row
            rows[3] = rows[3][: -len(frame.topic) - 1] + CorruptingEncoder.TOO_LONG
        return rows

    monkeypatch.setattr(SpooledFrame, "rows", corrupting)
    run_worker(chdb_writer, chdb_table, Draining(SpoolSource(spool_dir)), FileDeadLetters(tmp_path / "dlq"),
               RowEncoder(TeamResolver({})), rows=15)  # fmt: skip
    assert counts(chdb_writer, chdb_table) == (19, 19)
    dead = [orjson.loads(line) for line in next((tmp_path / "dlq").iterdir()).read_bytes().splitlines()]
    assert [d["headers"]["dlq_reason"] for d in dead] == ["rejected_by_clickhouse"]
    assert base64.b64decode(dead[0]["value"]) == request_records(requests[1])[3].value

    # A crash before the commit: the spool is read again from its start; the replay guard skips the stored rows.
    cursors = list(spool_dir.glob("cursor-*"))
    assert cursors
    for cursor in cursors:
        cursor.unlink()
    monkeypatch.setattr(SpooledFrame, "rows", rows_of)
    run_worker(chdb_writer, chdb_table, Draining(SpoolSource(spool_dir)), FileDeadLetters(tmp_path / "dlq2"),
               RowEncoder(TeamResolver({})), rows=15)  # fmt: skip
    assert counts(chdb_writer, chdb_table) == (20, 20)  # only the refused row was not stored before
