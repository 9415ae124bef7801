"""Read back what the gateway produced (every message of some topics, as Records with their partition),
and how far a consumer group lags behind."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

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
            # Enough, and every partition read to its end: counting alone could stop early, since the
            # at-least-once gateway may have written some records twice.
            if len(out) >= until and not batches and await _at_end(consumer):
                break
    finally:
        await consumer.stop()
    return out


async def _at_end(consumer: AIOKafkaConsumer) -> bool:
    partitions = list(consumer.assignment())
    ends = await consumer.end_offsets(partitions) if partitions else {}
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


def consume_all(bootstrap: str, topics: list[str], *, at_least: int, timeout: float = 30) -> list[tuple[int, Record]]:
    """Every message now in `topics` (waits until at least `at_least` arrived, then until quiet)."""
    return asyncio.run(_consume(bootstrap, topics, at_least, timeout))


async def _group_lag(bootstrap: str, topics: list[str], group: str, partitions: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        ends = await consumer.end_offsets([TopicPartition(t, p) for t in topics for p in range(partitions)])
    finally:
        await consumer.stop()
        await admin.close()
    return sum(end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items())


def group_lag(bootstrap: str, topics: list[str], group: str, *, partitions: int) -> int:
    """Messages of `topics` (partitions 0 to `partitions` - 1) past the group's committed offsets:
    the consumer lag Kafka sees."""
    return asyncio.run(_group_lag(bootstrap, topics, group, partitions))
