"""Validated events → Kafka records exactly as PostHog capture writes them (value, key, headers, topic).

This is the one place where topic, partition key and headers are decided. In reverse-proxy forward
mode (`RecordOptions.upstream`) an event becomes instead an upstream record: the event as an
upstream PostHog's `/batch/` takes it, encoded once, which the upstream sink joins into its batches
without decoding it again (gateway/sinks/upstream.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
import uuid_utils

from gateway.capture.errors import (
    InvalidCookielessMode,
    InvalidSessionId,
    MissingDistinctId,
    MissingEventName,
    MissingSessionId,
    MissingSnapshotData,
)
from gateway.capture.parse import ParsedRequest, RawEvent
from gateway.capture.timestamps import epoch_micros, event_micros, event_timestamp, format_now, rfc3339_micros
from gateway.core.record import Record

MAX_DISTINCT_ID_LENGTH = 200
MAX_SESSION_ID_LENGTH = 70
_MICROSECOND = timedelta(microseconds=1)
# Record(...) without the Python-level __new__ of a NamedTuple (a frame per event on the hot path).
_new_record = tuple.__new__
_HISTORICAL_HEADER = (("historical_migration", b"true"),)
_SESSION_ID = re.compile(r"^[A-Za-z0-9-]+$")
UPSTREAM_EVENT_TOPIC = "upstream-event"  # marks an upstream record (see the module doc); never a Kafka topic
SNAPSHOT_ITEMS_EVENT = "$snapshot_items"  # a replay record: all `$snapshot` events of one `/s/` request


@dataclass(slots=True, frozen=True)
class Topics:
    """Kafka topic per data type; defaults are PostHog's (newest capture)."""

    main: str = "events_plugin_ingestion"
    historical: str = "events_plugin_ingestion_historical"
    overflow: str = "events_plugin_ingestion_overflow"
    exceptions: str = "error_tracking_events"
    heatmaps: str = "heatmaps_ingestion"
    client_warnings: str = "ingestion-clientwarnings-main-1"
    replay: str = "session_recording_snapshot_item_events"


class RequestContext(NamedTuple):
    """What the HTTP layer knows about a request that shapes its records (a tuple: one per request)."""

    client_ip: str
    now: datetime
    user_agent: str = ""


@dataclass(slots=True, frozen=True)
class RecordOptions:
    topics: Topics = Topics()
    # Reroute main events older than this to the historical topic (PostHog's ENABLE_HISTORICAL_REROUTING).
    historical_rerouting_after: timedelta | None = None
    # Build upstream records (forward mode: the upstream sink is the only sink) instead of Kafka records.
    upstream: bool = False


def extract_distinct_id(event: RawEvent) -> str:
    """Root distinct_id, else properties.distinct_id; non-strings as JSON; NUL → U+FFFD; ≤ 200 chars."""
    value = event.get("distinct_id")
    if value is None:
        value = event["properties"].get("distinct_id")
    if value is None:
        raise MissingDistinctId("missing distinct_id")
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = text.replace("\0", "\ufffd")
    if not text:
        raise MissingDistinctId("missing distinct_id")
    return text[:MAX_DISTINCT_ID_LENGTH]


class _RequestFields(NamedTuple):
    """What every record of one request shares, formatted once per request instead of once per event."""

    token: str
    token_header: bytes
    now_text: str
    now_header: bytes
    sent_at_text: str | None
    now: int  # epoch microseconds
    sent_at: int | None

    @classmethod
    def of(cls, parsed: ParsedRequest, context: RequestContext) -> _RequestFields:
        now_text = format_now(context.now)
        sent_at = None if parsed.sent_at is None else epoch_micros(parsed.sent_at)
        return cls(
            parsed.token,
            parsed.token.encode(),
            now_text,
            now_text.encode(),
            None if sent_at is None else rfc3339_micros(sent_at),
            epoch_micros(context.now),
            sent_at,
        )


class RoutedEvent(NamedTuple):
    """What one event's record is made of, before it is encoded (`analytics_records`)."""

    event: RawEvent
    name: str
    distinct_id: str
    uuid: str
    ip: str
    timestamp: datetime
    topic: str
    cookieless: bool
    historical: bool


