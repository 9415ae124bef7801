"""A replay-topic message → its session and rrweb events, or the reason it goes to the DLQ.

The gateway writes one `$snapshot_items` record per `/s/` request (gateway/capture/events.py
`replay_record`): the Kafka value's `data` is a JSON text whose properties carry `$session_id`,
`$window_id`, `distinct_id`, `$snapshot_source` and the rrweb events in `$snapshot_items`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.capture.events import MAX_SESSION_ID_LENGTH
from gateway.sinkworker.rows import Rejected, SourceMessage


@dataclass(slots=True)
class SnapshotBatch:
    """The rrweb events of one message, and what they belong to."""

    session_id: str
    window_id: str
    distinct_id: str
    token: str
    source: str
    events: list[dict[str, Any]]
    rejected: list[tuple[Any, str]]  # (item, why) for items that are not rrweb events


def parse_message(message: SourceMessage) -> SnapshotBatch:
    """Decode a replay record; Rejected(reason) when the whole message is unusable."""
    try:
        value = orjson.loads(message.value or b"")
        data = value["data"]
        data = orjson.loads(data) if isinstance(data, str | bytes) else data
        properties = data["properties"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise Rejected("invalid_json", f"not a replay record: {exc}") from None
    if not isinstance(properties, dict):
        raise Rejected("invalid_json", "properties is not an object")
    session_id = properties.get("$session_id")
    if not isinstance(session_id, str) or not session_id or len(session_id) > MAX_SESSION_ID_LENGTH:
        raise Rejected("missing_session_id", f"$session_id is {session_id!r:.80}")
    items = properties.get("$snapshot_items")
    if not isinstance(items, list):
        raise Rejected("invalid_snapshot", "$snapshot_items is not a list")
    events: list[dict[str, Any]] = []
    rejected: list[tuple[Any, str]] = []
    for item in items:  # the common case inline (exact types: a bool is not an rrweb type or timestamp)
        if (type(item) is dict and type(kind := item.get("type")) is int and 0 <= kind <= 6
                and type(timestamp := item.get("timestamp")) in _NUMBERS and timestamp > 0):
            events.append(item)
        else:
            rejected.append((item, rrweb_problem(item) or "not an rrweb event"))
    distinct_id = properties.get("distinct_id") or value.get("distinct_id") or ""
    window_id = properties.get("$window_id") or session_id
    return SnapshotBatch(
        session_id=session_id,
        window_id=window_id if isinstance(window_id, str) else str(window_id),
        distinct_id=distinct_id if isinstance(distinct_id, str) else orjson.dumps(distinct_id).decode(),
        token=str(value.get("token") or ""),
        source=str(properties.get("$snapshot_source") or "web"),
        events=events,
        rejected=rejected,
    )


_NUMBERS = (int, float)


def rrweb_problem(item: Any) -> str | None:
    """Why `item` is not an rrweb event (an object with an integer `type` and a numeric `timestamp`)."""
    if not isinstance(item, dict):
        return f"item is a {type(item).__name__}, not an object"
    kind = item.get("type")
    if not isinstance(kind, int) or isinstance(kind, bool) or not 0 <= kind <= 6:
        return f"type {kind!r:.40} is not an rrweb event type (0-6)"
    timestamp = item.get("timestamp")
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool) or timestamp <= 0:
        return f"timestamp {timestamp!r:.40} is not epoch milliseconds"
    return None
