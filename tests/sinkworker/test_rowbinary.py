"""The sink's RowBinary rows store exactly what the JSONEachRow reference rows store, on chdb and 18.16.

Every message of a varied set (SDK shapes, unicode, huge properties, missing fields, bad timestamps) is
encoded both ways and inserted into two fresh tables of the same server; the stored rows must be equal
column for column. Messages that cannot become rows are rejected with the same reason by both.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.clickhouse.chdb_writer import ChdbWriter
from gateway.clickhouse.http_writer import HttpWriter
from gateway.clickhouse.schema import events_table_ddl, table_name
from gateway.clickhouse.writer import Writer
from gateway.sinkworker.rows import ROWBINARY_COLUMNS, IpMode, Rejected, RowEncoder
from gateway.sinkworker.teams import TeamResolver
from tests.sinkworker.helpers import TOKEN, captured_value, record

HUGE = {f"key_{i}": "value " * 20 for i in range(8000)}  # ~1.2 MB of properties


def around(data: str, number: int = 0, **fields: Any) -> bytes:
    """A value in capture's key order around a `data` text given verbatim (it may be malformed)."""
    value = {"uuid": f"0190c6b2-7d1e-7a4c-9f3e-4b1c2d3e{number:04x}", "distinct_id": "d", "ip": "203.0.113.7",
             "data": data, "now": "2023-09-15T09:15:02.328551+00:00", "token": TOKEN, "event": "e",
             "timestamp": "2023-09-15T09:15:02.325Z", **fields}  # fmt: skip
    return orjson.dumps(value)


def varied_values() -> list[bytes]:
    """Valid messages of many shapes (each becomes a row)."""
    web = {
        "$current_url": "https://example.com/ü?q=1",
        "$elements_chain": 'button.btn:nth-child="2"text="Buy"',
        "$browser_version": 126.5,
        "$screen_width": 1728,
        "nested": {"a": [1, 2.5, None, True, {"b": "c"}]},
    }
    return [
        captured_value(0, properties=web),
        captured_value(1, event="order placed", properties={"total": 1e300, "tiny": 5e-324, "big": 2**63}),
        captured_value(2, properties={"text": '日本語 😀 \u0000 \t\n "quoted" \\ \u2028', "$ip": "10.0.0.1"}),
        captured_value(3, event="ünïcödé 事件 😀", distinct_id="ユーザー😀"),
        captured_value(4, properties=HUGE),
        captured_value(5, properties={"$set": {"a": 1}}, data_extra={"$set": {"b": 2}, "$set_once": {"c": 3}}),
        captured_value(6, properties={"$process_person_profile": False, "$elements_chain": 7}),
        captured_value(7, distinct_id=12345),
        captured_value(8, distinct_id={"weird": ["id"]}),
        captured_value(
            9, computed=False, data_extra={"timestamp": "2023-09-15T09:14:00Z"}, sent_at="2023-09-15T09:15:00Z"
        ),
        captured_value(10, computed=False, data_extra={"offset": 1500}),
        captured_value(11, computed=False, data_extra={"timestamp": "garbage"}),
        captured_value(12, timestamp="0001-01-01T00:00:00Z"),  # before 1970: the epoch
        captured_value(13, timestamp="2200-01-01T00:00:00Z"),  # after 2105: the epoch
        captured_value(14, timestamp="2023-09-15T11:15:02.999999+02:00"),
        captured_value(15, timestamp=1694769302, now="not a time"),  # wrong types: fall back
        captured_value(16, timestamp="1970-01-01T00:00:00Z", now="2105-12-31T23:59:59.999999Z"),
        captured_value(17, uuid="0190C6B2-7D1E-7A4C-9F3E-4B1C2D3E4F50"),
        captured_value(18, uuid="{0190c6b2-7d1e-7a4c-9f3e-4b1c2d3e4f51}"),
        captured_value(19, historical_migration=True, token="phc_other"),
        captured_value(20, token=None, data_extra={"token": "phc_in_data"}),
        captured_value(21, token=None, properties={"token": "phc_in_properties"}),
        captured_value(22, ip=None, properties={"$ip": "198.51.100.1"}),
        captured_value(23, properties=None),
        captured_value(24, data_extra={"properties": ["not", "an", "object"]}),
        # Shapes next to the lean path's conditions (RowEncoder._lean_row): each is encoded either way.
        captured_value(25, uuid="0190C6B27D1E7A4C9F3E4B1C2D3E4F5A"),  # no hyphens, upper case
        captured_value(26, timestamp="2023-09-15T09:15:02.325", now="2023-09-15 09:15:03"),  # naive: UTC
        captured_value(27, timestamp=" 2023-09-15T09:15:02Z ", now=""),  # padded; empty now
        captured_value(28, ip="", properties={"$ip": "198.51.100.2", "$elements_chain": None}),
        captured_value(29, ip=7, historical_migration="yes"),
        captured_value(30, data_extra={"$set_once": {"first": 1}, "$set": "not an object"}),
        captured_value(31, properties={"$set": {"a": 1}, "$process_person_profile": False}),
        captured_value(32, event="", data_extra={"event": "named in data"}),
        captured_value(33, uuid="", data_extra={"uuid": "0190c6b2-7d1e-7a4c-9f3e-4b1c2d3e4f5b"}),
        captured_value(34, distinct_id=["list"], token="phc_third"),
        # Shapes that trip a parser of JSON text by position (visitParam*-like): exact rows either way.
        around('{"context":{"properties":{"x":1}},"properties":{"y":2}}', 1),
        around('{"context":{"properties":{"x":1}}}', 2),
        around('{"properties":{"$elements_chain":"a","$elements_chain":"b"}}', 3),
        around('{"properties":{"n":{"$elements_chain":"x"},"$elements_chain":"y"}}', 4),
        around('{"properties":{"n":{"$process_person_profile":false}}}', 5),
        around('{"properties": {"a": 1.50, "b": 1E5, "c": "\\u00e9"}}', 6),
        around('{"properties":{}}', 7, timestamp="2023-02-30T00:00:00Z"),
        orjson.dumps(
            {
                "uuid": "00000000-0000-0000-0000-00000000001a",
                "distinct_id": "d",
                "token": "t",
                "event": "inline data",
                "data": {"properties": {"x": 1}},
            }
        ),
    ]


