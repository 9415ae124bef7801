"""Read back what the gateway produced: every message of some topics, as Records with their partition."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer

from gateway.core.record import Record


async def _consume(bootstrap: str, topics: list[str], until: int, timeout: float) -> list[tuple[int, Record]]:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[int, Record]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, messages in batches.items():
                out.extend((tp.partition, Record(tp.topic, m.key, tuple(m.headers), m.value)) for m in messages)
            if len(out) >= until and not batches:
                break
    finally:
        await consumer.stop()
    return out


def consume_all(bootstrap: str, topics: list[str], *, at_least: int, timeout: float = 30) -> list[tuple[int, Record]]:
    """Every message now in `topics` (waits until at least `at_least` arrived, then until quiet)."""
    return asyncio.run(_consume(bootstrap, topics, at_least, timeout))
