"""A reconnecting aiokafka producer: `await produce(records)` returns once Kafka (acks=all) has them all.

Records go through aiokafka's accumulator with `send()`, which appends to the open batch of each
partition while the previous produce request is in flight, so the records of all concurrent requests
share produce requests. (Filling our own batches with `send_batch` looked cheaper per message, but
aiokafka drains at most one such batch per partition per request, which serialised everything on the
broker round trip.) Partitions are chosen like the Java client's default partitioner, murmur2 of the
key, so PostHog's consumers co-partition with us.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from gateway import metrics
from gateway.capture.record import Record


@functools.lru_cache(maxsize=65_536)
def _positive_murmur2(key: bytes) -> int:
    """aiokafka's murmur2 is pure Python (~µs per key); hot keys (token:distinct_id) repeat a lot."""
    return murmur2(key) & 0x7FFFFFFF


def java_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Java's default partitioner for aiokafka: murmur2(key) over all partitions; no key → random."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[_positive_murmur2(key) % len(all_partitions)]


class ReconnectingProducer:
    def __init__(self, make_producer: Callable[[], AIOKafkaProducer]) -> None:
        self._make_producer = make_producer
        self._producer: AIOKafkaProducer | None = None  # created on the event loop, on first use
        self._connect_lock = asyncio.Lock()
        self._retired: set[asyncio.Task] = set()

    async def ping(self) -> bool:
        """Connect if needed; True when fresh metadata could be fetched from a broker."""
        if self._producer is None:
            await self._connect()
            return True
        return bool(await self._producer.client.force_metadata_update())

    async def produce(self, records: Sequence[Record]) -> None:
        producer = await self._connect()
        started = time.perf_counter()
        metrics.KAFKA_QUEUE_DEPTH.inc(len(records))
        try:
            with self._reset_on_failure(producer):
                acks = [
                    await producer.send(r.topic, r.value, r.key, headers=list(r.headers)) for r in records
                ]
                await asyncio.gather(*acks)
        finally:
            metrics.KAFKA_QUEUE_DEPTH.dec(len(records))
        metrics.KAFKA_PRODUCE_LATENCY.observe(time.perf_counter() - started)

    async def produce_bulk(self, records: Sequence[Record]) -> None:
        """Like `produce`, for one large batch (spool replay): fills per-partition batches directly,
        which costs a third of the CPU of `send()` per record; partitions are sent concurrently."""
        producer = await self._connect()
        with self._reset_on_failure(producer):
            by_partition: dict[tuple[str, int], list[Record]] = defaultdict(list)
            partitions: dict[str, list[int]] = {}
            for record in records:
                if record.topic not in partitions:
                    partitions[record.topic] = sorted(await producer.partitions_for(record.topic))
                every = partitions[record.topic]
                by_partition[(record.topic, java_partitioner(record.key, every, every))].append(record)
            sent = await asyncio.gather(
                *(self._send_partition(producer, topic, partition, members)
                  for (topic, partition), members in by_partition.items())
            )
            await asyncio.gather(*(ack for acks in sent for ack in acks))

    @contextlib.contextmanager
    def _reset_on_failure(self, producer: AIOKafkaProducer) -> Iterator[None]:
        """Count a failed produce and retire its client (cancellation by a caller's timeout is not one)."""
        try:
            yield
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.KAFKA_PRODUCE_ERRORS.inc()
            self.reset(producer)
            raise

    @staticmethod
    async def _send_partition(
        producer: AIOKafkaProducer, topic: str, partition: int, records: list[Record]
    ) -> list[asyncio.Future]:
        acks = []
        batch = producer.create_batch()
        for record in records:
            if batch.append(key=record.key, value=record.value, timestamp=None, headers=list(record.headers)) is None:
                acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=record.key, value=record.value, timestamp=None, headers=list(record.headers))
        acks.append(await producer.send_batch(batch, topic, partition=partition))
        return acks

    async def _connect(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._connect_lock:
            if self._producer is None:
                producer = self._make_producer()
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()  # a failed start cannot be retried on the same client
                    raise
                self._producer = producer
            return self._producer

    def reset(self, failed: AIOKafkaProducer | None = None) -> None:
        """Drop the current client after a failure; the next produce connects a fresh one.

        An idempotent producer whose batches timed out can be left with broken sequence numbers
        (OutOfOrderSequenceNumber forever), so failures get a new producer id rather than retries.
        """
        producer = self._producer
        if producer is None or (failed is not None and failed is not producer):
            return  # already replaced
        self._producer = None
        task = asyncio.get_running_loop().create_task(asyncio.wait_for(producer.stop(), 30))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)
        task.add_done_callback(_consume_exception)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._retired:
            await asyncio.wait(self._retired, timeout=10)


def _consume_exception(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
