"""Batches records of concurrent requests into per-partition Kafka batches (aiokafka `send_batch`).

aiokafka's per-message `send()` costs ~3x more CPU than filling a batch directly, and waiting for an
ack per request makes throughput latency-bound. So records of every request that arrives within one
linger window are grouped by (topic, partition), appended to batch builders, and sent together;
each request waits only for the batches holding its records. Partitions are chosen like the Java
client's default partitioner (murmur2 of the key), so PostHog's consumers co-partition with us.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from gateway import metrics
from gateway.capture.record import Record

METADATA_REFRESH_SECONDS = 60.0


@functools.lru_cache(maxsize=65_536)
def _positive_murmur2(key: bytes) -> int:
    """aiokafka's murmur2 is pure Python (~µs per key); hot keys (token:distinct_id) repeat a lot."""
    return murmur2(key) & 0x7FFFFFFF


def partition_for(key: bytes | None, partitions: int) -> int:
    """Java's default partitioner: positive murmur2 of the key modulo the partition count."""
    if key is None:
        return random.randrange(partitions)
    return _positive_murmur2(key) % partitions


@dataclass(slots=True, eq=False)
class _PendingRequest:
    records: Sequence[Record]
    done: asyncio.Future[None]
    batches: set[asyncio.Future] = field(default_factory=set)


class BatchingProducer:
    """`await produce(records)` returns once Kafka (acks=all) has every record, or raises."""

    def __init__(self, make_producer: Callable[[], AIOKafkaProducer], linger_ms: float) -> None:
        self._make_producer = make_producer
        self._producer: AIOKafkaProducer | None = None  # created on the event loop by ping()
        self._linger = linger_ms / 1000
        self._pending: list[_PendingRequest] = []
        self._flush_scheduled = False
        self._partitions: dict[str, tuple[int, float]] = {}
        self._connect_lock = asyncio.Lock()
        self._retired: set[asyncio.Task] = set()

    async def ping(self) -> bool:
        """Connect if needed; True when fresh metadata could be fetched from a broker."""
        if self._producer is None:
            await self._connect()
            return True
        return bool(await self._producer.client.force_metadata_update())

    async def _connect(self) -> AIOKafkaProducer:
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
        if producer is not None:
            task = asyncio.get_running_loop().create_task(asyncio.wait_for(producer.stop(), 30))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
            task.add_done_callback(_consume_exception)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._retired:
            await asyncio.wait(self._retired, timeout=10)

    async def produce(self, records: Sequence[Record]) -> None:
        loop = asyncio.get_running_loop()
        request = _PendingRequest(records, loop.create_future())
        self._pending.append(request)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self._linger > 0:
                loop.call_later(self._linger, self._start_flush)
            else:
                loop.call_soon(self._start_flush)
        await request.done

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        queued = sum(len(request.records) for request in pending)
        metrics.KAFKA_QUEUE_DEPTH.inc(queued)  # once per flush, not per request
        task = asyncio.get_running_loop().create_task(self._flush(pending))
        task.add_done_callback(_consume_exception)
        task.add_done_callback(lambda _: metrics.KAFKA_QUEUE_DEPTH.dec(queued))

    async def _flush(self, requests: list[_PendingRequest]) -> None:
        started = time.perf_counter()
        producer: AIOKafkaProducer | None = None
        try:
            producer = await self._connect()
            groups = await self._group(producer, requests)
            for (topic, partition), members in groups.items():
                for batch, owners in self._build_batches(producer, members):
                    future = await producer.send_batch(batch, topic, partition=partition)
                    for owner in owners:
                        owner.batches.add(future)
        except Exception as exc:  # metadata or enqueue failure fails every request of this flush
            metrics.KAFKA_PRODUCE_ERRORS.inc()
            self.reset(producer)
            for request in requests:
                if not request.done.done():
                    request.done.set_exception(exc)
            return
        await asyncio.gather(*(self._await_request(producer, request, started) for request in requests))

    async def _await_request(self, producer: AIOKafkaProducer, request: _PendingRequest, started: float) -> None:
        try:
            await asyncio.gather(*request.batches)
        except Exception as exc:
            metrics.KAFKA_PRODUCE_ERRORS.inc()
            self.reset(producer)
            if not request.done.done():
                request.done.set_exception(exc)
            return
        metrics.KAFKA_PRODUCE_LATENCY.observe(time.perf_counter() - started)
        if not request.done.done():
            request.done.set_result(None)

    async def _group(
        self, producer: AIOKafkaProducer, requests: list[_PendingRequest]
    ) -> dict[tuple[str, int], list[tuple[Record, _PendingRequest]]]:
        groups: dict[tuple[str, int], list[tuple[Record, _PendingRequest]]] = defaultdict(list)
        for request in requests:
            for record in request.records:
                partitions = await self._partition_count(producer, record.topic)
                groups[(record.topic, partition_for(record.key, partitions))].append((record, request))
        return groups

    def _build_batches(
        self, producer: AIOKafkaProducer, members: list[tuple[Record, _PendingRequest]]
    ) -> list[tuple[object, set[_PendingRequest]]]:
        """Fill batch builders in order (per-partition order = arrival order); start a new one when full."""
        built: list[tuple[object, set[_PendingRequest]]] = []
        batch = producer.create_batch()
        owners: set[_PendingRequest] = set()
        for record, request in members:
            headers = list(record.headers)
            if batch.append(key=record.key, value=record.value, timestamp=None, headers=headers) is None:
                built.append((batch, owners))
                batch, owners = producer.create_batch(), set()
                if batch.append(key=record.key, value=record.value, timestamp=None, headers=headers) is None:
                    raise ValueError(f"record of {len(record.value)} bytes exceeds the Kafka batch size")
            owners.add(request)
        built.append((batch, owners))
        return built

    async def _partition_count(self, producer: AIOKafkaProducer, topic: str) -> int:
        cached = self._partitions.get(topic)
        now = time.monotonic()
        if cached is not None and now - cached[1] < METADATA_REFRESH_SECONDS:
            return cached[0]
        partitions = await producer.partitions_for(topic)
        count = len(partitions)
        self._partitions[topic] = (count, now)
        return count


def _consume_exception(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
