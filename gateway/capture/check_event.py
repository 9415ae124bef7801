"""The reserved health-check event: `gateway check` proves the capture path without storing anything.

An event named `$gateway_check` goes through everything a real event does (decode, parse, token
allowlist and rate limit, privacy rules, validation into a record) and gets the same answer, but is
then dropped instead of reaching Kafka, the spool or an upstream, and counted as
`capture_events_dropped{cause="gateway_check"}`. Where a real event would be refused because the sink
cannot store it (spool full), the check event is refused too. The sink worker drops the name as well
(gateway/sinkworker/rows.py), in case one was ever written by an older gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway.capture.parse import RawEvent
from gateway.core.errors import ServiceUnavailable
from gateway.core.readiness import Readiness
from gateway.core.record import Record

if TYPE_CHECKING:  # the sink worker's settings import this module: no prometheus_client at CLI build time
    from prometheus_client import Counter

CHECK_EVENT = "$gateway_check"


class CheckEvents:
    def __init__(self, readiness: Callable[[], Readiness], dropped: Counter) -> None:
        """`readiness`: the sink's, asked when a request held only check events."""
        self._readiness = readiness
        self._dropped = dropped

    def remove(self, events: Sequence[RawEvent], records: list[Record]) -> list[Record]:
        """`records` (one per event, in order) without the check events' records."""
        if not _has_check_event(events):
            return records
        kept = [record for event, record in zip(events, records, strict=True) if event["event"] != CHECK_EVENT]
        return self._counted(kept, len(records))

    def remove_events(self, events: list[RawEvent]) -> list[RawEvent]:
        """`events` without the check events (when records are built later, from what is kept)."""
        if not _has_check_event(events):
            return events
        return self._counted([event for event in events if event["event"] != CHECK_EVENT], len(events))

    def _counted(self, kept: list, total: int) -> list:
        if not kept:  # nothing to deliver: answer what delivering would have answered
            readiness = self._readiness()
            if not readiness.ready:
                raise ServiceUnavailable(f"events cannot be stored now: {readiness.detail}")
        self._dropped.inc(total - len(kept))
        return kept


def _has_check_event(events: Sequence[RawEvent]) -> bool:
    for event in events:  # noqa: SIM110 - a plain loop costs half of any() over a generator
        if event["event"] == CHECK_EVENT:
            return True
    return False
