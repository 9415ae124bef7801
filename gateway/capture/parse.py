"""JSON payload → validated raw events plus the request's token, sent_at and historical flag.

Mirrors capture-rs `RawRequest` (array | batch | single | engage) and `RawEvent` field rules, so a
request PostHog would reject is rejected here with the same error code.
"""

from __future__ import annotations

import itertools
import re
import uuid as uuid_lib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from gateway.capture.errors import (
    EmptyBatch,
    InvalidToken,
    MultipleTokens,
    NoToken,
    RequestHydrationError,
    RequestParsingError,
)
from gateway.capture.timestamps import parse_timestamp

PERFORMANCE_EVENT = "$performance_event"
# SDKs send lowercase hyphenated uuids; only other spellings need a parse to normalise them.
_CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
MAX_TOKEN_LENGTH = 64

RawEvent = dict[str, Any]
"""An event as PostHog re-serializes it into `data`: only the known fields, in capture's order."""

_CAPTURE_ORDER = ("token", "distinct_id", "uuid", "event", "properties", "timestamp", "offset", "$set", "$set_once")
_REQUIRED = frozenset({"uuid", "event", "properties"})
# The exact type a field must have for the event to be kept as it is (uuid and distinct_id aside).
_KINDS = {"token": str, "event": str, "properties": dict, "timestamp": str, "offset": int, "$set": dict,
          "$set_once": dict}
# Every key sequence an event may arrive with to be kept as it is (2^6 of them) → its fields' types.
_CAPTURE_SHAPES = {
    shape: tuple((key, _KINDS[key]) for key in shape if key in _KINDS)
    for size in range(len(_REQUIRED), len(_CAPTURE_ORDER) + 1)
    for shape in itertools.combinations(_CAPTURE_ORDER, size)
    if _REQUIRED.issubset(shape)
}
_ABSENT = object()


@dataclass(slots=True)
class ParsedRequest:
    events: list[RawEvent]
    token: str
    sent_at: datetime | None
    historical_migration: bool


def parse_request(payload: bytes, *, engage: bool, query_sent_at: datetime | None) -> ParsedRequest | None:
    """Validate a decoded payload. Returns None when only `$performance_event`s were sent (answered 200)."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise RequestParsingError(f"failed to parse request: {exc}") from exc

    batch_token: str | None = None
    historical = False
    body_sent_at: datetime | None = None
    if isinstance(document, list):
        items = document
    elif isinstance(document, dict) and "batch" in document and _first(document, "token", "api_key"):
        batch_token = _optional_str(document, "token", "api_key")
        historical = _optional_bool(document, "historical_migration")
        sent_at_text = _optional_str(document, "sent_at")
        body_sent_at = parse_timestamp(sent_at_text) if sent_at_text else None
        items = document["batch"]
        if not isinstance(items, list):
            raise RequestParsingError("failed to parse request: batch must be an array")
    elif isinstance(document, dict):
        if "event" not in document and not engage:
            raise RequestHydrationError("non-engage request missing event name attribute")
        items = [document]
    else:
        raise RequestParsingError("failed to parse request: expected an object or an array of events")

    events = [normalize_event(item, engage) for item in items]
    if not events:
        raise EmptyBatch("empty batch")
    events = [e for e in events if e["event"] != PERFORMANCE_EVENT]
    if not events:
        return None

    token = batch_token if batch_token is not None else _token_of_events(events)
    validate_token(token)
    return ParsedRequest(events, token, body_sent_at or query_sent_at, historical)


def normalize_event(item: object, engage: bool) -> RawEvent:
    """Type-check one event like serde would, keeping only the fields capture forwards.

    An event already in capture's shape (posthog-js sends `uuid, event, properties, timestamp`) is
    returned as it is: the copy would be equal, key order included.
    """
    if type(item) is dict:
        kinds = _CAPTURE_SHAPES.get(tuple(item))
        if kinds is not None and _in_capture_shape(item, kinds):
            return item
    return _normalized_copy(item, engage)


def _in_capture_shape(item: RawEvent, kinds: tuple[tuple[str, type], ...]) -> bool:
    """The keys are a subsequence of capture's; are the values what `_normalized_copy` keeps unchanged?"""
    uuid = item["uuid"]
    if type(uuid) is not str or not _CANONICAL_UUID.match(uuid):
        return False
    for key, kind in kinds:
        if type(item[key]) is not kind:
            return False
    return item.get("distinct_id", _ABSENT) is not None


