"""Turn one captured Kafka message (PostHog's CapturedEvent JSON) into one events-table row.

The row is a JSONEachRow line. Messages that cannot become a row raise `Rejected` with a reason
from `REJECT_REASONS`; the worker sends them to the dead-letter queue. `gateway check`'s event is no
row at all (None): the gateway never writes it, and if one arrives anyway it is dropped here.
Messages that are not for the events table raise `Elsewhere`: those of topics outside the encoder's
`topics` (a spool holds every topic the gateway writes, where a Kafka consumer subscribes to its own:
heatmaps and client ingestion warnings have tables of their own in PostHog), and session recordings
(`$snapshot_items`), which `gateway recordings sink` reads under its own cursor.
"""

from __future__ import annotations

import logging
import re
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.capture.check_event import CHECK_EVENT
from gateway.capture.events import SNAPSHOT_ITEMS_EVENT
from gateway.capture.timestamps import EPOCH, event_timestamp, parse_timestamp
from gateway.sinkworker.spooled import SpooledEvent
from gateway.sinkworker.teams import TeamResolver, UnknownToken
from gateway.sinkworker.timestamps import format_clickhouse

if TYPE_CHECKING:
    from gateway.sinkworker.frames import SpooledFrame

REJECT_REASONS = (
    "invalid_json",
    "invalid_data",
    "invalid_uuid",
    "missing_event",
    "missing_distinct_id",
    "missing_token",
    "unknown_token",
    "rejected_by_clickhouse",
)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# RowBinary rows: the fixed-width columns first (one struct), then the length-prefixed strings.
ROWBINARY_COLUMNS = (
    "uuid", "timestamp", "created_at", "team_id", "_offset", "_partition", "_timestamp", "person_mode",
    "historical_migration", "event", "properties", "distinct_id", "elements_chain", "token", "_topic",
)  # fmt: skip
_HEAD_MICROS = struct.Struct("<16sqqqQQIbB")  # DateTime64(6): Int64 microseconds
_HEAD_SECONDS = struct.Struct("<16sIIqQQIbB")  # DateTime: UInt32 seconds
_MICROSECOND, _SECOND = timedelta(microseconds=1), timedelta(seconds=1)
_MAX_INSTANT = datetime(2106, 1, 1, tzinfo=UTC) - EPOCH  # DateTime and DateTime64 both hold 1970..2105
TIME_UNITS = {  # subsecond: (tick, ticks before 2106, head)
    True: (_MICROSECOND, _MAX_INSTANT // _MICROSECOND, _HEAD_MICROS),
    False: (_SECOND, _MAX_INSTANT // _SECOND, _HEAD_SECONDS),
}


class SourceMessage(Protocol):
    """What a source yields: aiokafka's ConsumerRecord has exactly these attributes."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class Elsewhere(Exception):
    """A message that is not for the events table: another topic's, or a session recording's."""


class Rejected(Exception):
    """A message that cannot become a row; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class IpMode(StrEnum):
    """How the message's client `ip` reaches the `$ip` property."""

    SET = "set"  # always overwrite $ip with the capture-time client ip
    IF_MISSING = "if-missing"  # keep a $ip the SDK sent (server-side SDKs), else set it
    DROP = "drop"  # remove $ip entirely (anonymised IPs)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RowEncoder:
    """Encodes messages into JSONEachRow lines for the events table."""

    teams: TeamResolver
    ip_mode: IpMode = IpMode.SET
    subsecond: bool = True  # False on servers without DateTime64
    topics: frozenset[str] | None = None  # the topics whose messages become rows; None: every topic
    _skipped_topics: set[str] = field(default_factory=set, init=False, repr=False)

    def encode(self, message: SourceMessage) -> bytes | None:
        """One newline-terminated JSONEachRow line (the readable reference form), None for the check
        event, or raise Rejected."""
        self._check_topic(message)
        fields = self._fields(message)
        if fields is None:
            return None
        (row_uuid, event, properties, timestamp, team_id, distinct_id, elements_chain, now, token,
         propertyless, historical) = fields  # fmt: skip
        row = {
            "uuid": row_uuid,
            "event": event,
            "properties": properties.decode(),
            "timestamp": format_clickhouse(timestamp, self.subsecond),
            "team_id": team_id,
            "distinct_id": distinct_id,
            "elements_chain": elements_chain,
            "created_at": format_clickhouse(now, self.subsecond),
            "token": token,
            "person_mode": "propertyless" if propertyless else "full",
            "historical_migration": 1 if historical else 0,
            "_timestamp": message.timestamp // 1000,
            "_offset": message.offset,
            "_partition": message.partition,
            "_topic": message.topic,
        }
        # A compact copy: orjson's result keeps its growth buffer (~8 KB for a 900 B row here), and a
        # batch holds 100k rows (780 MB RSS instead of 90 MB).
        return bytes(memoryview(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)))

    def encode_binary(self, message: SourceMessage) -> bytes | None:
        """The same row in ClickHouse's RowBinary for the columns ROWBINARY_COLUMNS, None for the check
        event, or raise Rejected.

        What the sink inserts: no JSON escaping of `properties`, no datetime formatting, and
        ClickHouse parses it at a fraction of JSONEachRow's cost. An event of a spooled request is
        built from the event (`_event_row`), messages of the newest capture format take a lean path
        (`_lean_row`); any other shape takes the reference path (`_fields`).
        """
        self._check_topic(message)
        row = self._event_row(message) if type(message) is SpooledEvent else None
        if row is None:
            row = self._lean_row(message)
        if row is not None:
            return row
        fields = self._fields(message)
        if fields is None:
            return None
        (row_uuid, event, properties, timestamp, team_id, distinct_id, elements_chain, now, token,
         propertyless, historical) = fields  # fmt: skip
        return self._pack(message, bytes.fromhex(row_uuid.replace("-", "")), event, properties, timestamp,
                          team_id, distinct_id.encode(), elements_chain.encode(), now, token, propertyless,
                          historical)  # fmt: skip

    def frame_rows(self, frame: SpooledFrame) -> list[bytes] | None:
        """The rows of a spooled request read whole (gateway/sinkworker/frames.py), or None."""
        return frame.rows(self)

    def _check_topic(self, message: SourceMessage) -> None:
        if self.topics is not None and message.topic not in self.topics:
            if message.topic not in self._skipped_topics:  # say it once: a custom topic name may be missing
                self._skipped_topics.add(message.topic)
                log.info("records of topic %r are skipped (not in --topics %s); counted in "
                         "gateway_sink_messages_skipped_total", message.topic, ",".join(sorted(self.topics)))
            raise Elsewhere(message.topic)

    def _lean_row(self, message: SourceMessage) -> bytes | None:
        """The RowBinary row of a message in the newest capture format (every envelope field a non-empty
        string, computed timestamps, no top-level `$set`/`$set_once`), or None: the message takes the
        reference path `_fields`, which gives the same row or the Rejected reason."""
        try:
            envelope = orjson.loads(message.value)  # type: ignore[arg-type]
            event, distinct_id, token = envelope["event"], envelope["distinct_id"], envelope["token"]
            if event == SNAPSHOT_ITEMS_EVENT:
                raise Elsewhere(event)
            digits = envelope["uuid"].replace("-", "")
            raw_uuid = bytes.fromhex(digits)
            timestamp = datetime.fromisoformat(envelope["timestamp"])
            now = datetime.fromisoformat(envelope["now"])
            data = orjson.loads(envelope["data"])
        except (ValueError, TypeError, KeyError, AttributeError):  # orjson.JSONDecodeError is a ValueError
            return None
        if not (type(event) is str and event and type(distinct_id) is str and distinct_id
                and type(token) is str and token) or event == CHECK_EVENT:  # fmt: skip
            return None
        if len(digits) != 32 or len(raw_uuid) != 16:  # then uuid.UUID() reads the same 16 bytes
            return None  # (fromhex skips spaces between digit pairs)
        if type(data) is not dict or "$set" in data or "$set_once" in data:
            return None
        try:
            team_id = self.teams.team_id(token)
        except UnknownToken:
            return None
        properties = data.get("properties")
        if type(properties) is not dict:
            return None
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return self._pack_properties(message, raw_uuid, event, properties, envelope.get("ip"), timestamp, team_id,
                                     distinct_id, now, token, envelope.get("historical_migration") is True)

    def _event_row(self, message: SpooledEvent) -> bytes | None:
        """What `_lean_row` makes of a spooled event's record, built from the event and its request
        without encoding the record (gateway/sinkworker/spooled.py), or None where `_lean_row` might
        decline: then the record itself is built and encoded."""
        route, request = message.route, message.request
        event, name, distinct_id, token = route.event, route.name, route.distinct_id, request.token
        if name == SNAPSHOT_ITEMS_EVENT:
            raise Elsewhere(name)
        if not (type(name) is str and name and type(distinct_id) is str and distinct_id
                and type(token) is str and token) or name == CHECK_EVENT:  # fmt: skip
            return None
        uuid_text, timestamp = route.uuid, route.timestamp
        if type(uuid_text) is not str or timestamp.tzinfo is not UTC:  # UTC: the record's text reads back equal
            return None
        digits = uuid_text.replace("-", "")
        try:
            raw_uuid = bytes.fromhex(digits)
        except ValueError:
            return None
        if len(digits) != 32 or len(raw_uuid) != 16 or "$set" in event or "$set_once" in event:
            return None
        properties = event.get("properties")
        if type(properties) is not dict:
            return None
        try:
            team_id = self.teams.team_id(token)
        except UnknownToken:
            return None
        properties = properties.copy()  # encoding leaves the message as it was (it may be encoded again)
        return self._pack_properties(message, raw_uuid, name, properties, route.ip, timestamp, team_id, distinct_id,
                                     request.now, token, bool(route.historical))

    def _pack_properties(self, message: SourceMessage, raw_uuid: bytes, event: str, properties: dict[str, Any],
                         ip: Any, timestamp: datetime, team_id: int, distinct_id: str, now: datetime, token: str,
                         historical: bool) -> bytes:  # fmt: skip
        """`_pack` of an event whose `properties` (changed in place) still hold `$elements_chain`, and
        whose `$ip` follows the ip mode."""
        chain = properties.pop("$elements_chain", "")
        if self.ip_mode is IpMode.DROP:
            properties.pop("$ip", None)
        elif type(ip) is str and ip and (self.ip_mode is IpMode.SET or "$ip" not in properties):
            properties["$ip"] = ip
        return self._pack(
            message,
            raw_uuid,
            event,
            orjson.dumps(properties),
            timestamp,
            team_id,
            distinct_id.encode(),
            chain.encode() if type(chain) is str else b"",
            now,
            token,
            properties.get("$process_person_profile") is False,
            historical,
        )

    def _pack(
        self,
        message: SourceMessage,
        raw_uuid: bytes,
        event: str,
        properties: bytes,
        timestamp: datetime,
        team_id: int,
        identity: bytes,
        chain: bytes,
        now: datetime,
        token: str,
        propertyless: bool,
        historical: bool,
    ) -> bytes:
        """One RowBinary row: the fixed-width columns by one struct, then the length-prefixed strings."""
        tick, limit, head = TIME_UNITS[self.subsecond]
        moment = (timestamp - EPOCH) // tick
        created = (now - EPOCH) // tick
        try:
            packed = head.pack(
                raw_uuid[7::-1] + raw_uuid[15:7:-1],  # ClickHouse's UUID: two little-endian 64-bit halves
                moment if 0 <= moment < limit else 0,  # years outside 1970..2105 become the epoch
                created if 0 <= created < limit else 0,
                team_id,
                message.offset,
                message.partition,
                message.timestamp // 1000,
                propertyless,
                historical,
            )
        except struct.error as error:  # a team id or message timestamp outside its column's range
            raise Rejected("invalid_data", str(error)) from None
        size = len(properties)
        return b"".join(
            (
                packed,
                rowbinary_string(event),
                _LENGTHS[size] if size < 16384 else _varint(size),
                properties,
                rowbinary_length(len(identity)),
                identity,
                rowbinary_length(len(chain)),
                chain,
                rowbinary_string(token),
                rowbinary_string(message.topic),
            )
        )

    def _fields(
        self, message: SourceMessage
    ) -> tuple[str, str, bytes, datetime, int, str, str, datetime, str, bool, bool] | None:
        """None for the check event, else the row's values, validated: uuid, event, properties JSON,
        timestamp, team_id, distinct_id, elements_chain, created_at, token, propertyless,
        historical_migration."""
        envelope = _load_object(message.value, "invalid_json")
        raw = envelope.get("data")
        data = raw if isinstance(raw, dict) else _load_object(raw, "invalid_data")
        row_uuid = _uuid(envelope.get("uuid") or data.get("uuid"))
        event = envelope.get("event") or data.get("event")
        if not isinstance(event, str) or not event:
            raise Rejected("missing_event")
        if event == CHECK_EVENT:
            return None
        if event == SNAPSHOT_ITEMS_EVENT:
            raise Elsewhere(event)
        distinct_id = envelope.get("distinct_id")
        if distinct_id is None or distinct_id == "":
            raise Rejected("missing_distinct_id")
        properties = data.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        token = envelope.get("token") or data.get("token") or properties.get("token")
        if not isinstance(token, str) or not token:
            raise Rejected("missing_token")
        try:
            team_id = self.teams.team_id(token)
        except UnknownToken:
            raise Rejected("unknown_token", token) from None

        now = _instant(envelope.get("now")) or datetime.fromtimestamp(message.timestamp / 1000, UTC)
        timestamp = _instant(envelope.get("timestamp"))
        if timestamp is None:  # older producers (Django, early capture-rs) did not send the computed time
            timestamp = event_timestamp(data, _instant(envelope.get("sent_at")), now)

        for key in ("$set", "$set_once"):
            if isinstance(data.get(key), dict):
                merged = properties.get(key)
                properties[key] = {**merged, **data[key]} if isinstance(merged, dict) else data[key]
        elements_chain = properties.pop("$elements_chain", "")
        self._apply_ip(properties, envelope.get("ip"))
        return (
            row_uuid,
            event,
            orjson.dumps(properties),
            timestamp,
            team_id,
            distinct_id if isinstance(distinct_id, str) else _text(distinct_id),
            elements_chain if isinstance(elements_chain, str) else "",
            now,
            token,
            properties.get("$process_person_profile") is False,
            envelope.get("historical_migration") is True,
        )

    def _apply_ip(self, properties: dict[str, Any], ip: Any) -> None:
        if self.ip_mode is IpMode.DROP:
            properties.pop("$ip", None)
        elif isinstance(ip, str) and ip and (self.ip_mode is IpMode.SET or "$ip" not in properties):
            properties["$ip"] = ip


def _load_object(raw: Any, reason: str) -> dict[str, Any]:
    """Parse JSON text that must hold an object."""
    if not isinstance(raw, bytes | str):
        raise Rejected(reason, "not JSON text")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejected(reason, str(exc)) from None
    if not isinstance(value, dict):
        raise Rejected(reason, "not a JSON object")
    return value


def _varint(number: int) -> bytes:
    """LEB128, RowBinary's string length prefix."""
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_LENGTHS = [_varint(n) for n in range(1 << 14)]  # every one- and two-byte prefix, precomputed
_PREFIXED: dict[str, bytes] = {}  # event names, tokens and topics repeat: cache their encoded form
_PREFIXED_LIMIT, _PREFIXED_MAX_TEXT = 10_000, 200


def rowbinary_length(number: int) -> bytes:
    return _LENGTHS[number] if number < 16384 else _varint(number)


def rowbinary_string(text: str) -> bytes:
    """A RowBinary String: length prefix and UTF-8 bytes."""
    encoded = _PREFIXED.get(text)
    if encoded is None:
        raw = text.encode()
        encoded = rowbinary_length(len(raw)) + raw
        if len(text) <= _PREFIXED_MAX_TEXT:
            if len(_PREFIXED) >= _PREFIXED_LIMIT:
                _PREFIXED.clear()
            _PREFIXED[text] = encoded
    return encoded


def _text(value: Any) -> str:
    """Non-string JSON values serialized, as capture does for distinct_id."""
    return orjson.dumps(value).decode()


def _uuid(value: Any) -> str:
    """Canonical UUID text, or Rejected."""
    if not isinstance(value, str):
        raise Rejected("invalid_uuid", "missing")
    if _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Rejected("invalid_uuid", value[:64]) from None


def _instant(value: object) -> datetime | None:
    return parse_timestamp(value) if isinstance(value, str) else None