def analytics_records(parsed: ParsedRequest, context: RequestContext, options: RecordOptions) -> list[Record]:
    """One record per event; any invalid event fails the whole request, as capture does.

    The hot path of the gateway: one flat loop with the per-request values hoisted out of it, times
    as integer microseconds, and the Kafka record built inline.
    """
    shared = _RequestFields.of(parsed, context)
    topics = options.topics
    # Capture's data types: these names win over historical_migration.
    special_topics = {
        "$$client_ingestion_warning": topics.client_warnings,
        "$exception": topics.exceptions,
        "$$heatmap": topics.heatmaps,
    }
    historical_request = parsed.historical_migration
    default_topic = topics.historical if historical_request else topics.main
    rerouting_after = options.historical_rerouting_after
    rerouting = None if rerouting_after is None else rerouting_after // _MICROSECOND
    upstream = options.upstream
    token, client_ip = parsed.token, context.client_ip
    now, sent_at, now_text, sent_at_text = shared.now, shared.sent_at, shared.now_text, shared.sent_at_text
    # header pairs that repeat across the request's records, built once
    token_header, now_header = ("token", shared.token_header), ("now", shared.now_header)
    name_headers: dict[str, tuple[str, bytes]] = {}
    key_prefix = f"{token}:"
    key_prefix_bytes = key_prefix.encode()
    dumps = orjson.dumps
    records = []
    append = records.append
    for event in parsed.events:
        # `_checked`, inline, with a fast path for a plain string distinct_id (`extract_distinct_id`)
        name = event["event"]
        if not name:
            raise MissingEventName("missing event name")
        properties = event["properties"]
        distinct_id = event.get("distinct_id")
        if distinct_id is None:
            distinct_id = properties.get("distinct_id")
        if (
            type(distinct_id) is not str
            or not distinct_id
            or "\0" in distinct_id
            or len(distinct_id) > MAX_DISTINCT_ID_LENGTH
        ):
            distinct_id = extract_distinct_id(event)
        cookieless = properties.get("$cookieless_mode", False)
        if cookieless is not False and cookieless is not True:
            raise InvalidCookielessMode("$cookieless_mode must be a boolean")
        uuid = event["uuid"]
        if uuid is None:
            uuid = event["uuid"] = str(uuid_utils.uuid7())
        micros = event_micros(event, sent_at, now)
        topic = special_topics.get(name)
        historical = topic is None and historical_request
        if topic is None:
            topic = default_topic
            if not historical and rerouting is not None and now - micros > rerouting:
                topic, historical = topics.historical, True
        ip = "127.0.0.1" if "capture_internal" in properties else client_ip
        if upstream:
            append(_upstream_record(shared, distinct_id, ip, event, micros, historical))
            continue
        # The Kafka record (see `_record`, which this repeats for speed: keep the two in step).
        timestamp_text = rfc3339_micros(micros)
        if sent_at_text is None:
            value = {"uuid": uuid, "distinct_id": distinct_id, "ip": ip, "data": dumps(event).decode(),
                     "now": now_text, "token": token, "event": name, "timestamp": timestamp_text}
        else:
            value = {"uuid": uuid, "distinct_id": distinct_id, "ip": ip, "data": dumps(event).decode(),
                     "now": now_text, "sent_at": sent_at_text, "token": token, "event": name,
                     "timestamp": timestamp_text}
        if cookieless:
            value["is_cookieless_mode"] = True
        name_header = name_headers.get(name)
        if name_header is None:
            name_header = name_headers[name] = ("event", name.encode())
        distinct_id_bytes = distinct_id.encode()
        headers: tuple[tuple[str, bytes], ...] = (
            token_header, ("distinct_id", distinct_id_bytes), ("timestamp", str(micros // 1000).encode()),
            name_header, ("uuid", uuid.encode()), now_header,
        )
        if historical:
            value["historical_migration"] = True
            headers += _HISTORICAL_HEADER
        key = (key_prefix + ip).encode() if cookieless else key_prefix_bytes + distinct_id_bytes
        append(_new_record(Record, (topic, key, headers, dumps(value))))
    return records


def routed_events(parsed: ParsedRequest, context: RequestContext, options: RecordOptions) -> list[RoutedEvent]:
    """Each event with its topic, time, ip and flags: what `analytics_records` puts in its record (the
    embedded sink builds rows from these without encoding the records). Any invalid event fails the
    whole request. The routing is `analytics_records`' own, kept out of that hot loop (a tuple per
    event costs the gateway ~5 %); tests/sinkworker/test_spooled_rows.py checks the two agree.
    """
    topics = options.topics
    # Capture's data types: these names win over historical_migration.
    special_topics = {
        "$$client_ingestion_warning": topics.client_warnings,
        "$exception": topics.exceptions,
        "$$heatmap": topics.heatmaps,
    }
    historical_request = parsed.historical_migration
    default_topic = topics.historical if historical_request else topics.main
    rerouting_after = options.historical_rerouting_after
    sent_at, now, client_ip = parsed.sent_at, context.now, context.client_ip
    routes = []
    for event in parsed.events:
        name, properties, distinct_id, cookieless, uuid = _checked(event)
        timestamp = event_timestamp(event, sent_at, now)
        topic = special_topics.get(name)
        historical = topic is None and historical_request
        if topic is None:
            topic = default_topic
            if not historical and rerouting_after is not None and now - timestamp > rerouting_after:
                topic, historical = topics.historical, True
        ip = "127.0.0.1" if "capture_internal" in properties else client_ip
        routes.append(RoutedEvent(event, name, distinct_id, uuid, ip, timestamp, topic, cookieless, historical))
    return routes


def check_events(parsed: ParsedRequest) -> bool:
    """Refuse what `analytics_records` would refuse, and give every event its uuid, without building records.

    After this, `analytics_records` cannot fail on the request: the spool may then hold the request
    and leave building its records to the reader (gateway/capture/spooled.py). True when every event
    came with its uuid (none had to be given one).
    """
    sent = True
    for event in parsed.events:
        if event["uuid"] is None:
            sent = False
        _checked(event)
    return sent


def _checked(event: RawEvent) -> tuple[str, dict[str, Any], str, bool, str]:
    """An event's name, properties, distinct_id, cookieless flag and uuid (assigned when missing)."""
    name = event["event"]
    if not name:
        raise MissingEventName("missing event name")
    properties = event["properties"]
    distinct_id = event.get("distinct_id")
    if distinct_id is None:
        distinct_id = properties.get("distinct_id")
    if (
        type(distinct_id) is not str
        or not distinct_id
        or "\0" in distinct_id
        or len(distinct_id) > MAX_DISTINCT_ID_LENGTH
    ):
        distinct_id = extract_distinct_id(event)
    cookieless = properties.get("$cookieless_mode", False)
    if cookieless is not False and cookieless is not True:
        raise InvalidCookielessMode("$cookieless_mode must be a boolean")
    uuid = event["uuid"]
    if uuid is None:
        uuid = event["uuid"] = str(uuid_utils.uuid7())
    return name, properties, distinct_id, cookieless, uuid


def replay_record(parsed: ParsedRequest, context: RequestContext, options: RecordOptions) -> Record:
    """All `$snapshot` events of a request become one `$snapshot_items` record keyed by session id."""
    first = parsed.events[0]
    properties = first["properties"]
    session_id = properties.get("$session_id")
    if session_id is None:
        raise MissingSessionId("missing $session_id")
    if (
        not isinstance(session_id, str)
        or len(session_id) > MAX_SESSION_ID_LENGTH
        or not _SESSION_ID.match(session_id)
    ):
        raise InvalidSessionId("invalid $session_id")
    distinct_id = extract_distinct_id(first)
    items: list[Any] = []
    for event in parsed.events:
        snapshot = event["properties"].get("$snapshot_data")
        if isinstance(snapshot, list):
            items.extend(snapshot)
        elif isinstance(snapshot, dict):
            items.append(snapshot)
        else:
            raise MissingSnapshotData("missing $snapshot_data")
    lib = properties.get("$lib")
    if not isinstance(lib, str) or not lib:
        lib = context.user_agent.split("/")[0] if "posthog" in context.user_agent.lower() else "web"
    window_id = properties.get("$window_id") or session_id
    data = {
        "event": SNAPSHOT_ITEMS_EVENT,
        "properties": {
            "distinct_id": distinct_id,
            "$session_id": session_id,
            "$window_id": window_id,
            "$snapshot_source": properties.get("$snapshot_source") or "web",
            "$snapshot_items": items,
            "$lib": lib,
        },
    }
    shared = _RequestFields.of(parsed, context)
    timestamp = event_micros(first, shared.sent_at, shared.now)
    uuid = first["uuid"] or str(uuid_utils.uuid7())
    return _record(options.topics.replay, session_id, uuid, distinct_id, context.client_ip, data,
                   shared, SNAPSHOT_ITEMS_EVENT, timestamp, False, False)


def _record(
    topic: str,
    key: str,
    uuid: str,
    distinct_id: str,
    ip: str,
    data: dict[str, Any],
    shared: _RequestFields,
    name: str,
    timestamp: int,
    cookieless: bool,
    historical: bool,
) -> Record:
    timestamp_text, timestamp_ms = rfc3339_micros(timestamp), timestamp // 1000
    value: dict[str, Any] = {
        "uuid": uuid,
        "distinct_id": distinct_id,
        "ip": ip,
        "data": orjson.dumps(data).decode(),
        "now": shared.now_text,
    }
    if shared.sent_at_text is not None:
        value["sent_at"] = shared.sent_at_text
    value["token"] = shared.token
    value["event"] = name
    value["timestamp"] = timestamp_text
    if cookieless:
        value["is_cookieless_mode"] = True
    headers: tuple[tuple[str, bytes], ...] = (
        ("token", shared.token_header),
        ("distinct_id", distinct_id.encode()),
        ("timestamp", str(timestamp_ms).encode()),
        ("event", name.encode()),
        ("uuid", uuid.encode()),
        ("now", shared.now_header),
    )
    if historical:
        value["historical_migration"] = True
        headers += _HISTORICAL_HEADER
    return Record(topic, key.encode(), headers, orjson.dumps(value))


def _upstream_record(
    shared: _RequestFields, distinct_id: str, ip: str, event: RawEvent, timestamp: int, historical: bool
) -> Record:
    """The event with `timestamp` = the time computed at receipt and no `offset`, so that the upstream
    takes it as is (an event replayed from the spool an hour late is not an hour late). The headers
    are what the upstream sink groups batches by, and what a GDPR purge of its spool matches on.
    Changes `event` in place: nothing reads a request's events after its records are built."""
    event["timestamp"] = rfc3339_micros(timestamp)
    event.pop("offset", None)
    headers: tuple[tuple[str, bytes], ...] = (
        ("token", shared.token_header),
        ("distinct_id", distinct_id.encode()),
        ("ip", ip.encode()),
    )
    if historical:
        headers += _HISTORICAL_HEADER
    return Record(UPSTREAM_EVENT_TOPIC, None, headers, orjson.dumps(event))
