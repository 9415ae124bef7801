"""A replay-topic message → its session and rrweb events, or the reason it goes to the DLQ.

The gateway writes one `$snapshot_items` record per `/s/` request (gateway/capture/events.py
`replay_record`): the Kafka value's `data` is a JSON text whose properties carry `$session_id`,
`$window_id`, `distinct_id`, `$snapshot_source` and the rrweb events in `$snapshot_items`.

The items are not turned into Python objects: msgspec reads each item's JSON text as it is (which the
block stores) and, in a second pass, only the fields the metadata needs (`RrwebEvent`); everything
else in an event (DOM snapshots, mutations) is skipped over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from gateway.capture.events import MAX_SESSION_ID_LENGTH
from gateway.sinkworker.rows import Rejected, SourceMessage

_NUMBERS = (int, float)


class EventData(msgspec.Struct, gc=False):
    """What `session_replay_events` reads of an rrweb event's `data`."""

    source: Any = None  # incremental snapshot source
    type: Any = None  # mouse interaction type
    href: Any = None  # meta event
    plugin: Any = None
    payload: msgspec.Raw = msgspec.Raw()  # a plugin's payload, decoded only for console events


class RrwebEvent(msgspec.Struct, gc=False):  # untracked by the cyclic GC: they hold no cycles
    type: Any = None
    timestamp: Any = None
    data: EventData | list[msgspec.Raw] | str | int | float | bool | None = None


_Item = RrwebEvent | list[msgspec.Raw] | str | int | float | bool | None


class _Properties(msgspec.Struct):
    session_id: Any = msgspec.field(name="$session_id", default=None)
    window_id: Any = msgspec.field(name="$window_id", default=None)
    distinct_id: Any = None
    source: Any = msgspec.field(name="$snapshot_source", default=None)
    items: list[msgspec.Raw] = msgspec.field(name="$snapshot_items", default_factory=list)


class _Record(msgspec.Struct):
    properties: _Properties


class _ItemProperties(msgspec.Struct):
    items: list[_Item] = msgspec.field(name="$snapshot_items", default_factory=list)


class _ItemRecord(msgspec.Struct):
    properties: _ItemProperties


_RECORD = msgspec.json.Decoder(_Record)
_ITEMS = msgspec.json.Decoder(_ItemRecord)


@dataclass(slots=True)
class SnapshotBatch:
    """The rrweb events of one message, and what they belong to."""

    session_id: str
    window_id: str
    distinct_id: str
    token: str
    source: str
    events: list[RrwebEvent]
    texts: list[bytes | msgspec.Raw]  # each event's JSON text, without line breaks
    rejected: list[tuple[Any, str]]  # (item, why) for items that are not rrweb events


def parse_message(message: SourceMessage) -> SnapshotBatch:
    """Decode a replay record; Rejected(reason) when the whole message is unusable."""
    try:
        value = orjson.loads(message.value or b"")
        data = value["data"]
        text = data if isinstance(data, str | bytes) else orjson.dumps(data)
        record = _RECORD.decode(text)
        items = _ITEMS.decode(text).properties.items
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise Rejected("invalid_json", f"not a replay record: {exc}") from None
    except msgspec.DecodeError as exc:  # not JSON, or an unexpected shape: say which
        raise _rejection(text) or Rejected("invalid_json", f"not a replay record: {exc}") from None
    properties = record.properties
    _check_session_id(properties.session_id)
    session_id: str = properties.session_id
    events: list[RrwebEvent] = []
    texts: list[bytes | msgspec.Raw] = []
    rejected: list[tuple[Any, str]] = []
    for item, raw in zip(items, properties.items, strict=True):  # exact types: a bool is no type or timestamp
        if (type(item) is RrwebEvent and type(kind := item.type) is int and 0 <= kind <= 6
                and type(timestamp := item.timestamp) in _NUMBERS and timestamp > 0):
            events.append(item)
            texts.append(raw)
        else:
            loaded = orjson.loads(bytes(raw))
            rejected.append((loaded, rrweb_problem(loaded) or "not an rrweb event"))
    distinct_id = properties.distinct_id or value.get("distinct_id") or ""
    window_id = properties.window_id or session_id
    return SnapshotBatch(
        session_id=session_id,
        window_id=window_id if isinstance(window_id, str) else str(window_id),
        distinct_id=distinct_id if isinstance(distinct_id, str) else orjson.dumps(distinct_id).decode(),
        token=str(value.get("token") or ""),
        source=str(properties.source or "web"),
        events=events,
        texts=texts,
        rejected=rejected,
    )


def _rejection(text: str | bytes) -> Rejected | None:
    """Why a record that msgspec refused is unusable (the reasons the DLQ gives)."""
    try:
        properties = orjson.loads(text)["properties"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return Rejected("invalid_json", f"not a replay record: {exc}")
    if not isinstance(properties, dict):
        return Rejected("invalid_json", "properties is not an object")
    _check_session_id(properties.get("$session_id"))
    if not isinstance(properties.get("$snapshot_items"), list):
        return Rejected("invalid_snapshot", "$snapshot_items is not a list")
    return None


def _check_session_id(session_id: Any) -> None:
    if not isinstance(session_id, str) or not session_id or len(session_id) > MAX_SESSION_ID_LENGTH:
        raise Rejected("missing_session_id", f"$session_id is {session_id!r:.80}")


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
