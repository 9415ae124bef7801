"""Worker spools filled as a gateway with several workers leaves them, and a source wrapper that says
when everything was read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.core.record import Record
from gateway.spool import Spool
from tests.sinkworker.helpers import TOPIC, captured_value


def fill_worker_spools(data_dir: Path, workers: int, per_spool: int) -> None:
    """`per_spool` events in each of `workers` worker spools (several 16 KiB segments each, every spool
    starting at segment 1), distinct uuids."""

    async def fill() -> None:
        for worker in range(workers):
            spool = Spool(data_dir / "spool" / f"worker-{worker}", segment_bytes=16 * 1024)
            await spool.open()
            start = worker * 10_000
            await spool.append([Record(TOPIC, b"k", (), captured_value(i)) for i in range(start, start + per_spool)])
            await spool.close()

    asyncio.run(fill())


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
