"""Replay records → block lines and `session_replay_events` figures, for the shapes producers really send."""

from __future__ import annotations

import orjson
import pytest

from gateway.recordings.blocks import SessionBuffer
from gateway.recordings.items import parse_message
from gateway.sinkworker.rows import Rejected
from gateway.sinkworker.sources import SpoolMessage


def message(properties: dict | str, offset: int = 7) -> SpoolMessage:
    data = properties if isinstance(properties, str) else orjson.dumps({"event": "$snapshot_items",
                                                                        "properties": properties}).decode()
    value = orjson.dumps({"token": "phc_x", "distinct_id": "envelope-id", "data": data})
    return SpoolMessage("replay", 0, offset, 0, b"s", value, ())


def buffered(*messages: SpoolMessage) -> SessionBuffer:
    buffer = SessionBuffer(1, "s", "d", "phc_x", "web", "replay", 0, messages[0].offset)
    for each in messages:
        buffer.add(each.offset, parse_message(each))
    return buffer


def lines(buffer: SessionBuffer) -> list[list]:
    return [orjson.loads(line) for line in b"".join(buffer.chunks).split(b"\n") if line]


def test_events_are_stored_as_sent_and_only_bad_items_are_rejected() -> None:
    events = [
        {"type": 4, "data": {"href": "https://a.example/", "width": 1}, "timestamp": 1000},
        {"type": 2, "cv": "2024-10", "data": "\u001f\u008b packed full snapshot", "timestamp": 1001},  # posthog-js
        {"type": 3, "data": {"source": 2, "type": 2, "id": 5}, "timestamp": 1100.5},  # click
        {"type": 3, "data": {"source": [1], "type": {"x": 1}}, "timestamp": 1200},  # odd values: not counted
        {"type": 5, "data": {"tag": "$pageview", "payload": "text, not an object"}, "timestamp": 1300},
        {"type": 6, "data": {"plugin": "rrweb/console@1", "payload": {"level": "error", "payload": ["x"]}},
         "timestamp": 1400},
        {"type": 6, "data": {"plugin": "rrweb/console@1", "payload": ["not", "an", "object"]}, "timestamp": 1500},
        {"type": 0, "data": ["a list"], "timestamp": 1600},
    ]
    bad = [{"type": True, "timestamp": 5}, {"type": 3, "timestamp": "noon"}, "not an event", 12345678901234567890]
    batch = parse_message(message({"$session_id": "s", "$window_id": "w", "$snapshot_items": [*events, *bad]}))
    assert [(item, why[:9]) for item, why in batch.rejected] == [
        (bad[0], "type True"), (bad[1], "timestamp"), (bad[2], "item is a"), (bad[3], "item is a")]
    assert (batch.session_id, batch.window_id, batch.distinct_id, batch.source) == ("s", "w", "envelope-id", "web")

    buffer = buffered(message({"$session_id": "s", "$window_id": "w", "$snapshot_items": [*events, *bad]}))
    assert lines(buffer) == [["w", event] for event in events]
    stats = buffer.stats
    assert (stats.first_timestamp, stats.last_timestamp, stats.first_url) == (1000, 1600, "https://a.example/")
    assert (stats.click_count, stats.mouse_activity_count, stats.console_error_count) == (1, 1, 1)
    assert (stats.event_count, stats.message_count, stats.size) == (len(events), 1, len(b"".join(buffer.chunks)))


def test_line_breaks_between_json_tokens_never_split_a_line() -> None:
    """Another producer may send pretty-printed JSON: a block still has one line per event."""
    data = ('{"event": "$snapshot_items", "properties": {"$session_id": "s", "$snapshot_items": [\n'
            '  {"type": 3,\r\n   "timestamp": 5, "data": {"source": 5}},\n  {"type": 3, "timestamp": 6}\n]}}')
    buffer = buffered(message(data))
    assert lines(buffer) == [["s", {"type": 3, "timestamp": 5, "data": {"source": 5}}],
                             ["s", {"type": 3, "timestamp": 6}]]
    assert buffer.stats.keypress_count == 1


@pytest.mark.parametrize(("properties", "reason"), [
    ({"$snapshot_items": []}, "missing_session_id"),
    ({"$session_id": "s", "$snapshot_items": {"not": "a list"}}, "invalid_snapshot"),
    ({"$session_id": 5, "$snapshot_items": "neither"}, "missing_session_id"),
    ('{"properties": [1]}', "invalid_json"),
    ("not json", "invalid_json"),
])
def test_unusable_records_are_rejected_with_their_reason(properties: dict | str, reason: str) -> None:
    with pytest.raises(Rejected) as rejected:
        parse_message(message(properties))
    assert rejected.value.reason == reason
