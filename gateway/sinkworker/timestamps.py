"""Datetimes the way ClickHouse's JSONEachRow input expects them (the event-time rules themselves are
gateway/capture/timestamps.py's)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.capture.timestamps import EPOCH

MIN_YEAR, MAX_YEAR = 1970, 2105


def format_clickhouse(moment: datetime, subsecond: bool) -> str:
    """`YYYY-MM-DD HH:MM:SS[.ffffff]` in UTC; legacy servers (no DateTime64) get whole seconds.

    Years outside 1970..2105 (what both DateTime and DateTime64 hold) become the Unix epoch.
    """
    moment = moment.astimezone(UTC)
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        moment = EPOCH
    text = moment.isoformat(" ", "microseconds")
    return text[:26] if subsecond else text[:19]
