"""Worker spools filled as a gateway with several workers leaves them, and a source wrapper that says
when everything was read."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.capture.events import RecordOptions, RequestContext, check_events
from gateway.capture.parse import ParsedRequest
from gateway.capture.spooled import request_content
from gateway.core.record import Record
from gateway.spool import Spool
from tests.sinkworker.helpers import TOKEN, TOPIC, captured_value


def fill_worker_spools(data_dir: Path, workers: int, per_spool: int) -> None:
    """`per_spool` events in each of `workers` worker spools (several 16 KiB segments each, every spool
    starting at segment 1), distinct uuids: the first half one record per frame (as an older gateway
    or the Kafka failover writes them), the rest as spooled requests of 7 events (embedded mode)."""

    async def fill() -> None:
        for worker in range(workers):
            spool = Spool(data_dir / "spool" / f"worker-{worker}", segment_bytes=16 * 1024)
            await spool.open()
            start, middle, end = worker * 10_000, worker * 10_000 + per_spool // 2, worker * 10_000 + per_spool
            await spool.append([Record(TOPIC, b"k", (), captured_value(i)) for i in range(start, middle)])
            for first in range(middle, end, REQUEST_EVENTS):
                events = range(first, min(first + REQUEST_EVENTS, end))
                await spool.append_request(spooled_request(events), len(events))
            await spool.close()

    asyncio.run(fill())


REQUEST_EVENTS = 7


def spooled_request(indexes: range, token: str = TOKEN) -> bytes:
    """The spool content of one capture request holding events `indexes` (uuids as `captured_value`'s)."""
    events = [{"uuid": str(uuid.UUID(int=i + 1)), "event": "$pageview", "properties": {"distinct_id": f"user-{i}"},
               "timestamp": "2023-09-15T09:15:02.325Z"} for i in indexes]
    parsed = ParsedRequest(events, token, None, False)
    check_events(parsed)
    context = RequestContext("203.0.113.7", datetime(2023, 9, 15, 9, 15, 2, 328_551, tzinfo=UTC))
    return request_content(parsed, context, RecordOptions())


class Draining:
    """Wraps a source to signal when a fetch comes back empty (everything read)."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self.drained = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    async def fetch(self, timeout_s: float, max_records: int) -> Any:
        messages = await self._source.fetch(timeout_s, max_records)
        if not messages:
            self.drained.set()
        return messages
