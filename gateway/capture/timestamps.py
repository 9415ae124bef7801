"""Event timestamp rules of PostHog capture (common_types::timestamp) and the formats it writes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(hours=23)
_MIN_SENT_AT_YEAR = 2021


def parse_timestamp(value: str) -> datetime | None:
    """RFC 3339 / ISO 8601 (naive = UTC), RFC 2822, or a numeric epoch in seconds or milliseconds."""
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = _parse_other(value)
        if parsed is None:
            return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 lies before year 1 in UTC: unusable, as above
        return None


def _parse_other(value: str) -> datetime | None:
    try:
        number = float(value)
    except ValueError:
        try:
            return parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    seconds = number / 1000 if abs(number) >= 1e11 else number
    try:
        return EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        return None


def sent_at_from_query(value: str | None) -> datetime | None:
    """The `_` query parameter: integer milliseconds, ignored unless it lands after 2020."""
    if not value or not value.isdigit():
        return None
    try:
        parsed = EPOCH + timedelta(milliseconds=int(value))
    except OverflowError:
        return None
    return parsed if parsed.year >= _MIN_SENT_AT_YEAR else None


def event_timestamp(event: Mapping[str, Any], sent_at: datetime | None, now: datetime) -> datetime:
    """`compute_timestamp` with its inputs read from a raw event (fields of the wrong type are ignored)."""
    properties = event.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    timestamp = event.get("timestamp")
    offset = event.get("offset")
    skew = event.get("$clock_skew", properties.get("$clock_skew"))
    return compute_timestamp(
        timestamp if isinstance(timestamp, str) else None,
        offset if isinstance(offset, int) and not isinstance(offset, bool) else None,
        sent_at,
        properties.get("$ignore_sent_at") is True,
        now,
        skew if isinstance(skew, int | float) and not isinstance(skew, bool) else None,
    )


def compute_timestamp(
    timestamp: str | None,
    offset: int | None,
    sent_at: datetime | None,
    ignore_sent_at: bool,
    now: datetime,
    clock_skew_ms: float | None = None,
) -> datetime:
    """The event time PostHog derives: clock-skew corrected by sent_at, or now - offset, plus an
    explicit `$clock_skew`, clamped to at most 23 h in the future."""
    result = now
    if timestamp is not None:
        parsed = parse_timestamp(timestamp)
        if parsed is not None and sent_at is not None and not ignore_sent_at:
            try:
                result = now + (parsed - sent_at)
            except OverflowError:  # outside datetime's years 1..9999: PostHog falls back to the epoch
                result = EPOCH
        elif parsed is not None:
            result = parsed
    try:
        if offset is not None:
            result = now - timedelta(milliseconds=offset)
        if clock_skew_ms is not None:
            result += timedelta(milliseconds=clock_skew_ms)
    except OverflowError:
        result = EPOCH
    if result - now > MAX_FUTURE:
        return now
    return result


def format_rfc3339(value: datetime) -> str:
    """chrono's `to_rfc3339_opts(AutoSi, true)`: 'Z', and 0, 3 or 6 fractional digits as needed."""
    return rfc3339_and_millis(value)[0]


def rfc3339_and_millis(value: datetime) -> tuple[str, int]:
    """`format_rfc3339` and `epoch_millis` of one UTC value from one subtraction (hot path: once per event)."""
    if value.tzinfo is not UTC:
        micros = value.microsecond
        spec = "seconds" if micros == 0 else "milliseconds" if micros % 1000 == 0 else "microseconds"
        return value.isoformat(timespec=spec).removesuffix("+00:00") + "Z", epoch_millis(value)
    delta = value - EPOCH  # exact integer arithmetic; float timestamps can land a millisecond early
    seconds = delta.days * 86_400 + delta.seconds
    micros = delta.microseconds
    prefix = _second_text(seconds, value)
    if micros == 0:
        text = prefix + "Z"
    elif micros % 1000 == 0:
        text = f"{prefix}.{micros // 1000:03d}Z"
    else:
        text = f"{prefix}.{micros:06d}Z"
    return text, seconds * 1000 + micros // 1000


def format_now(value: datetime) -> str:
    """The `now` field as PostHog's Django capture wrote it (isoformat, microseconds, +00:00)."""
    if value.tzinfo is not UTC:
        return value.isoformat(timespec="microseconds")
    delta = value - EPOCH
    return f"{_second_text(delta.days * 86_400 + delta.seconds, value)}.{delta.microseconds:06d}+00:00"


def epoch_millis(value: datetime) -> int:
    delta = value - EPOCH  # exact integer arithmetic; float timestamps can land a millisecond early
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


_SECOND_TEXTS: dict[int, str] = {}
_SECOND_TEXTS_MAX = 4096


