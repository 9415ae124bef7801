"""Where messages come from: a Kafka consumer group, or a local spool directory (embedded mode).

Both yield objects with ConsumerRecord's attributes and take commits as {(topic, partition): next
offset}. In the spool, a record's "partition" is its segment number and its "offset" the byte
position of the last byte of its frame, so offsets are unique, increase in read order, survive
restarts, and `offset + 1` is where the next frame starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from gateway.sinkworker.batch import TopicPartition as TP
from gateway.sinkworker.metrics import CONSUMER_LAG
from gateway.sinkworker.rows import SourceMessage
from gateway.spool import SpoolPosition, SpoolReader
from gateway.spool.crypto import OVERHEAD, Keyring
from gateway.spool.format import HEADER_SIZE, encode_record
from gateway.spool.segment import Stop, list_segments, scan_segment, segment_name

log = logging.getLogger(__name__)


class AssignmentListener(Protocol):
    """The worker's side of partition (re)assignment."""

    def assigned(self, partitions: set[TP]) -> None:
        """Partitions this member now reads (sources without assignment never call this)."""
        ...

    async def revoked(self, partitions: set[TP]) -> None:
        """Store and commit everything consumed from these partitions before returning."""
        ...


class Source(Protocol):
    async def start(self, listener: AssignmentListener) -> None: ...

    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[SourceMessage]: ...

    async def commit(self, offsets: dict[TP, int]) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    async def stop(self) -> None: ...


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, listener: AssignmentListener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._listener.revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._listener.assigned({(tp.topic, tp.partition) for tp in assigned})


class KafkaSource:
    """A manually committing member of a consumer group over the capture topics."""

    def __init__(self, consumer: AIOKafkaConsumer, topics: Sequence[str]) -> None:
        self._consumer = consumer
        self._topics = list(topics)

    @classmethod
    def create(
        cls,
        bootstrap_servers: str,
        topics: Sequence[str],
        group_id: str,
        session_timeout_ms: int = 10_000,
        fetch_max_bytes: int = 64 * 1024 * 1024,
    ) -> KafkaSource:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, session_timeout_ms // 4),
            fetch_max_bytes=fetch_max_bytes,
            max_partition_fetch_bytes=min(fetch_max_bytes, 8 * 1024 * 1024),
        )
        return cls(consumer, topics)

    async def start(self, listener: AssignmentListener) -> None:
        self._consumer.subscribe(topics=self._topics, listener=_Rebalance(listener))
        await self._consumer.start()

    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[SourceMessage]:
        batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        messages: list[SourceMessage] = []
        for tp, records in batches.items():
            messages += records
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(highwater - records[-1].offset - 1)
        return messages

    async def commit(self, offsets: dict[TP, int]) -> None:
        await self._consumer.commit(
            {TopicPartition(topic, part): off for (topic, part), off in offsets.items()}
        )

    def pause(self) -> None:
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._consumer.resume(*self._consumer.paused())

    async def stop(self) -> None:
        await self._consumer.stop()


@dataclass(slots=True, frozen=True)
class SpoolMessage:
    """A spooled record with the attributes of a ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class SpoolSource:
    """Drains a spool directory with a named, persisted cursor (default reader name `sink`)."""

    POLL_INTERVAL_S = 0.1

    def __init__(self, directory: str | Path, name: str = "sink", keyring: Keyring | None = None) -> None:
        self._directory = Path(directory)
        self._name = name
        self._keyring = keyring  # None: no keys, an encrypted segment raises SpoolKeyError
        self._reader: SpoolReader | None = None
        self._position: SpoolPosition | None = None
        self._paused = False

    async def start(self, listener: AssignmentListener) -> None:
        self._reader = await asyncio.to_thread(SpoolReader, self._directory, self._name, self._keyring)
        self._position = self._reader.committed

    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[SourceMessage]:
        messages = [] if self._paused else await asyncio.to_thread(self._read, max_records)
        if not messages:
            await asyncio.sleep(min(timeout_s, self.POLL_INTERVAL_S))
        return messages

    def _read(self, max_records: int) -> list[SpoolMessage]:
        """Read up to `max_records`, walking segments like SpoolReader but keeping frame positions."""
        now_ms = int(time.time() * 1000)
        messages: list[SpoolMessage] = []
        while len(messages) < max_records:
            segments = list_segments(self._directory)
            if not segments:
                break
            position = self._settle(segments)
            scan = scan_segment(
                self._directory / segment_name(position.segment),
                position.offset,
                max_records=max_records - len(messages),
                keyring=self._keyring,
            )
            if scan.stop is Stop.MISSING:
                continue
            end = max(position.offset, HEADER_SIZE)
            overhead = OVERHEAD if scan.key_id else 0
            for record in scan.records:
                end += len(encode_record(record)) + overhead
                messages.append(
                    SpoolMessage(
                        record.topic,
                        position.segment,
                        end - 1,
                        now_ms,
                        record.key,
                        record.value,
                        record.headers,
                    )
                )
            self._position = SpoolPosition(position.segment, scan.end)
            if scan.stop is Stop.LIMIT or position.segment == segments[-1]:
                break
            if scan.stop in (Stop.CORRUPT, Stop.INCOMPLETE):
                log.error(
                    "spool segment %d damaged at %d (%s); skipping its rest",
                    position.segment,
                    scan.end,
                    scan.stop.value,
                )
            self._position = SpoolPosition(segments[segments.index(position.segment) + 1], HEADER_SIZE)
        return messages

    def _settle(self, segments: list[int]) -> SpoolPosition:
        """The read position, moved to the next existing segment if its own was deleted."""
        position = self._position
        if position is None or position.segment < segments[0]:
            return SpoolPosition(segments[0], HEADER_SIZE)
        if position.segment in segments:
            return position
        later = [number for number in segments if number > position.segment]
        if later:
            return SpoolPosition(later[0], HEADER_SIZE)
        log.warning("spool cursor segment %d is past the newest segment; restarting", position.segment)
        return SpoolPosition(segments[0], HEADER_SIZE)

    async def commit(self, offsets: dict[TP, int]) -> None:
        if offsets and self._reader is not None:
            segment, offset = max((part, off) for (_, part), off in offsets.items())
            await asyncio.to_thread(self._reader.commit, SpoolPosition(segment, offset))

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    async def stop(self) -> None:
        if self._reader is not None:
            await asyncio.to_thread(self._reader.close)
