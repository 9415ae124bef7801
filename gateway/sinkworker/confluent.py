"""The events sink's Kafka source on confluent-kafka's C consumer (librdkafka) instead of aiokafka.

Why: aiokafka unpacks every record in Python and builds a ConsumerRecord per message, ~30 % of the
sink's CPU; librdkafka does the fetching and decoding in C (measured 1.8-2.6x aiokafka's messages per
CPU-second here, docs/sink.md). Each message becomes a `KafkaMessage`, a C-built msgspec struct
with the attributes the worker reads (`SourceMessage`); key and headers are read from the librdkafka
message only when asked for (dead letters).

`consume()` blocks, so it runs on one dedicated thread, which also makes every commit (librdkafka holds
a commit from another thread while a rebalance callback runs). The rebalance callbacks run inside
consume() on that thread; they hand the change to the event loop and wait for it: on revocation the
worker stores and commits everything consumed from those partitions before librdkafka releases them
(the callback makes the worker's commits meanwhile), and on assignment the worker resets its replay
guard before any message of the new partitions is returned. Same group, manual commits after
storage, exactly-once as with `KafkaSource`.

`gateway_sink_consumer_lag` is a partition's end offset minus its committed offset, which the worker
advances only past stored rows: messages consumed but not stored (inserts failing) still count. End
offsets come with fetched messages; while the source is paused (nothing is fetched), they are asked
for every LAG_REFRESH_S, so the lag keeps growing through a ClickHouse outage.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgspec
from aiokafka.errors import KafkaError
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import Message as CMessage
from confluent_kafka import TopicPartition as CTopicPartition

from gateway.metrics.sink import CONSUMER_LAG
from gateway.sinkworker.batch import Coordinates
from gateway.sinkworker.batch import TopicPartition as TP
from gateway.sinkworker.lag import PartitionLag
from gateway.sinkworker.rows import SourceMessage
from gateway.sinkworker.sources import AssignmentListener, read_at

log = logging.getLogger(__name__)
LAG_REFRESH_S = 5.0


class KafkaMessage(msgspec.Struct, frozen=True, gc=False):
    """A consumed message with ConsumerRecord's attributes; built in C by msgspec, no Python __init__."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # epoch ms
    value: bytes | None
    message: Any  # the librdkafka message, for key and headers

    @property
    def key(self) -> bytes | None:
        return self.message.key()

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]:
        return self.message.headers() or ()