def _second_text(seconds: int, value: datetime) -> str:
    """'YYYY-MM-DDTHH:MM:SS' of a UTC value whose epoch second is `seconds`, cached: the events of a
    request and of neighbouring requests mostly fall in the same few seconds."""
    text = _SECOND_TEXTS.get(seconds)
    if text is None:
        if len(_SECOND_TEXTS) >= _SECOND_TEXTS_MAX:
            _SECOND_TEXTS.clear()
        text = _SECOND_TEXTS[seconds] = value.replace(microsecond=0, tzinfo=None).isoformat()
    return text


# The hot path (`analytics_records`) keeps times as integer microseconds since the epoch: the same
# results as `event_timestamp` + `rfc3339_and_millis` without a datetime per step.
_MICROSECOND = timedelta(microseconds=1)
_NAIVE_EPOCH = EPOCH.replace(tzinfo=None)
MIN_MICROS = (datetime.min.replace(tzinfo=UTC) - EPOCH) // _MICROSECOND
MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - EPOCH) // _MICROSECOND
_MAX_FUTURE_MICROS = MAX_FUTURE // _MICROSECOND
_fromisoformat = datetime.fromisoformat
_NUMBER = (int, float)
_DIGITS = tuple(f"{number:03d}" for number in range(1000))  # cheaper than a format spec per event


def epoch_micros(value: datetime) -> int:
    """Microseconds since the epoch of an aware value (naive = UTC)."""
    return (value - (EPOCH if value.tzinfo is not None else _NAIVE_EPOCH)) // _MICROSECOND


def event_micros(event: Mapping[str, Any], sent_at: int | None, now: int) -> int:
    """`event_timestamp` in epoch microseconds (`sent_at` and `now` too), for the per-event hot path."""
    timestamp = event.get("timestamp")
    properties = event.get("properties")
    if (  # the common case first: an RFC 3339 timestamp corrected by sent_at, nothing else
        type(timestamp) is str
        and sent_at is not None
        and type(properties) is dict
        and "offset" not in event
        and "$clock_skew" not in event
        and "$clock_skew" not in properties
        and "$ignore_sent_at" not in properties
    ):
        try:
            parsed = _fromisoformat(timestamp)
        except ValueError:
            return _event_micros(event, sent_at, now)
        micros = (parsed - (EPOCH if parsed.tzinfo is not None else _NAIVE_EPOCH)) // _MICROSECOND
        result = now + (micros - sent_at)
        if MIN_MICROS <= micros <= MAX_MICROS and MIN_MICROS <= result <= MAX_MICROS:
            return now if result - now > _MAX_FUTURE_MICROS else result
    return _event_micros(event, sent_at, now)


def _event_micros(event: Mapping[str, Any], sent_at: int | None, now: int) -> int:
    properties = event.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    result = now
    timestamp = event.get("timestamp")
    if isinstance(timestamp, str):
        try:  # the common spellings (RFC 3339); anything else goes the general way
            parsed = _fromisoformat(timestamp)
        except ValueError:
            parsed = parse_timestamp(timestamp)
        if parsed is not None:
            micros = (parsed - (EPOCH if parsed.tzinfo is not None else _NAIVE_EPOCH)) // _MICROSECOND
            if MIN_MICROS <= micros <= MAX_MICROS:  # else unusable, as parse_timestamp has it
                if sent_at is not None and properties.get("$ignore_sent_at") is not True:
                    result = now + (micros - sent_at)
                    if not MIN_MICROS <= result <= MAX_MICROS:
                        result = 0  # compute_timestamp: outside datetime's years 1..9999 → the epoch
                else:
                    result = micros
    offset = event.get("offset")
    skew = event.get("$clock_skew", properties.get("$clock_skew"))
    if offset is not None and isinstance(offset, int) and not isinstance(offset, bool):
        result = _shifted(now, -offset)
        if result is None:
            result, skew = 0, None  # compute_timestamp applies no skew after an overflow
    if skew is not None and isinstance(skew, _NUMBER) and not isinstance(skew, bool):
        shifted = _shifted(result, skew)
        result = 0 if shifted is None else shifted
    return now if result - now > _MAX_FUTURE_MICROS else result


def _shifted(micros: int, milliseconds: float) -> int | None:
    """`micros` plus `timedelta(milliseconds=…)` (its rounding), None where datetime would overflow."""
    try:
        result = micros + timedelta(milliseconds=milliseconds) // _MICROSECOND
    except OverflowError:
        return None
    return result if MIN_MICROS <= result <= MAX_MICROS else None


def rfc3339_micros(micros: int) -> str:
    """`format_rfc3339` of epoch microseconds."""
    seconds, fraction = divmod(micros, 1_000_000)
    prefix = _SECOND_TEXTS.get(seconds)
    if prefix is None:
        prefix = _second_text(seconds, EPOCH + timedelta(seconds=seconds))
    if fraction == 0:
        return prefix + "Z"
    millis, rest = divmod(fraction, 1000)
    if rest == 0:
        return f"{prefix}.{_DIGITS[millis]}Z"
    return f"{prefix}.{_DIGITS[millis]}{_DIGITS[rest]}Z"
