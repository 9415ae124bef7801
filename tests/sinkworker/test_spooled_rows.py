"""Rows built from a spooled request's events equal the rows built from the records every other reader
of the spool gets (`request_records`): byte for byte, and as stored by chdb.

The requests cover the SDKs' shapes and capture's special cases: cookieless, historical (flag and
rerouting), special topics, `$set`/`$set_once`, `$elements_chain`, `$ip` and `capture_internal` under
each `--ip-property` mode, offsets and `sent_at`, a missing uuid, times outside the columns' range,
`$snapshot_items`, the check event and, under `--strict-teams`, an unknown token.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from gateway.capture.check_event import CHECK_EVENT
from gateway.capture.events import RecordOptions, RequestContext, Topics, check_events
from gateway.capture.parse import ParsedRequest
from gateway.capture.spooled import request_content, request_records
from gateway.clickhouse.chdb_writer import ChdbWriter
from gateway.clickhouse.schema import events_table_ddl, table_name
from gateway.sinkworker.rows import ROWBINARY_COLUMNS, Elsewhere, IpMode, Rejected, RowEncoder, SourceMessage
from gateway.sinkworker.sources import SpoolMessage
from gateway.sinkworker.spooled import SpooledEvent, spooled_events
from gateway.sinkworker.teams import TeamResolver

TOKEN = "phc_frames"
NOW = datetime(2026, 12, 7, 5, 15, 2, 328_551, tzinfo=UTC)
WEB = {
    "$current_url": "https://example.com/ü?q=1",
    "$elements_chain": 'button.btn:nth-child="2"text="Buy"',
    "$browser_version": 126.5,
    "$screen_width": 1728,
    "$session_id": "0190c6b2-7d1e-7a4c-9f3e-4b1c2d3e4f50",
    "nested": {"a": [1, 2.5, None, True, {"b": "c"}], "big": 2**63, "tiny": 5e-324},
    "text": '日本語 😀 \u0000 \t\n "quoted" \\ \u2028',
}


def uuid_of(number: int) -> str:
    return f"0190c6b2-7d1e-7a4c-9f3e-4b1c2d3e{number:04x}"


def web_event(number: int, **fields: Any) -> dict[str, Any]:
    """posthog-js: uuid, event, properties (distinct_id inside), timestamp."""
    properties = {**WEB, "distinct_id": f"user-{number}", **fields.pop("properties", {})}
    return {"uuid": uuid_of(number), "event": "$pageview", "properties": properties,
            "timestamp": "2026-12-07T05:15:01.123Z", **fields}  # fmt: skip


def node_event(number: int, **fields: Any) -> dict[str, Any]:
    """posthog-node / posthog-python: distinct_id at the root, `$set` beside properties, no timestamp."""
    return {"distinct_id": f"node-{number}", "uuid": uuid_of(number), "event": "order placed",
            "properties": {"total": 1e300, "$lib": "posthog-node"}, **fields}  # fmt: skip


def requests() -> list[tuple[ParsedRequest, RequestContext, RecordOptions]]:
    """(request, context, options) of each spooled request; events numbered uniquely."""
    context = RequestContext("203.0.113.7", NOW)
    sent_at = NOW - timedelta(seconds=2)
    return [
        (ParsedRequest([web_event(i) for i in range(5)], TOKEN, sent_at, False), context, RecordOptions()),
        (ParsedRequest([
            web_event(10, properties={"$ip": "10.0.0.1"}),
            web_event(11, properties={"$cookieless_mode": True}),
            web_event(12, properties={"capture_internal": True, "$process_person_profile": False}),
            web_event(13, properties={"$elements_chain": 7, "$set": {"a": 1}}),
            web_event(14, offset=1500),
            web_event(15, timestamp="garbage"),
            web_event(16, properties={"$ignore_sent_at": True, "$clock_skew": 250}),
            web_event(17, timestamp="0001-01-01T00:00:00Z", properties={"$ignore_sent_at": True}),
            web_event(18, timestamp="2200-01-01T00:00:00Z", properties={"$ignore_sent_at": True}),
            {**web_event(19), "uuid": None},  # the gateway assigns one before spooling
            web_event(20, event="$exception"),
            web_event(21, event="$$heatmap"),
            web_event(22, event="$$client_ingestion_warning"),
            web_event(23, event="ünïcödé 事件 😀"),
            web_event(24, event="$snapshot_items"),
            web_event(25, event=CHECK_EVENT),
            web_event(26, timestamp="2026-12-07T05:15:00.999999+02:00", properties={"$ignore_sent_at": True}),
        ], TOKEN, sent_at, False), context, RecordOptions()),
        (ParsedRequest([node_event(30), node_event(31, **{"$set": {"plan": "pro"}, "$set_once": {"first": 1}}),
                        node_event(32, timestamp="2026-12-07T05:14:00Z", **{"$set_once": {"x": [1]}}),
                        node_event(33, distinct_id="ユーザー😀")],
                       TOKEN, None, False), RequestContext("198.51.100.4", NOW), RecordOptions()),
        (ParsedRequest([web_event(40), web_event(41, event="$exception")], "phc_other", sent_at, True), context,
         RecordOptions()),
        (ParsedRequest([web_event(50, timestamp="2020-01-01T00:00:00Z", properties={"$ignore_sent_at": True}),
                        web_event(51)], "phc_unknown", None, False), context,
         RecordOptions(Topics(main="custom_main", historical="custom_hist"), timedelta(days=2))),
    ]


def messages_both_ways() -> tuple[list[SourceMessage], list[SourceMessage]]:
    """Each request's events as the sink reads them (SpooledEvent) and its records as every other reader
    gets them, at the same positions."""
    from_records: list[SourceMessage] = []
    from_events: list[SourceMessage] = []
    offset = 0
    for partition, (parsed, context, options) in enumerate(requests()):
        check_events(parsed)
        content = request_content(parsed, context, options)
        records = request_records(content)
        events = spooled_events(memoryview(content))
        assert len(events) == len(records)
        for record, event in zip(records, events, strict=True):
            offset += 1
            from_records.append(SpoolMessage(record.topic, partition, offset, 1_765_084_502_000, record.key,
                                             record.value, record.headers))  # fmt: skip
            from_events.append(event.placed(partition, offset, 1_765_084_502_000))
    return from_records, from_events


def outcome(encoder: RowEncoder, message: SourceMessage) -> bytes | str | None:
    try:
        return encoder.encode_binary(message)
    except Rejected as error:
        return f"rejected: {error.reason}"
    except Elsewhere:
        return "elsewhere"


def encoders(**options: Any) -> list[RowEncoder]:
    teams = TeamResolver({TOKEN: 42, "phc_other": 7}, **options)
    return [RowEncoder(teams, mode, subsecond) for mode in IpMode for subsecond in (True, False)]


@pytest.mark.parametrize("strict", [False, True])
def test_event_rows_are_the_record_rows_byte_for_byte(strict: bool) -> None:
    from_records, from_events = messages_both_ways()
    for encoder in encoders(strict=strict):
        expected = [outcome(encoder, message) for message in from_records]
        assert [outcome(encoder, message) for message in from_events] == expected
    assert expected.count("elsewhere") == 1 and expected.count(None) == 1
    assert expected.count("rejected: unknown_token") == (2 if strict else 0)


def test_spooled_events_carry_their_records() -> None:
    """What the DLQ forwards and the recordings sink filters on: the record's topic, key, value, headers."""
    from_records, from_events = messages_both_ways()
    fields = ("topic", "partition", "offset", "timestamp", "key", "value", "headers")
    for record, event in zip(from_records, from_events, strict=True):
        assert [getattr(event, name) for name in fields] == [getattr(record, name) for name in fields]


