"""A spooled capture request's events as sink messages (embedded mode).

The spool holds a request as its validated events plus context (gateway/capture/spooled.py). Expanding
it into Kafka records encodes an envelope and a `data` JSON per event that the sink would only parse
back; instead each event becomes a `SpooledEvent` carrying what its record is made of
(`routed_events`), and `RowEncoder` builds the row from that. The record itself is built on demand
(`key`, `value`, `headers`: for the dead-letter queue, or for shapes the encoder leaves to its
reference path) by `analytics_records` from the same inputs: the record every other reader gets
(`request_records`), with the same uuid where the gateway stored an event without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.capture.events import RecordOptions, RequestContext, RoutedEvent, analytics_records, routed_events
from gateway.capture.parse import ParsedRequest
from gateway.capture.spooled import request_inputs
from gateway.capture.timestamps import format_now
from gateway.core.record import Record


class StoredRequest:
    """What the events of one stored request share; its records, built once if any is asked for."""

    __slots__ = ("_inputs", "_records", "now", "token")

    def __init__(self, parsed: ParsedRequest, context: RequestContext, options: RecordOptions) -> None:
        self._inputs = (parsed, context, options)
        self._records: list[Record] | None = None
        self.token = parsed.token
        # The `now` a record's envelope holds, as the encoder reads it back (once per request).
        self.now = datetime.fromisoformat(format_now(context.now))

    def records(self) -> list[Record]:
        if self._records is None:
            self._records = analytics_records(*self._inputs)
        return self._records


class SpooledEvent:
    """One event of a spooled request with a ConsumerRecord's attributes; `key`, `value` and
    `headers` are its record's, built on first use."""

    __slots__ = ("index", "offset", "partition", "request", "route", "timestamp", "topic")

    def __init__(self, route: RoutedEvent, request: StoredRequest, index: int) -> None:
        self.route = route
        self.request = request
        self.index = index
        self.topic = route.topic
        self.partition = self.offset = self.timestamp = 0

    def placed(self, partition: int, offset: int, timestamp: int) -> SpooledEvent:
        """This event at its position in the spool (sources.py), read at `timestamp` (epoch ms)."""
        self.partition, self.offset, self.timestamp = partition, offset, timestamp
        return self

    @property
    def record(self) -> Record:
        return self.request.records()[self.index]

    @property
    def key(self) -> bytes | None:
        return self.record.key

    @property
    def value(self) -> bytes:
        return self.record.value

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]:
        return self.record.headers


def spooled_events(content: memoryview) -> list[SpooledEvent]:
    """A stored request's events, one per record `request_records(content)` would build, in order
    (a `RequestExpander` of gateway/spool/format.py; ValueError if `content` is malformed)."""
    parsed, context, options = request_inputs(content)
    request = StoredRequest(parsed, context, options)
    return [SpooledEvent(route, request, index) for index, route in enumerate(routed_events(parsed, context, options))]
