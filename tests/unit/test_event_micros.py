"""The hot path's integer-microsecond event time gives exactly what `event_timestamp` and
`rfc3339_and_millis` give, across the spellings and the edge cases of capture's timestamp rules."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.capture.timestamps import (
    epoch_micros,
    event_micros,
    event_timestamp,
    rfc3339_and_millis,
    rfc3339_micros,
)

NOW = datetime(2026, 12, 1, 10, 0, 0, 123_456, tzinfo=UTC)
TIMESTAMPS = (
    None,
    "",
    "  ",
    "2026-12-01T09:59:57.123Z",
    "2026-12-01T09:59:57Z",
    "2026-12-01T09:59:57.123456Z",
    " 2026-12-01T09:59:57.123Z ",
    "2026-12-01T11:59:57.5+02:00",
    "2026-12-01 09:59:57",
    "2026-12-01",
    "2026-12-02T12:00:00Z",  # more than 23 h ahead once corrected
    "1764583197123",
    "1764583197",
    "-5",
    "Tue, 01 Dec 2026 09:59:57 GMT",
    "not a time",
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-01:00",
    "1969-12-31T23:59:59.999Z",
    42,
)
SENT_AT = (None, datetime(2026, 12, 1, 9, 59, 58, 999_000, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC),
           datetime(9999, 12, 31, tzinfo=UTC))
OFFSETS = (None, 0, 1500, -86_400_000 * 2, 10**20, True, "5")
SKEWS = (None, 250, -1.5, 0.0004, 10**20, False)


@pytest.mark.parametrize("timestamp", TIMESTAMPS)
def test_event_micros_equals_event_timestamp(timestamp: object) -> None:
    now = epoch_micros(NOW)
    for sent_at, offset, skew, ignore, skew_in_properties in itertools.product(
        SENT_AT, OFFSETS, SKEWS, (False, True), (False, True)
    ):
        event: dict = {"event": "e", "properties": {}}
        if timestamp is not None:
            event["timestamp"] = timestamp
        if offset is not None:
            event["offset"] = offset
        if skew is not None:
            (event["properties"] if skew_in_properties else event)["$clock_skew"] = skew
        if ignore:
            event["properties"]["$ignore_sent_at"] = True
        expected = rfc3339_and_millis(event_timestamp(event, sent_at, NOW))
        micros = event_micros(event, None if sent_at is None else epoch_micros(sent_at), now)
        assert (rfc3339_micros(micros), micros // 1000) == expected, (event, sent_at)


def test_epoch_micros_of_naive_and_offset_values() -> None:
    assert epoch_micros(datetime(1970, 1, 1, 0, 0, 1)) == 1_000_000
    assert epoch_micros(datetime(1970, 1, 1, 1, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))) == 5
    assert rfc3339_micros(-1) == "1969-12-31T23:59:59.999999Z"