class ConfluentSource:
    """A manually committing member of a consumer group over the capture topics (librdkafka)."""

    lag_unit = "messages"

    def __init__(self, config: dict[str, Any], topics: Sequence[str], bootstrap_servers: str) -> None:
        self._config = config
        self._topics = list(topics)
        self._bootstrap_servers = bootstrap_servers
        self._consumer: Consumer | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sink-consumer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: AssignmentListener | None = None
        self._lag = PartitionLag(CONSUMER_LAG, lambda tp: (tp[0], str(tp[1])))
        self._ends_asked = 0.0  # monotonic time end offsets were last asked for while paused
        self._paused = False
        self._rebalanced = False  # during the consume() in progress
        # Commits for the consumer thread (None: a revocation's end). librdkafka holds a commit from another
        # thread while a rebalance callback runs, and the revocation callback waits for the worker's commits.
        self._commits: queue.SimpleQueue[tuple[list[CTopicPartition], Future[Any]] | None] = queue.SimpleQueue()

    @classmethod
    def create(
        cls,
        bootstrap_servers: str,
        topics: Sequence[str],
        group_id: str,
        session_timeout_ms: int = 10_000,
        fetch_max_bytes: int = 64 * 1024 * 1024,
    ) -> ConfluentSource:
        config = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(100, session_timeout_ms // 4),
            "fetch.max.bytes": fetch_max_bytes,
            "max.partition.fetch.bytes": min(fetch_max_bytes, 8 * 1024 * 1024),
            "queued.max.messages.kbytes": 32 * 1024,  # librdkafka's prefetch queue: part of the sink's RSS
            "enable.partition.eof": False,
        }
        return cls(config, topics, bootstrap_servers)

    async def start(self, listener: AssignmentListener) -> None:
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        self._consumer = await self._run(Consumer, self._config, logger=log)
        self._consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    async def _run(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._thread, lambda: function(*args, **kwargs))

    # Rebalance callbacks: on the consumer thread, inside consume() or close() --------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        assert self._listener is not None and self._loop is not None
        tps = {(tp.topic, tp.partition) for tp in partitions}
        log.info("partitions assigned: %s", _names(tps))
        self._rebalanced = True
        self._on_loop(_assigned(self._listener, tps))
        consumer.assign(partitions)  # assigned here (not after the callback), so a paused source can pause them
        if self._paused:
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        """Wait until the worker has stored and committed what it consumed, making its commits meanwhile."""
        assert self._listener is not None and self._loop is not None
        tps = {(tp.topic, tp.partition) for tp in partitions}
        log.info("partitions revoked: %s", _names(tps))
        self._rebalanced = True
        done = asyncio.run_coroutine_threadsafe(self._listener.revoked(tps), self._loop)
        done.add_done_callback(lambda _: self._commits.put(None))
        self._serve_commits(consumer, until=True)
        done.result()
        self._lag.forget(tps)  # another member reports them now

    def _serve_commits(self, consumer: Consumer, until: bool = False) -> None:
        """Make the commits asked for (on the consumer thread); `until`: wait for more until the sentinel."""
        while True:
            try:
                request = self._commits.get() if until else self._commits.get_nowait()
            except queue.Empty:
                return
            if request is None:
                return
            offsets, reply = request
            if not reply.set_running_or_notify_cancel():
                continue
            try:
                reply.set_result(consumer.commit(offsets=offsets, asynchronous=False))
            except BaseException as error:  # handed to the awaiting commit()
                reply.set_exception(error)

    def _on_loop(self, coroutine: Any) -> None:
        """Run a coroutine on the event loop and wait for it (the consumer thread holds the rebalance)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # Source -----------------------------------------------------------------------------------
    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[SourceMessage]:
        assert self._consumer is not None
        found: list[CMessage] = await self._run(self._consume, self._consumer, max_records, timeout_s)
        messages: list[SourceMessage] = []
        append = messages.append
        last: dict[TP, int] = {}
        for message in found:
            if message.error() is not None:
                _log_error(message)
                continue
            tp = (message.topic(), message.partition())
            offset = message.offset()
            append(KafkaMessage(tp[0], tp[1], offset, message.timestamp()[1], message.value(), message))
            last[tp] = offset
        for tp in last:
            if tp not in self._lag:
                self._lag.started(tp, next(m.offset for m in messages if (m.topic, m.partition) == tp))
            _, high = self._consumer.get_watermark_offsets(CTopicPartition(*tp), cached=True)
            if high is not None and high >= 0:
                self._lag.ended(tp, high)
        if self._paused and self._lag.partitions() and time.monotonic() - self._ends_asked >= LAG_REFRESH_S:
            self._ends_asked = time.monotonic()
            await self._run(self._ask_ends, self._consumer)
        return messages

    def _ask_ends(self, consumer: Consumer) -> None:
        """End offsets from the brokers (a paused partition's cached one is not updated)."""
        for tp in self._lag.partitions():
            try:
                _, high = consumer.get_watermark_offsets(CTopicPartition(*tp), timeout=1.0, cached=False)
            except KafkaException as error:
                log.debug("end offset of %s/%d not known: %s", *tp, error)
                continue
            if high is not None and high >= 0 and tp in self._lag:
                self._lag.ended(tp, high)

    def _consume(self, consumer: Consumer, max_records: int, timeout_s: float) -> list[CMessage]:
        self._serve_commits(consumer)
        self._rebalanced = False
        found = consumer.consume(max_records, timeout_s)
        if self._rebalanced:
            found = _latest_reads(found)
        self._serve_commits(consumer)
        return found

    def lag(self) -> int:
        return self._lag.total()

    async def commit(self, offsets: dict[TP, int]) -> None:
        assert self._consumer is not None and self._loop is not None
        consumer = self._consumer
        committing = [CTopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
        reply: Future[Any] = Future()
        self._commits.put((committing, reply))
        # Made on the consumer thread: after the consume() in progress, or by the revocation in progress.
        self._loop.run_in_executor(self._thread, self._serve_commits, consumer)
        try:
            results = await asyncio.wrap_future(reply)
        except (KafkaException, RuntimeError) as error:  # RuntimeError: the consumer is closed
            raise KafkaError(f"commit failed: {error}") from error
        failed = [tp for tp in results or () if tp.error is not None]
        if failed:
            raise KafkaError(f"commit failed for {len(failed)} partitions: {failed[0].error}")
        self._lag.committed(offsets)

    async def refetch(self, where: Coordinates) -> SourceMessage | None:
        return await read_at(self._bootstrap_servers, where)

    def pause(self) -> None:
        self._paused = True
        if self._consumer is not None:
            self._consumer.pause(self._consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        if self._consumer is not None:
            self._consumer.resume(self._consumer.assignment())

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._run(self._consumer.close)  # leaves the group: revocation runs first
            self._consumer = None
        self._thread.shutdown(wait=False)


async def _assigned(listener: AssignmentListener, partitions: set[TP]) -> None:
    listener.assigned(partitions)


def _latest_reads(found: list[CMessage]) -> list[CMessage]:
    """Messages of a consume() during which a rebalance ran, without those a partition had already fetched
    before it was revoked and assigned again in that call: its reading restarts from the committed offset,
    so they come again (after an offset going back)."""
    restarts: dict[tuple[str, int], int] = {}  # partition → index of its last restart
    last: dict[tuple[str, int], int] = {}
    for index, message in enumerate(found):
        if message.error() is not None:
            continue
        tp, offset = (message.topic(), message.partition()), message.offset()
        if offset <= last.get(tp, -1):
            restarts[tp] = index
        last[tp] = offset
    if not restarts:
        return found
    return [m for i, m in enumerate(found) if m.error() is not None
            or i >= restarts.get((m.topic(), m.partition()), 0)]  # fmt: skip


def _names(partitions: set[TP]) -> str:
    return ", ".join(f"{topic}/{partition}" for topic, partition in sorted(partitions)) or "none"


def _log_error(message: CMessage) -> None:
    log.warning("consumer error on %s/%s: %s", message.topic(), message.partition(), message.error())