BAD_VALUES = [
    (b"\xff\xfe not utf-8", "invalid_json"),
    (b'{"data": "\xff"}', "invalid_json"),
    (b"[]", "invalid_json"),
    (b'"a string"', "invalid_json"),
    (orjson.dumps({"uuid": "x", "data": "{not json"}), "invalid_data"),
    (orjson.dumps({"uuid": "x", "data": "[1]"}), "invalid_data"),
    (orjson.dumps({"uuid": "x", "data": 17}), "invalid_data"),
    (captured_value(0, uuid="not-a-uuid"), "invalid_uuid"),
    (captured_value(0, uuid=42), "invalid_uuid"),
    (captured_value(0, computed=False, data_extra={"event": ""}), "missing_event"),
    (captured_value(0, event=["list"]), "missing_event"),
    (captured_value(0, distinct_id=""), "missing_distinct_id"),
    (captured_value(0, distinct_id=None), "missing_distinct_id"),
    (captured_value(0, token=""), "missing_token"),
    (captured_value(0, token=5), "missing_token"),
    (captured_value(0, uuid="0190c6b2 7d1e 7a4c 9f3e 4b1c2d3e4f50"), "invalid_uuid"),
    (captured_value(0, uuid="0190c6b2-7d1e-7a4c-9f3e-4b1c2d3e4f5"), "invalid_uuid"),
    (orjson.dumps({"uuid": "x", "data": '{"properties": {"a": 1e400}}'}), "invalid_data"),
    # Malformed inside a well-formed envelope in capture's key order (what a text-slicing path would pass).
    (around('{"properties":{"a":tru}}'), "invalid_data"),
    (around('{"properties":{"a":1,}}'), "invalid_data"),
    (around('{"properties":{"a":[1}}'), "invalid_data"),
    (around('{"properties":{"a":1}'), "invalid_data"),
    (around('{"properties":{"a":"x"}}garbage'), "invalid_data"),
    (around('{"properties":{"a":1e400}}'), "invalid_data"),
    (around('{"properties":{}}').replace(b'"d"', b'"d\x01"'), "invalid_json"),  # a raw control character
    (around('{"properties":{}}').replace(b'"d"', b'"d\xff"'), "invalid_json"),  # not UTF-8
]


