"""A capture request as the embedded spool holds it: the validated events plus what shapes their records.

One spool frame per request instead of one per event; whoever reads the spool gets the records from
`request_records`, which runs `analytics_records` on the same inputs the request had, so they are
byte for byte the records the gateway would have built (and sent to Kafka) when it answered.

    content = u32 context length | context (JSON object) | events (JSON array)

The context holds the token, client ip, `now`, `sent_at`, the historical flag and the record options
that differ from the defaults (topics, historical rerouting), as they were when the request came in.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from datetime import datetime, timedelta
from typing import Any

import orjson

from gateway.capture.events import RecordOptions, RequestContext, Topics, analytics_records
from gateway.capture.parse import ParsedRequest
from gateway.core.record import Record

_CONTEXT_LENGTH = struct.Struct("<I")
_MICROSECOND = timedelta(microseconds=1)
_DEFAULT_TOPICS = Topics()


def request_content(parsed: ParsedRequest, context: RequestContext, options: RecordOptions) -> bytes:
    """The spool content of a request that passed `check_events` (so building its records cannot fail).

    Raises orjson.JSONEncodeError when the events cannot be written as one array (nesting at the
    limit): the caller then builds the records at once instead.
    """
    sent_at = parsed.sent_at
    head = orjson.dumps({
        "token": parsed.token,
        "ip": context.client_ip,
        "now": context.now.isoformat(),
        "sent_at": None if sent_at is None else sent_at.isoformat(),
        "historical": parsed.historical_migration,
        **_option_fields(options),
    })
    return _CONTEXT_LENGTH.pack(len(head)) + head + orjson.dumps(parsed.events)


def request_records(content: bytes | memoryview) -> list[Record]:
    """The records of a request stored by `request_content` (ValueError if `content` is malformed)."""
    return analytics_records(*request_inputs(content))


def request_inputs(content: bytes | memoryview) -> tuple[ParsedRequest, RequestContext, RecordOptions]:
    """What `analytics_records` takes to build the records of a stored request (ValueError if malformed)."""
    try:
        head, events_json = request_parts(content)
        events = orjson.loads(events_json)
        sent_at = head["sent_at"]
        parsed = ParsedRequest(
            events, head["token"], None if sent_at is None else datetime.fromisoformat(sent_at), head["historical"]
        )
        context = RequestContext(head["ip"], datetime.fromisoformat(head["now"]))
        options = request_options(head)
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed spooled request: {exc!r}") from exc
    return parsed, context, options


def request_parts(content: bytes | memoryview) -> tuple[dict[str, Any], memoryview]:
    """The context of a stored request (a dict) and its events' JSON array, not parsed (`request_options`
    reads the options from the context); struct.error or orjson.JSONDecodeError if malformed."""
    (length,) = _CONTEXT_LENGTH.unpack_from(content)
    view = memoryview(content)
    events = _CONTEXT_LENGTH.size + length
    return orjson.loads(view[_CONTEXT_LENGTH.size : events]), view[events:]


def request_options(head: dict[str, Any]) -> RecordOptions:
    """The record options of a stored request, from its context (`request_parts`)."""
    return _options(head.get("topics"), head.get("rerouting_us"))


@functools.lru_cache(maxsize=16)
def _option_fields(options: RecordOptions) -> dict[str, Any]:
    """What of `options` differs from the defaults, as context fields (computed once per options)."""
    fields: dict[str, Any] = {}
    topics = {
        field.name: getattr(options.topics, field.name)
        for field in dataclasses.fields(Topics)
        if getattr(options.topics, field.name) != getattr(_DEFAULT_TOPICS, field.name)
    }
    if topics:
        fields["topics"] = topics
    if options.historical_rerouting_after is not None:
        fields["rerouting_us"] = options.historical_rerouting_after // _MICROSECOND
    return fields


def _options(topics: dict[str, str] | None, rerouting_us: int | None) -> RecordOptions:
    return RecordOptions(
        Topics(**topics) if topics else _DEFAULT_TOPICS,
        None if rerouting_us is None else timedelta(microseconds=rerouting_us),
    )
