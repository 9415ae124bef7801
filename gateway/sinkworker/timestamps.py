"""PostHog's event-timestamp rules (capture `timestamp.rs`), for messages that lack the computed one.

Also formats datetimes the way ClickHouse's JSONEachRow input expects them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(hours=23)
MIN_YEAR, MAX_YEAR = 1970, 2105
_SHORT_OFFSET = re.compile(r"(:\d\d(?:\.\d+)?[+-]\d\d)$")  # a time ending in "+HH"


def parse_timestamp(value: Any) -> datetime | None:
    """Parse a client timestamp leniently (RFC3339, RFC2822, epoch s/ms, naive = UTC); None if unparseable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _from_epoch(float(value))
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.isdigit():
        return _from_epoch(float(text))
    if text[-3:-2] in ("+", "-"):
        text = _SHORT_OFFSET.sub(r"\1:00", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _from_epoch(number: float) -> datetime | None:
    """Epoch seconds, or milliseconds when the number is too large to be seconds."""
    seconds = number / 1000 if number >= 1e11 else number
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def compute_timestamp(data: dict[str, Any], now: datetime, sent_at: datetime | None) -> datetime:
    """The event time capture would compute: skew-corrected timestamp, or `now - offset`, clamped."""
    properties = data.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    result = now
    try:
        timestamp = parse_timestamp(data.get("timestamp"))
        if timestamp is not None:
            if sent_at is not None and properties.get("$ignore_sent_at") is not True:
                result = now + (timestamp - sent_at)
            else:
                result = timestamp
        offset = data.get("offset")
        if isinstance(offset, int) and not isinstance(offset, bool):
            result = now - timedelta(milliseconds=offset)
        skew = data.get("$clock_skew", properties.get("$clock_skew"))
        if isinstance(skew, int | float) and not isinstance(skew, bool):
            result += timedelta(milliseconds=skew)
    except OverflowError:
        return EPOCH
    if result - now > MAX_FUTURE:
        return now
    return result


def format_clickhouse(moment: datetime, subsecond: bool) -> str:
    """`YYYY-MM-DD HH:MM:SS[.ffffff]` in UTC; legacy servers (no DateTime64) get whole seconds.

    Years outside 1970..2105 (what both DateTime and DateTime64 hold) become the Unix epoch.
    """
    moment = moment.astimezone(UTC)
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        moment = EPOCH
    text = moment.isoformat(" ", "microseconds")
    return text[:26] if subsecond else text[:19]