def encoder(subsecond: bool, **options: Any) -> RowEncoder:
    return RowEncoder(TeamResolver({TOKEN: 42}), subsecond=subsecond, **options)


async def stored_both_ways(writer: Writer, subsecond: bool, ip_mode: IpMode) -> tuple[list[Any], list[Any]]:
    """Rows stored from JSONEachRow and from RowBinary encodings of the same messages."""
    rows_encoder = encoder(subsecond, ip_mode=ip_mode)
    messages = [record(value, offset=i, partition=i % 3) for i, value in enumerate(varied_values())]
    stored = []
    for binary in (False, True):
        name = f"rowbinary_{'b' if binary else 'j'}_{ip_mode.name.lower()}_{id(writer)}"
        await writer.command(f"DROP TABLE IF EXISTS {table_name('default', name)}")
        await writer.command(events_table_ddl(writer.caps, "default", name))
        table = table_name("default", name)
        if binary:
            body = b"".join(rows_encoder.encode_binary(m) for m in messages)
            await writer.insert(table, body, None, ROWBINARY_COLUMNS)
        else:
            await writer.insert(table, b"".join(rows_encoder.encode(m) for m in messages), None)
        columns = ", ".join(f"toString({c}) AS text{c}" for c in ROWBINARY_COLUMNS)
        text = await writer.fetch(f"SELECT {columns} FROM {table} ORDER BY _offset", "JSONEachRow")
        rows = [orjson.loads(line) for line in text.splitlines()]
        stored.append([{name.removeprefix("text"): value for name, value in row.items()} for row in rows])
        await writer.command(f"DROP TABLE {table}")
    return stored[0], stored[1]


@pytest.mark.parametrize("ip_mode", list(IpMode))
def test_rowbinary_rows_equal_json_rows_on_chdb(chdb_writer: ChdbWriter, ip_mode: IpMode) -> None:
    json_rows, binary_rows = asyncio.run(stored_both_ways(chdb_writer, True, ip_mode))
    assert len(binary_rows) == len(varied_values())
    assert binary_rows == json_rows
    assert binary_rows[12]["timestamp"] == "1970-01-01 00:00:00.000000"
    assert binary_rows[14]["timestamp"] == "2023-09-15 09:15:02.999999"


def test_rowbinary_rows_equal_json_rows_on_clickhouse_18_16(clickhouse_http_url: str) -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        writer = await HttpWriter.connect(clickhouse_http_url)
        try:
            return await stored_both_ways(writer, False, IpMode.SET)
        finally:
            await writer.close()

    json_rows, binary_rows = asyncio.run(scenario())
    assert len(binary_rows) == len(varied_values())
    assert binary_rows == json_rows
    assert binary_rows[4]["properties"] == orjson.dumps({**HUGE, "$ip": "203.0.113.7"}).decode()
    assert binary_rows[14]["timestamp"] == "2023-09-15 09:15:02"


def test_capture_shaped_messages_take_the_lean_path() -> None:
    """The comparisons above cover the lean path only if the common shapes take it."""
    lean = encoder(False)
    taken = [lean._lean_row(record(value)) is not None for value in varied_values()]
    assert taken[:4] == [True] * 4
    assert taken[25:27] == [True, True]
    assert not any(taken[i] for i in (5, 7, 9, 10, 20, 27, 30, 32, 33))


@pytest.mark.parametrize(("value", "reason"), BAD_VALUES)
def test_bad_messages_are_rejected_with_the_same_reason(value: bytes, reason: str) -> None:
    for encode in (encoder(True).encode, encoder(True).encode_binary, encoder(False).encode_binary):
        with pytest.raises(Rejected) as raised:
            encode(record(value))
        assert raised.value.reason == reason


def test_values_outside_a_column_range_are_rejected_not_wrapped() -> None:
    too_big = RowEncoder(TeamResolver({TOKEN: 2**63}))
    with pytest.raises(Rejected, match="invalid_data"):
        too_big.encode_binary(record(captured_value(0)))
