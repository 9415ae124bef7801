"""The sink loop: consume, encode, batch, insert (several in flight), DLQ, commit.

Guarantees: offsets are committed only after the rows (and dead letters) of every message before
them are stored; retried inserts reuse a deterministic dedup token; re-read messages whose rows
are already stored are skipped (`replay.py`). On revocation, everything consumed from the source
is stored and committed before the partitions are released. Backpressure: when the current batch
is full and every insert slot is busy, the source is paused (the consumer keeps polling, so the
group does not evict it) until a slot frees.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import Protocol, TypeVar

from aiokafka.errors import KafkaError

from gateway.clickhouse.writer import ErrorKind, WriteError, Writer
from gateway.core.readiness import Health
from gateway.metrics.sink import (
    BATCH_BYTES,
    BATCH_ROWS,
    CHECK_EVENTS_DROPPED,
    COMMITS,
    INGESTION_LAG,
    INSERT_ERRORS,
    INSERT_SECONDS,
    INSERTS_IN_FLIGHT,
    MESSAGES_CONSUMED,
    MESSAGES_SKIPPED,
    READY,
    ROWS_INSERTED,
    ROWS_SKIPPED_REPLAY,
)
from gateway.sinkworker.batch import Batch, Coordinates, FlushPolicy, TopicPartition
from gateway.sinkworker.commits import CommitTracker
from gateway.sinkworker.dlq import DeadLetters
from gateway.sinkworker.frames import SpooledFrame, first_offset
from gateway.sinkworker.replay import ReplayGuard, stored_offsets
from gateway.sinkworker.rows import ROWBINARY_COLUMNS, Rejected, SourceMessage
from gateway.sinkworker.sources import Source

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRYABLE = (WriteError, KafkaError, OSError)
WAIT_S = 0.05
LAG_SAMPLES_PER_BATCH = 64
_partition_of: Callable[[SourceMessage], TopicPartition] = attrgetter("topic", "partition")


class Encoder(Protocol):
    """What the worker needs of a row encoder (`RowEncoder`; tests wrap it)."""

    def encode_binary(self, message: SourceMessage) -> bytes | None: ...

    def frame_rows(self, frame: SpooledFrame) -> list[bytes] | None:
        """The rows of a spooled request read whole, or None: then its records are encoded one by one."""
        ...


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    table: str  # quoted `db`.`table`
    policy: FlushPolicy = field(default_factory=FlushPolicy)
    max_in_flight: int = 2
    fetch_max_records: int = 20_000
    retry_base_s: float = 0.2
    retry_max_s: float = 30.0
    shutdown_timeout_s: float = 60.0
    dedup_retries: bool = False  # the table drops retried identical blocks itself (Replicated engines)


class SinkWorker:
    """Moves messages from a Source into a Writer's events table."""

    def __init__(
        self,
        source: Source,
        writer: Writer,
        dead_letters: DeadLetters,
        encoder: Encoder,
        config: WorkerConfig,
    ) -> None:
        self._source = source
        self._writer = writer
        self._dlq = dead_letters
        self._encoder = encoder
        self._config = config
        self._tracker = CommitTracker()
        self._guard = ReplayGuard()
        self._slots = asyncio.Semaphore(max(1, config.max_in_flight))
        self._tasks: set[asyncio.Task[None]] = set()
        self._commit_lock = asyncio.Lock()
        self._ready: dict[TopicPartition, int] = {}
        self._assigned: set[TopicPartition] | None = None  # None: the source has no assignment
        self._seq = 0
        self._batch = Batch(0)
        self._paused = False
        self._failure: BaseException | None = None
        self.clean_exit = True
        self.rows_written = 0
        self.health = Health(READY.set)  # what /ready on --metrics-port answers

    # AssignmentListener -------------------------------------------------------------------------
    def assigned(self, partitions: set[TopicPartition]) -> None:
        self._assigned = (self._assigned or set()) | partitions
        self._guard.reset(partitions)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        self._flush()
        await self._tracker.wait_idle()
        await self._commit()
        if self._assigned is not None:
            self._assigned -= partitions
        self._guard.reset(partitions)

    # Main loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then store and commit what was consumed (bounded wait)."""
        await self._source.start(self)
        try:
            while not stop.is_set() and self._failure is None:
                await self._poll()
        finally:
            await self._drain()
            await self._source.stop()
        if self._failure is not None:
            raise self._failure

    async def _poll(self) -> None:
        policy = self._config.policy
        blocked = self._batch.full(policy) and self._slots.locked()
        if blocked != self._paused:
            (self._source.pause if blocked else self._source.resume)()
            self._paused = blocked
        timeout = policy.max_age_s
        if not self._batch.empty:
            timeout = self._batch.created + policy.max_age_s - time.monotonic()
        # Never poll with a zero timeout: an overdue batch waiting for a slot would spin the loop.
        messages = await self._source.fetch(max(WAIT_S, timeout), self._config.fetch_max_records)
        # A full fetch means a backlog: then batches flush when full, not when old (small inserts cost
        # the server several times more per row, and the rows wait behind the backlog anyway).
        backlog = bool(messages) and await self._ingest(messages) >= self._config.fetch_max_records
        if self._batch.due(policy, time.monotonic(), backlog) and not self._slots.locked():
            self._flush()
        await asyncio.sleep(0)  # fetches served from buffers do not yield: let store tasks run

    async def _ingest(self, messages: Sequence[SourceMessage]) -> int:
        """Add the messages to the batch; returns how many records they hold."""
        runs = [list(run) for _, run in groupby(messages, key=_partition_of)]
        first: dict[TopicPartition, int] = {}
        for run in runs:
            first.setdefault(_partition_of(run[0]), first_offset(run[0]))
        pending = self._guard.to_check(first)
        if pending:
            found = await self._retrying(lambda: stored_offsets(self._writer, self._config.table, pending))
            self._guard.loaded(set(pending), found)
        assigned = self._assigned
        batch = self._batch  # taken after the await: a revocation may have flushed the previous one
        topics: Counter[str] = Counter()
        records_before = batch.records
        encode, frame_rows = self._encoder.encode_binary, self._encoder.frame_rows
        for run in runs:
            tp = _partition_of(run[0])
            if assigned is not None and tp not in assigned:
                continue  # revoked while we looked up stored offsets: the new owner reads it
            elsewhere, records = batch.elsewhere, batch.records
            replayed, checks = batch.add_run(run, encode, self._guard.stored_in(tp, run[-1].offset), frame_rows)
            topics[tp[0]] += len(run) + batch.records - records
            if batch.elsewhere > elsewhere:
                MESSAGES_SKIPPED.labels(tp[0]).inc(batch.elsewhere - elsewhere)
            if replayed:
                ROWS_SKIPPED_REPLAY.inc(replayed)
            if checks:
                CHECK_EVENTS_DROPPED.inc(checks)
        for topic, count in topics.items():
            MESSAGES_CONSUMED.labels(topic).inc(count)
        return len(messages) + batch.records - records_before

    def _flush(self) -> None:
        """Hand the current batch to a store task (which waits for an insert slot)."""
        batch = self._batch
        if batch.empty:
            return
        self._seq += 1
        self._batch = Batch(self._seq)
        self._tracker.submitted(batch)
        INSERTS_IN_FLIGHT.set(self._tracker.in_flight)
        task = asyncio.create_task(self._store(batch))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()

    async def _store(self, batch: Batch) -> None:
        async with self._slots:
            if batch.rejects:
                await self._retrying(lambda: self._dlq.send(batch.rejects))
            if batch.rows:
                BATCH_ROWS.observe(len(batch.rows))
                BATCH_BYTES.observe(batch.size)
                await self._insert(batch.rows, batch.sources, batch.dedup_token())
        self._merge_ready(self._tracker.done(batch))
        INSERTS_IN_FLIGHT.set(self._tracker.in_flight)
        await self._commit()

    async def _insert(self, rows: list[bytes], sources: list[Coordinates], token: str) -> None:
        """Insert until stored; bisect batches the server refuses as bad data down to single rows."""
        attempt = 0
        while rows:
            started = time.perf_counter()
            try:
                await self._writer.insert(self._config.table, rows, token, ROWBINARY_COLUMNS)
            except WriteError as error:
                INSERT_ERRORS.labels(error.kind.value).inc()
                if error.kind is ErrorKind.BAD_DATA:
                    await self._split(rows, sources, token, error)
                    return
                log.warning("insert of %d rows failed (attempt %d): %s", len(rows), attempt + 1, error)
                self.health.failing(f"inserts fail: {str(error)[:300]}")
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                if not (self._writer.caps.dedup_token or self._config.dedup_retries):
                    rows, sources = await self._unstored(rows, sources)
                continue
            INSERT_SECONDS.observe(time.perf_counter() - started)
            if self.health.recovered():
                log.info("inserts succeed again")
            ROWS_INSERTED.inc(len(rows))
            self.rows_written += len(rows)
            _observe_lag(sources)
            return

    async def _split(self, rows: list[bytes], sources: list[Coordinates], token: str, error: WriteError) -> None:
        if len(rows) == 1:
            await self._dead_letter(sources[0], Rejected("rejected_by_clickhouse", str(error)))
            return
        middle = len(rows) // 2
        await self._insert(rows[:middle], sources[:middle], token + "/0")
        await self._insert(rows[middle:], sources[middle:], token + "/1")

    async def _dead_letter(self, where: Coordinates, error: Rejected) -> None:
        """The batch kept no message values: read the message again to forward it whole."""
        message = await self._retrying(lambda: self._source.refetch(where))
        if message is None:
            log.error("message %s/%d@%d refused by ClickHouse is no longer in the source; its DLQ entry "
                      "has no value", *where[:3])
            message = MessageGone(*where)
        await self._retrying(lambda: self._dlq.send([(message, error)]))

    async def _unstored(
        self, rows: list[bytes], sources: list[Coordinates]
    ) -> tuple[list[bytes], list[Coordinates]]:
        """Without dedup tokens, drop rows a failed-but-maybe-applied insert already stored."""
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for where in sources:
            tp = (where.topic, where.partition)
            first, last = ranges.get(tp, (where.offset, where.offset))
            ranges[tp] = (min(first, where.offset), max(last, where.offset))
        found = await self._retrying(lambda: stored_offsets(self._writer, self._config.table, ranges))
        keep = [
            i
            for i, where in enumerate(sources)
            if where.offset not in found.get((where.topic, where.partition), ())
        ]
        ROWS_SKIPPED_REPLAY.inc(len(sources) - len(keep))
        return [rows[i] for i in keep], [sources[i] for i in keep]

    # Commits ------------------------------------------------------------------------------------
    def _merge_ready(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self._ready[tp] = max(offset, self._ready.get(tp, offset))

    async def _commit(self) -> None:
        async with self._commit_lock:
            if not self._ready:
                return
            offsets, self._ready = self._ready, {}
            try:
                await self._source.commit(offsets)
            except (KafkaError, OSError) as error:
                COMMITS.labels("failed").inc()
                log.warning("offset commit failed, will retry with the next one: %r", error)
                if self._assigned is not None:
                    offsets = {tp: off for tp, off in offsets.items() if tp in self._assigned}
                self._merge_ready(offsets)
                return
            COMMITS.labels("ok").inc()

    async def _drain(self) -> None:
        """Store and commit everything consumed, giving up after the shutdown timeout."""
        self._flush()
        try:
            await asyncio.wait_for(self._tracker.wait_idle(), self._config.shutdown_timeout_s)
        except TimeoutError:
            self.clean_exit = False
            log.error(
                "shutdown timeout: %d batches not stored; they will be re-read", self._tracker.in_flight
            )
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tracker.abandon()  # else the revocation of source.stop() waits for them forever
        await self._commit()

    # Retries ------------------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        delay = min(self._config.retry_max_s, self._config.retry_base_s * 2**attempt)
        return delay * (0.5 + random.random() / 2)

    async def _retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` until it succeeds, backing off on transient errors."""
        attempt = 0
        while True:
            try:
                return await operation()
            except RETRYABLE as error:
                log.warning("retrying after error (attempt %d): %r", attempt + 1, error)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1


@dataclass(frozen=True, slots=True)
class MessageGone:
    """A dead letter whose message the source no longer has: its coordinates only."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None = None
    value: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()


def _observe_lag(sources: list[Coordinates], samples: int = LAG_SAMPLES_PER_BATCH) -> None:
    """A sample per batch is enough for percentiles and keeps the cost off the per-row path."""
    stored_ms = time.time() * 1000
    for where in sources[:: max(1, len(sources) // samples)]:
        INGESTION_LAG.observe(max(0.0, stored_ms - where.timestamp) / 1000)
