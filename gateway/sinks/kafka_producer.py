"""A reconnecting aiokafka producer: `await produce(records)` returns once Kafka (acks=all) has them all.

Requests' records are gathered into one batch per partition and handed to aiokafka's batch API
(`create_batch`/`send_batch`: a third of the CPU of `send()` per record). A partition has at most one
batch with aiokafka at a time; while it is on its way, the records of every concurrent request gather
in the partition's next batch, which is sent as soon as the previous one is acknowledged. A partition
that was idle sends its batch once the requests handled in the same event-loop pass have joined (or
after `linger`, 0 by default: at a low load waiting only adds latency, and under load the batch
with aiokafka already makes the next one grow). So batches grow with the load, per-key order is kept (one
partition, one batch after the other) and each request waits for the batches holding its records.
Partitions are chosen like the Java client's default partitioner, murmur2 of the key, so PostHog's
consumers co-partition with us. Records without a key (the overflow topic) stick to one partition
until its open batch is handed to aiokafka, then move on to the next partition (round-robin over the
partitions with a leader), as the Java client's sticky partitioner does for null keys: batches stay
large and keyless records spread over every partition.

A client retired after a failure (`reset`, e.g. its broker died) is stopped in the background: it may
deliver what it still holds for RETIRED_GRACE_S, then what is left is failed (its requests timed out, so
their records are in the spool: at least once) and its connections are closed. An idempotent client
retries a batch forever, so without that a stalled client would stay open, and at shutdown be left
pending with its connections (`stop` gives retired clients STOP_GRACE_S, then closes them the same way).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from gateway.core.record import Record
from gateway.metrics import serve as metrics
from gateway.metrics.export import LocalGauge, LocalHistogram

log = logging.getLogger(__name__)
RETIRED_GRACE_S = 30.0  # how long a retired client may go on delivering what it holds
STOP_GRACE_S = 10.0  # at stop, how long batches on their way and retired clients are waited for


@functools.lru_cache(maxsize=65_536)
def _positive_murmur2(key: bytes) -> int:
    """aiokafka's murmur2 is pure Python (~µs per key); hot keys (token:distinct_id) repeat a lot."""
    return murmur2(key) & 0x7FFFFFFF


def java_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Java's default partitioner for aiokafka: murmur2(key) over all partitions; no key → random."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[_positive_murmur2(key) % len(all_partitions)]


class AckTimeout(TimeoutError):
    """Kafka did not acknowledge a request's records before its deadline."""


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(AckTimeout("Kafka did not acknowledge in time"))


class _Waiter:
    """One request's wait for the batches holding its records."""

    __slots__ = ("future", "remaining")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.remaining = 0

    def batch_done(self, error: BaseException | None) -> None:
        if self.future.done():  # failed already, or cancelled by the caller's timeout
            return
        if error is not None:
            self.future.set_exception(error)
            return
        self.remaining -= 1
        if not self.remaining:
            self.future.set_result(None)


class _OpenBatch:
    """Records gathered for one partition, and the requests waiting for them."""

    __slots__ = ("builder", "count", "waiters")

    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder
        self.count = 0
        self.waiters: list[_Waiter] = []


class _Partition:
    """A partition's batches not yet handed to aiokafka, oldest first, and whether one is with it."""

    __slots__ = ("batches", "sending")

    def __init__(self) -> None:
        self.batches: deque[_OpenBatch] = deque()
        self.sending = False


