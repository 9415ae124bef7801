"""The recordings sink loop: replay messages → per-session buffers → blocks + metadata → commit.

Guarantees:
- A position is committed only once every snapshot item before it is in a stored block whose
  `session_replay_events` row is written (object first, row second), or in the DLQ.
- After a crash the source re-reads from the committed position. Before using the first message
  of a partition, the sink asks ClickHouse which offsets of that partition are already in blocks
  (per session) and skips those messages: nothing is stored twice. A block's key is its first
  offset, so a block written without its row (crash between the two) is overwritten, not doubled.
- Memory is bounded: a session's buffer becomes a block at `block_max_bytes` (a long session is
  many blocks), and when all buffers together pass `buffer_max_bytes` the largest is stored early.
- Storage or ClickHouse down: the source is paused (the consumer stays in its group, lag grows,
  `ready` is False with the reason) and the write is retried with backoff until it succeeds.
- Rebalances: aiokafka calls `revoked` from its own task, concurrently with the loop. One lock
  serialises them: a revocation waits for the loop's step (fetch, add, flush, commit) to finish,
  then stores and commits what is left of its partitions, so no buffer is flushed twice and no
  offset is committed before its message is in a buffer. A failed commit (the group rebalancing)
  is retried with the next one; the revocation's own commit covers the revoked partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from gateway.clickhouse.writer import WriteError
from gateway.core.readiness import Health
from gateway.metrics.recordings import (
    BLOCK_BYTES,
    BLOCKS_STORED,
    BUFFERED_BYTES,
    ITEMS_SKIPPED,
    ITEMS_STORED,
    READY,
    STORE_FAILURES,
)
from gateway.recordings.blocks import SessionBuffer, encode_block
from gateway.recordings.items import parse_message
from gateway.recordings.metadata import ReplayEvents
from gateway.recordings.storage import BlockStore, StorageError
from gateway.sinkworker.dlq import DeadLetters
from gateway.sinkworker.rows import Rejected
from gateway.sinkworker.sources import SpoolMessage
from gateway.sinkworker.teams import TeamResolver, UnknownToken
from gateway.spool.format import HEADER_SIZE

log = logging.getLogger(__name__)
SPOOL_STREAM_BITS = 40  # a spool record's partition is spool << 40 | segment (sinkworker/sources.py)
PUTS_IN_FLIGHT = 8  # blocks compressed and stored at once (S3 puts are latency-bound)
ROWS_PER_INSERT = 10_000  # metadata rows (blocks) per INSERT


@dataclass(frozen=True, slots=True)
class SinkConfig:
    topic: str
    block_max_bytes: int = 8 << 20
    block_max_age_s: float = 10.0
    buffer_max_bytes: int = 256 << 20
    fetch_max_records: int = 500
    retry_base_s: float = 0.2
    retry_max_s: float = 10.0
    spool: bool = False  # positions are spool byte positions, not Kafka offsets


class RecordingsSink:
    def __init__(self, source: Any, store: BlockStore, events: ReplayEvents, dead_letters: DeadLetters,
                 teams: TeamResolver, config: SinkConfig) -> None:
        self._source = source
        self._store = store
        self._events = events
        self._dlq = dead_letters
        self._teams = teams
        self._config = config
        self._buffers: dict[tuple[int, str], SessionBuffer] = {}
        self._resume: dict[tuple[int, str], int] = {}  # where to re-read a buffer from (its first record)
        self._last: dict[int, tuple[int, int]] = {}  # stream → (partition, offset) of the last message consumed
        self._committed: dict[int, tuple[int, int]] = {}
        self._guard: dict[int, dict[str, int]] = {}  # partition → session → last offset already stored
        self._buffered = 0
        self._lock = asyncio.Lock()  # the loop's step or a revocation, never both (module doc)
        self.health = Health(READY.set)  # what /ready on --recordings-http-port answers
        self.items_stored = 0
        self.clean_exit = True

    # Source callbacks (Kafka rebalances) --------------------------------------------------------
    def assigned(self, partitions: set[tuple[str, int]]) -> None:
        for _, partition in partitions:
            self._guard.pop(partition, None)

    async def revoked(self, partitions: set[tuple[str, int]]) -> None:
        gone = {partition for _, partition in partitions}
        async with self._lock:
            await self._flush([key for key in self._buffers if key[0] in gone], None)
            await self._commit()
            for partition in gone:
                self._guard.pop(partition, None)
                self._last.pop(partition, None)
                self._committed.pop(partition, None)

    # Main loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self._source.start(self)
        try:
            try:  # once stopped, one attempt each: on SIGTERM during an outage, exit and re-read them next time
                while not stop.is_set():
                    async with self._lock:  # a fetch too: what it returns was fetched for the current assignment
                        messages = await self._source.fetch(0.2, self._config.fetch_max_records)
                        await self._consume(messages, stop)
                        await self._flush_due(stop)
                        await self._commit()
                async with self._lock:
                    await self._flush(list(self._buffers), stop)
                    await self._commit()
            except (StorageError, WriteError, OSError) as exc:
                if not stop.is_set():
                    raise
                log.warning("recordings sink stopped with %d sessions unstored (re-read on restart): %s",
                            len(self._buffers), exc)
                self.clean_exit = False
        finally:
            await self._source.stop()

    async def _consume(self, messages: Sequence[Any], stop: asyncio.Event | None) -> None:
        dead: list[tuple[Any, Rejected]] = []
        for message in messages:
            stream = self._stream(message.partition)
            start = self._start_of(message, self._last.get(stream))
            self._last[stream] = (message.partition, message.offset)
            if message.topic == self._config.topic:  # a spool holds every topic; only replay records count
                await self._add(message, start, dead, stop)
                await asyncio.sleep(0)  # through a backlog, a message at a time: /metrics and /ready stay live
        if dead:
            await self._retrying("dead letters", lambda: self._dlq.send(dead), stop)

    async def _add(
        self, message: Any, start: int, dead: list[tuple[Any, Rejected]], stop: asyncio.Event | None
    ) -> None:
        try:
            batch = parse_message(message)
            token = message_token(message, batch.token)
            team_id = self._teams.team_id(token)
        except Rejected as rejected:
            dead.append((message, rejected))
            return
        except UnknownToken as exc:
            dead.append((message, Rejected("unknown_token", str(exc))))
            return
        for item, why in batch.rejected:
            dead.append((_item_message(message, batch.session_id, item), Rejected("invalid_snapshot_item", why)))
        if not batch.events:
            return
        stored = await self._stored(message.partition, message.offset, stop)
        if message.offset <= stored.get(batch.session_id, -1):
            ITEMS_SKIPPED.inc(len(batch.events))
            return
        key = (message.partition, batch.session_id)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = SessionBuffer(
                team_id, batch.session_id, batch.distinct_id, token, batch.source, self._config.topic,
                message.partition, message.offset)
            self._resume[key] = start
        before = buffer.size
        buffer.add(message.offset, batch)
        self._buffered += buffer.size - before
        if buffer.size >= self._config.block_max_bytes:
            await self._flush([key], stop)
        while self._buffered > self._config.buffer_max_bytes and self._buffers:
            await self._flush([max(self._buffers, key=lambda k: self._buffers[k].size)], stop)
        BUFFERED_BYTES.set(self._buffered)

    def _start_of(self, message: Any, previous: tuple[int, int] | None) -> int:
        """The position to re-read `message` from: Kafka's offset; in a spool, where its frame starts
        (the end of the previous frame, or the segment's start; re-reading more is safe, see above)."""
        if not self._config.spool:
            return message.offset
        return previous[1] + 1 if previous is not None and previous[0] == message.partition else HEADER_SIZE

    async def _stored(self, partition: int, offset: int, stop: asyncio.Event | None) -> dict[str, int]:
        guard = self._guard.get(partition)
        if guard is None:
            guard = self._guard[partition] = await self._retrying(
                "metadata", lambda: self._events.stored_offsets(self._config.topic, partition, offset), stop)
        return guard

    async def _flush_due(self, stop: asyncio.Event) -> None:
        now = time.monotonic()
        await self._flush([k for k, b in self._buffers.items() if now - b.started >= self._config.block_max_age_s],
                          stop)

    async def _flush(self, keys: list[tuple[int, str]], stop: asyncio.Event | None) -> None:
        """Store the buffers as blocks, then their metadata rows in one INSERT (each retried until it
        succeeds)."""
        buffers = [self._buffers[key] for key in keys]
        for start in range(0, len(buffers), PUTS_IN_FLIGHT):
            await self._store_blocks(buffers[start:start + PUTS_IN_FLIGHT], stop)
        for start in range(0, len(buffers), ROWS_PER_INSERT):
            rows = buffers[start:start + ROWS_PER_INSERT]
            await self._retrying("metadata", lambda rows=rows: self._events.insert(rows), stop)  # type: ignore[misc]
        for key, buffer in zip(keys, buffers, strict=True):
            del self._buffers[key]
            del self._resume[key]
            self._buffered -= buffer.size
            self._guard.setdefault(key[0], {})[buffer.session_id] = buffer.last_offset
            ITEMS_STORED.inc(buffer.stats.event_count)
            self.items_stored += buffer.stats.event_count
        BUFFERED_BYTES.set(self._buffered)

    async def _store_blocks(self, buffers: list[SessionBuffer], stop: asyncio.Event | None) -> None:
        """Compress (in threads: cramjam releases the GIL) and put a few blocks at once; on a failure all
        of them are put again (a put overwrites)."""
        blocks = await asyncio.gather(*(asyncio.to_thread(encode_block, buffer.chunks) for buffer in buffers))
        await self._retrying("storage", lambda: asyncio.gather(
            *(self._store.put(buffer.key, data) for buffer, data in zip(buffers, blocks, strict=True))), stop)
        BLOCKS_STORED.inc(len(blocks))
        BLOCK_BYTES.inc(sum(map(len, blocks)))

    async def _commit(self) -> None:
        """Per stream: up to the first unstored buffer, else past the last message consumed."""
        positions: dict[int, tuple[int, int]] = {}
        for stream, (partition, offset) in self._last.items():
            positions[stream] = (partition, offset + 1)
        for (partition, _), resume in self._resume.items():
            stream = self._stream(partition)
            if (partition, resume) < positions.get(stream, (partition, resume + 1)):
                positions[stream] = (partition, resume)
        changed = {(self._config.topic, partition): offset for stream, (partition, offset) in positions.items()
                   if self._committed.get(stream) != (partition, offset)}
        if changed:
            try:
                await self._retrying("commit", lambda: self._source.commit(changed), None)
            except KafkaError as exc:  # e.g. the group is rebalancing: the next commit (or `revoked`) retries
                log.warning("recordings offset commit failed, retried with the next one: %r", exc)
                return
            self._committed.update({self._stream(p): (p, o) for (_, p), o in changed.items()})

    def _stream(self, partition: int) -> int:
        return partition >> SPOOL_STREAM_BITS if self._config.spool else partition

    async def _retrying(self, what: str, call: Callable[[], Any], stop: asyncio.Event | None) -> Any:
        """Run `call` until it succeeds; meanwhile the source is paused and readiness is down."""
        delay = self._config.retry_base_s
        paused = False
        try:
            while True:
                try:
                    result = await call()
                    break
                except (StorageError, WriteError, OSError) as exc:
                    STORE_FAILURES.labels(what).inc()
                    if stop is not None and stop.is_set():
                        raise
                    if self.health.failing(f"{what}: {str(exc)[:300]}"):
                        log.warning("recordings %s unavailable, pausing consumption: %s", what, exc)
                    if not paused:
                        self._source.pause()
                        paused = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._config.retry_max_s)
        finally:
            if paused:
                self._source.resume()
        if self.health.recovered():
            log.info("recordings %s available again, resuming", what)
        return result


def message_token(message: Any, fallback: str) -> str:
    for name, value in message.headers or ():
        if name == "token":
            return value.decode(errors="replace")
    return fallback


def _item_message(message: Any, session_id: str, item: Any) -> SpoolMessage:
    """A dead letter for one bad item of an otherwise good message."""
    value = orjson.dumps({"$session_id": session_id, "item": item}, option=orjson.OPT_NON_STR_KEYS)
    return SpoolMessage(message.topic, message.partition, message.offset, message.timestamp, message.key,
                        value, message.headers)