def _normalized_copy(item: object, engage: bool) -> RawEvent:
    """The event with capture's fields only, in capture's order (SDKs such as posthog-node send more)."""
    if not isinstance(item, dict):
        raise RequestParsingError("failed to parse request: event must be an object")
    get = item.get
    event: RawEvent = {}
    token = get("token")
    if token is None:
        token = get("$token")
        if token is None:
            token = get("api_key")
    if token is not None:
        if not isinstance(token, str):
            raise RequestParsingError("failed to parse request: token must be a string")
        event["token"] = token
    distinct_id = get("distinct_id")
    if distinct_id is None:
        distinct_id = get("$distinct_id")
    if distinct_id is not None:
        event["distinct_id"] = distinct_id
    uuid = get("uuid")
    event["uuid"] = uuid if type(uuid) is str and _CANONICAL_UUID.match(uuid) else _optional_uuid(uuid)

    name = get("event")
    if name is None and engage and "event" not in item:
        name = "$identify"
    if not isinstance(name, str):
        raise RequestParsingError("failed to parse request: event name must be a string")
    event["event"] = name

    properties = get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        raise RequestParsingError("failed to parse request: properties must be an object")
    event["properties"] = properties

    timestamp = get("timestamp")
    if timestamp is not None:
        if not isinstance(timestamp, str):
            raise RequestParsingError("failed to parse request: timestamp must be a string")
        event["timestamp"] = timestamp
    offset = get("offset")
    if offset is not None:
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise RequestParsingError("failed to parse request: offset must be an integer")
        event["offset"] = offset
    for key in ("$set", "$set_once"):
        value = get(key)
        if value is not None:
            if not isinstance(value, dict):
                raise RequestParsingError(f"failed to parse request: {key} must be an object")
            event[key] = value
    return event


def validate_token(token: str) -> None:
    """capture-rs token shape rules: non-empty, ≤ 64 ASCII chars, no NUL, not a personal API key."""
    if not token:
        raise NoToken("API key is required")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii() or "\0" in token or token.startswith("phx_"):
        raise InvalidToken("API key is not valid")


def _token_of_events(events: list[RawEvent]) -> str:
    tokens = set()
    for event in events:
        token = event.get("token")
        if token is None:
            token = event["properties"].get("token")
        if isinstance(token, str):
            tokens.add(token)
    if not tokens:
        raise NoToken("API key is required")
    if len(tokens) > 1:
        raise MultipleTokens("a request may carry only one API key")
    return tokens.pop()


def _first(item: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = item.get(key)
        if value is not None:
            return value
    return None


def _optional_str(item: dict[str, Any], *keys: str) -> str | None:
    value = _first(item, *keys)
    if value is not None and not isinstance(value, str):
        raise RequestParsingError(f"failed to parse request: {keys[0]} must be a string")
    return value


def _optional_bool(item: dict[str, Any], key: str) -> bool:
    value = item.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestParsingError(f"failed to parse request: {key} must be a boolean")
    return value


def _optional_uuid(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestParsingError("failed to parse request: uuid must be a string")
    if _CANONICAL_UUID.match(value):
        return value
    try:
        return str(uuid_lib.UUID(value))
    except ValueError as exc:
        raise RequestParsingError(f"failed to parse request: invalid uuid {value[:64]!r}") from exc