class ReconnectingProducer:
    def __init__(self, make_producer: Callable[[], AIOKafkaProducer], linger: float = 0.0) -> None:
        self._make_producer = make_producer
        self._linger = linger
        self._producer: AIOKafkaProducer | None = None  # created on the event loop, on first use
        self.generation = 0  # clients retired so far: a failure seen under an older one is not the current's
        self._connect_lock = asyncio.Lock()
        self._retired: dict[asyncio.Task, asyncio.Event] = {}  # retired clients' stopping tasks → "abandon now"
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._partition_counts: dict[str, list[int]] = {}  # topic → its partitions, as of the last metadata
        self._sticky: dict[str, tuple[int, _OpenBatch]] = {}  # topic → where its keyless records gather
        self._round_robin = random.randrange(1 << 16)  # workers start their keyless rounds apart
        self._senders: set[asyncio.Task] = set()
        self._latency = LocalHistogram(metrics.KAFKA_PRODUCE_LATENCY)
        self._queued = LocalGauge(metrics.KAFKA_QUEUE_DEPTH)  # folded once a second (gateway/metrics/export.py)

    async def ping(self) -> bool:
        """Connect if needed; True when fresh metadata could be fetched from a broker."""
        if self._producer is None:
            await self._connect()
            return True
        return bool(await self._producer.client.force_metadata_update())

    async def produce(self, records: Sequence[Record], deadline: float | None = None) -> None:
        """Return once Kafka acknowledged every record; with `deadline` (event-loop time), raise
        AckTimeout when it passes first (the records may still be delivered: at least once)."""
        loop = asyncio.get_running_loop()
        producer = self._producer
        if producer is None:
            async with asyncio.timeout_at(deadline):
                producer = await self._connect()
        started = time.perf_counter()
        waiter = _Waiter(loop.create_future())
        last: _OpenBatch | None = None
        appended = 0
        try:
            try:
                for record in records:
                    topic = record.topic
                    partitions = self._partition_counts.get(topic)
                    if partitions is None:  # forgotten at each metadata update (`_metadata_updated`)
                        async with asyncio.timeout_at(deadline):  # a metadata fetch, rarely
                            partitions = self._partition_counts[topic] = sorted(await producer.partitions_for(topic))
                    key = record.key
                    if key is None:
                        partition = self._keyless_partition(producer, topic, partitions)
                    else:
                        partition = partitions[_positive_murmur2(key) % len(partitions)]
                    batch = self._append(producer, (topic, partition), record)
                    if key is None:
                        self._sticky[topic] = (partition, batch)
                    appended += 1
                    if batch is not last:
                        batch.waiters.append(waiter)
                        waiter.remaining += 1
                        last = batch
            finally:
                self._queued.inc(appended)
            expiry = None if deadline is None else loop.call_at(deadline, _expire, waiter.future)
            try:
                await waiter.future
            finally:
                if expiry is not None:
                    expiry.cancel()
        except (asyncio.CancelledError, AckTimeout):
            raise
        except Exception:
            self._failed(producer)
            raise
        self._latency.observe(time.perf_counter() - started)

    def _keyless_partition(self, producer: AIOKafkaProducer, topic: str, partitions: list[int]) -> int:
        """The partition of the batch keyless records of `topic` fill now, or the next one once it left."""
        sticky = self._sticky.get(topic)
        if sticky is not None:
            number, batch = sticky
            partition = self._partitions.get((topic, number))
            if partition is not None and partition.batches and partition.batches[-1] is batch:
                return number
        available = producer.client.cluster.available_partitions_for_topic(topic)
        candidates = sorted(available) if available else partitions
        self._round_robin += 1
        return candidates[self._round_robin % len(candidates)]

    def _append(self, producer: AIOKafkaProducer, key: tuple[str, int], record: Record) -> _OpenBatch:
        """Add `record` to its partition's open batch (a new one when there is none or it is full)."""
        partition = self._partitions.get(key)
        if partition is None:
            partition = self._partitions[key] = _Partition()
        batches = partition.batches
        if batches:
            batch = batches[-1]
            if batch.builder.append(key=record.key, value=record.value, timestamp=None, headers=list(record.headers)):
                batch.count += 1
                return batch
        batch = _OpenBatch(producer.create_batch())
        # A new batch takes its first record whatever its size (KafkaSink refuses oversized ones first).
        batch.builder.append(key=record.key, value=record.value, timestamp=None, headers=list(record.headers))
        batch.count = 1
        batches.append(batch)
        if not partition.sending:
            partition.sending = True
            task = asyncio.get_running_loop().create_task(self._send_batches(producer, key, partition))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        return batch

    async def _send_batches(self, producer: AIOKafkaProducer, key: tuple[str, int], partition: _Partition) -> None:
        """Send the partition's batches one after the other, each once the previous one is acknowledged."""
        topic, number = key
        if self._linger:  # an idle partition waits for concurrent requests to join
            await asyncio.sleep(self._linger)
        batches = partition.batches
        while batches:
            batch = batches.popleft()
            error: BaseException | None = None
            try:
                await (await producer.send_batch(batch.builder, topic, partition=number))
            except BaseException as exc:  # handed to the waiting requests
                error = exc
            self._queued.dec(batch.count)
            for waiter in batch.waiters:
                waiter.batch_done(error)
            if error is not None:  # the requests spool their records: fail what is queued behind too
                self._fail_queued(partition, error)
                if isinstance(error, asyncio.CancelledError):
                    raise error
        partition.sending = False
        if self._partitions.get(key) is partition:
            del self._partitions[key]

    def _fail_queued(self, partition: _Partition, error: BaseException) -> None:
        while partition.batches:
            batch = partition.batches.popleft()
            self._queued.dec(batch.count)
            for waiter in batch.waiters:
                waiter.batch_done(error)

    async def produce_bulk(self, records: Sequence[Record]) -> None:
        """Like `produce`, for one large batch (spool replay): fills per-partition batches directly,
        which costs a third of the CPU of `send()` per record; partitions are sent concurrently, the
        batches of one partition one after the other (`_send_partition`)."""
        producer = await self._connect()
        try:
            by_partition: dict[tuple[str, int], list[Record]] = defaultdict(list)
            partitions: dict[str, list[int]] = {}
            for record in records:
                if record.topic not in partitions:
                    partitions[record.topic] = sorted(await producer.partitions_for(record.topic))
                every = partitions[record.topic]
                by_partition[(record.topic, java_partitioner(record.key, every, every))].append(record)
            senders = [
                asyncio.ensure_future(self._send_partition(producer, topic, partition, members))
                for (topic, partition), members in by_partition.items()
            ]
            try:
                done, _ = await asyncio.wait(senders, return_when=asyncio.FIRST_EXCEPTION)
            finally:  # a failure (or the caller's timeout) stops every partition: nothing more is sent
                for sender in senders:
                    sender.cancel()
            for sender in done:
                if not sender.cancelled() and (error := sender.exception()) is not None:
                    raise error
        except (asyncio.CancelledError, AckTimeout):
            raise
        except Exception:
            self._failed(producer)
            raise

    def _failed(self, producer: AIOKafkaProducer) -> None:
        """Count a failed produce and retire its client (a caller's timeout or cancellation is not one:
        `produce` and `produce_bulk` re-raise those before calling this)."""
        metrics.KAFKA_PRODUCE_ERRORS.inc()
        self._retire(producer)

    @staticmethod
    async def _send_partition(producer: AIOKafkaProducer, topic: str, partition: int, records: list[Record]) -> None:
        """Send one partition's records in batches, each once the previous one is acknowledged (the next
        is built meanwhile). Handing aiokafka several at once could land records out of order: it fails
        a batch whose partition had no leader for `request_timeout_ms` yet sends the batches behind it,
        and a client retired after a failure still delivers what it holds; replayed again, the failed
        records would land after later ones. One batch at a time, a failure leaves nothing later in
        flight, so the first copy of every record lands in spool order."""
        acked: asyncio.Future | None = None
        for batch in _batches(producer, records):
            if acked is not None:
                await acked
            acked = await producer.send_batch(batch, topic, partition=partition)
        if acked is not None:
            await acked

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
                producer.client.cluster.add_listener(self._metadata_updated)
                self._producer = producer
            return self._producer

    def _metadata_updated(self, cluster: object) -> None:
        """Partition counts may have changed: look them up again (once per topic, not per record:
        `partitions_for_topic` builds a set on every call)."""
        self._partition_counts = {}

    def reset(self, generation: int) -> None:
        """Retire the client a delivery that began under `generation` failed on, unless that client
        was retired already: a straggler's timeout must not retire the fresh client that replaced it."""
        if generation == self.generation:
            self._retire(self._producer)

    def _retire(self, failed: AIOKafkaProducer | None) -> None:
        """Drop the current client after a failure; the next produce connects a fresh one.

        An idempotent producer whose batches timed out can be left with broken sequence numbers
        (OutOfOrderSequenceNumber forever), so failures get a new producer id rather than retries.
        """
        producer = self._producer
        if producer is None or failed is not producer:
            return  # already replaced
        self.generation += 1
        self._producer = None
        self._partitions = {}  # senders of the old client finish (or fail) their own batches
        self._partition_counts = {}
        self._sticky = {}
        abandon = asyncio.Event()
        task = asyncio.get_running_loop().create_task(_stop_retired(producer, RETIRED_GRACE_S, abandon))
        self._retired[task] = abandon
        task.add_done_callback(self._retired_stopped)

    def _retired_stopped(self, task: asyncio.Task) -> None:
        self._retired.pop(task, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("a retired Kafka client did not close cleanly: %r", error)

    async def stop(self) -> None:
        """Stop the client, after the batches on their way (STOP_GRACE_S at most); retired clients get
        as long to deliver what they hold, then are closed regardless."""
        pending = {*self._senders, *self._retired}
        if pending:
            await asyncio.wait(pending, timeout=STOP_GRACE_S)
        for abandon in self._retired.values():
            abandon.set()
        if self._retired:
            await asyncio.wait(list(self._retired), timeout=STOP_GRACE_S)
        if self._producer is not None:
            await self._producer.stop()


def _batches(producer: AIOKafkaProducer, records: list[Record]) -> Iterator[BatchBuilder]:
    """`records` in order as full batches (the last one as it is)."""
    batch = producer.create_batch()
    for record in records:
        if batch.append(key=record.key, value=record.value, timestamp=None, headers=list(record.headers)) is None:
            yield batch
            batch = producer.create_batch()  # a new batch takes its first record whatever its size
            batch.append(key=record.key, value=record.value, timestamp=None, headers=list(record.headers))
    yield batch


async def _stop_retired(producer: AIOKafkaProducer, grace: float, abandon: asyncio.Event) -> None:
    """Stop a retired client, letting it deliver what it holds for `grace` seconds (or until `abandon` is
    set); then abandon what it still holds and close its connections, so that its stop() returns."""
    stopping = asyncio.ensure_future(producer.stop())
    abandoned = asyncio.ensure_future(abandon.wait())
    await asyncio.wait((stopping, abandoned), timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    abandoned.cancel()
    if not stopping.done():
        _fail_batches(producer)
        await producer.client.close()  # its requests in flight fail at once
    try:
        await stopping
    except Exception as error:  # what aiokafka's sender made of the batches failed under it
        log.debug("retired Kafka client stopped: %r", error)


def _fail_batches(producer: AIOKafkaProducer) -> None:
    """Fail the batches a client holds, as aiokafka does itself when its sender dies (it has no public
    abort). Its sender may then fail on a batch it meant to send again: that failure is left to stop()
    (which raises it), not to the sender's own callback (which trips over the transaction state of a
    producer without transactions)."""
    sender = producer._sender
    if sender.sender_task is not None:
        sender.sender_task.remove_done_callback(sender._fail_all)
    producer._message_accumulator.fail_all(KafkaConnectionError("Kafka client retired"))