def test_common_shapes_are_built_from_the_events() -> None:
    """The comparisons cover the direct path only if the common shapes take it; encoding leaves the
    event as it was."""
    _, from_events = messages_both_ways()
    encoder = encoders()[0]
    events = [message for message in from_events if isinstance(message, SpooledEvent)]
    before = orjson.dumps([event.route.event for event in events])
    declined = {event.route.uuid for event in events
                if event.route.name != "$snapshot_items" and encoder._event_row(event) is None}  # fmt: skip
    assert orjson.dumps([event.route.event for event in events]) == before
    assert len(events) == len(from_events) and len(events) > 25
    assert declined == {uuid_of(31), uuid_of(32), uuid_of(25)}  # `$set`/`$set_once` at the root; the check event


@pytest.mark.parametrize("ip_mode", list(IpMode))
def test_event_rows_store_what_record_rows_store_on_chdb(chdb_writer: ChdbWriter, ip_mode: IpMode) -> None:
    from_records, from_events = messages_both_ways()
    encoder = RowEncoder(TeamResolver({TOKEN: 42}), ip_mode)

    async def stored(messages: list[SourceMessage], name: str) -> list[dict[str, Any]]:
        table = table_name("default", f"{name}_{ip_mode.name.lower()}")
        await chdb_writer.command(f"DROP TABLE IF EXISTS {table}")
        await chdb_writer.command(events_table_ddl(chdb_writer.caps, "default", f"{name}_{ip_mode.name.lower()}"))
        rows = [outcome(encoder, message) for message in messages]
        await chdb_writer.insert(table, b"".join(r for r in rows if isinstance(r, bytes)), None, ROWBINARY_COLUMNS)
        columns = ", ".join(f"toString({c}) AS text{c}" for c in ROWBINARY_COLUMNS)
        text = await chdb_writer.fetch(f"SELECT {columns} FROM {table} ORDER BY _offset", "JSONEachRow")
        await chdb_writer.command(f"DROP TABLE {table}")
        return [orjson.loads(line) for line in text.splitlines()]

    record_rows = asyncio.run(stored(from_records, "from_records"))
    event_rows = asyncio.run(stored(from_events, "from_events"))
    assert len(record_rows) == len(from_records) - 2  # $snapshot_items and the check event are no rows
    assert event_rows == record_rows
