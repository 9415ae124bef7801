"""Row conversion: timestamps, $ip, elements_chain, $set merging, team ids and DLQ reasons."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from gateway.capture.timestamps import event_timestamp, parse_timestamp
from gateway.sinkworker.rows import IpMode, Rejected, RowEncoder
from gateway.sinkworker.teams import HASHED_TEAM_BASE, TeamResolver, parse_team_map
from gateway.sinkworker.timestamps import format_clickhouse
from tests.sinkworker.helpers import TOKEN, captured_value, record

NOW = datetime(2023, 9, 15, 9, 15, 2, 328551, tzinfo=UTC)


def encode(value: bytes, **options: object) -> dict:
    encoder = RowEncoder(TeamResolver({TOKEN: 42}), **options)  # type: ignore[arg-type]
    return orjson.loads(encoder.encode(record(value, offset=17, partition=3)))


def test_row_from_newest_message() -> None:
    row = encode(captured_value(0, properties={"$elements_chain": "a:nth-child=1", "x": 1}))
    assert row["uuid"] == "00000000-0000-0000-0000-000000000001"
    assert row["event"] == "$pageview"
    assert row["timestamp"] == "2023-09-15 09:15:02.325000"
    assert row["created_at"] == "2023-09-15 09:15:02.328551"
    assert (row["team_id"], row["token"], row["distinct_id"]) == (42, TOKEN, "user-0")
    assert row["elements_chain"] == "a:nth-child=1"
    assert orjson.loads(row["properties"]) == {"x": 1, "$ip": "203.0.113.7"}
    assert (row["_offset"], row["_partition"], row["_timestamp"]) == (17, 3, 1694769302)
    assert (row["person_mode"], row["historical_migration"], row["_topic"]) == (
        "full",
        0,
        "events_plugin_ingestion",
    )


def test_legacy_message_computes_timestamp_from_data() -> None:
    value = captured_value(
        0, computed=False, data_extra={"timestamp": "2023-09-15T09:14:00Z"}, sent_at="2023-09-15T09:15:00Z"
    )
    assert encode(value)["timestamp"] == "2023-09-15 09:14:02.328551"  # now + (timestamp - sent_at)


def test_seconds_only_for_legacy_servers() -> None:
    row = encode(captured_value(0), subsecond=False)
    assert (row["timestamp"], row["created_at"]) == ("2023-09-15 09:15:02", "2023-09-15 09:15:02")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(IpMode.SET, "203.0.113.7"), (IpMode.IF_MISSING, "10.0.0.1"), (IpMode.DROP, None)],
)
def test_ip_modes(mode: IpMode, expected: str | None) -> None:
    row = encode(captured_value(0, properties={"$ip": "10.0.0.1"}), ip_mode=mode)
    assert orjson.loads(row["properties"]).get("$ip") == expected


def test_set_and_set_once_are_merged_into_properties() -> None:
    value = captured_value(
        0,
        properties={"$set": {"a": 1, "b": 1}, "$process_person_profile": False},
        data_extra={"$set": {"b": 2}, "$set_once": {"c": 3}},
    )
    row = encode(value)
    properties = orjson.loads(row["properties"])
    assert properties["$set"] == {"a": 1, "b": 2}
    assert properties["$set_once"] == {"c": 3}
    assert row["person_mode"] == "propertyless"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff garbage", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (orjson.dumps({"uuid": "x", "data": "{not json"}), "invalid_data"),
        (captured_value(0, uuid="not-a-uuid"), "invalid_uuid"),
        (captured_value(0, computed=False, data_extra={"event": ""}), "missing_event"),
        (captured_value(0, distinct_id=""), "missing_distinct_id"),
        (captured_value(0, token=""), "missing_token"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as raised:
        encode(value)
    assert raised.value.reason == reason


def test_unknown_tokens_hash_or_reject() -> None:
    lenient = TeamResolver({})
    assert lenient.team_id("phc_a") == lenient.team_id("phc_a") >= HASHED_TEAM_BASE
    assert lenient.team_id("phc_a") != lenient.team_id("phc_b")
    encoder = RowEncoder(TeamResolver({}, strict=True))
    with pytest.raises(Rejected, match="unknown_token"):
        encoder.encode(record(captured_value(0)))


def test_team_map_formats(tmp_path) -> None:
    assert parse_team_map("a=1, b=2") == {"a": 1, "b": 2}
    assert parse_team_map('{"a": 3}') == {"a": 3}
    path = tmp_path / "teams.json"
    path.write_text('{"c": 4}')
    assert parse_team_map(str(path)) == {"c": 4}


def test_timestamp_rules() -> None:
    sent_at = parse_timestamp("2023-09-15T09:15:01Z")
    assert event_timestamp({"timestamp": "2023-09-15T09:15:00Z"}, sent_at, NOW) == parse_timestamp(
        "2023-09-15T09:15:01.328551Z"
    )
    ignore = {"timestamp": "2023-09-15T09:15:00Z", "properties": {"$ignore_sent_at": True}}
    assert event_timestamp(ignore, sent_at, NOW) == parse_timestamp("2023-09-15T09:15:00Z")
    assert event_timestamp({"offset": 1000, "timestamp": "2020-01-01"}, None, NOW) == parse_timestamp(
        "2023-09-15T09:15:01.328551Z"
    )
    assert event_timestamp({"timestamp": "2023-09-17T09:15:00Z"}, None, NOW) == NOW  # > 23 h ahead
    assert event_timestamp({"timestamp": "garbage"}, None, NOW) == NOW
    assert parse_timestamp("2023-09-15T11:15:02+02") == parse_timestamp("2023-09-15T09:15:02Z")
    assert parse_timestamp("2023-09-15T11:15:02.5-02") == parse_timestamp("2023-09-15T13:15:02.5Z")
    assert parse_timestamp("2023-09-15") == parse_timestamp("2023-09-15T00:00:00Z")
    assert (
        parse_timestamp("1694769302000")
        == parse_timestamp("1694769302")
        == parse_timestamp("2023-09-15T09:15:02Z")
    )
    assert parse_timestamp("Fri, 15 Sep 2023 09:15:02 GMT") == parse_timestamp("2023-09-15T09:15:02Z")
    assert format_clickhouse(datetime(1, 1, 1, tzinfo=UTC), True) == "1970-01-01 00:00:00.000000"


def test_encoded_rows_do_not_keep_spare_buffer_memory() -> None:
    """A batch holds its encoded rows until stored: they must cost about their size, not orjson's buffer."""
    encoder = RowEncoder(TeamResolver({TOKEN: 42}))
    properties = {f"$prop_{i}": "x" * 40 for i in range(15)}  # ~900 B rows, like posthog-js events
    messages = [record(captured_value(i, properties=properties), offset=i) for i in range(20_000)]

    def resident_mib() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20

    before = resident_mib()
    rows = [encoder.encode(message) for message in messages]
    grown = resident_mib() - before
    size = sum(map(len, rows)) / 2**20
    assert grown < 2 * size + 8, f"{grown:.0f} MiB resident for {size:.0f} MiB of rows"
