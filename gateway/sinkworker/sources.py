"""Where messages come from: a Kafka consumer group, or local spools (embedded mode).

Both yield objects with ConsumerRecord's attributes and take commits as {(topic, partition): next
offset}. In a spool, a record's "offset" is the byte position of the last byte of its frame and its
"partition" names the spool and the segment: `spool.number << 40 | segment` (main/worker-0 is spool
number 0, so its partition is the plain segment number). Every worker's spool starts at segment 1,
so without the spool in it two spools would share positions, and the replay guard and insert dedup
tokens would take one spool's rows for the other's. Positions are unique, increase in read order
within a spool, survive restarts, and `offset + 1` is where the next frame starts.

A frame holding a spooled request yields its N records at the positions of the frame's last N bytes
(a frame is always longer than N bytes), so the last record's `offset + 1` is again where the next
frame starts. A commit inside such a frame persists the frame's start: after a restart its records
are read again, and the worker's replay guard skips those already stored. Such a frame is read as one
`SpooledFrame` (frames.py: the request's rows built in one pass) when its events go to one topic, else
as `SpooledEvent`s (spooled.py: the row is built from the event, the record only when asked for);
`refetch` gives the records themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from gateway.sinkworker.batch import Coordinates
from gateway.sinkworker.batch import TopicPartition as TP
from gateway.sinkworker.frames import SpooledFrame, spooled_messages
from gateway.sinkworker.lag import PartitionLag
from gateway.sinkworker.rows import SourceMessage
from gateway.sinkworker.spooled import SpooledEvent
from gateway.spool import SpoolPosition, SpoolReader
from gateway.spool.crypto import Keyring
from gateway.spool.format import HEADER_SIZE
from gateway.spool.layout import MAIN, SpoolId, identify, spools
from gateway.spool.reader import lag_bytes
from gateway.spool.segment import Scan, Stop, list_segments, scan_segment, segment_name

log = logging.getLogger(__name__)
SEGMENT_BITS = 40


def spool_partition(spool: SpoolId, segment: int) -> int:
    """The "partition" of a spool record: which spool and which segment (see the module doc)."""
    return spool.number << SEGMENT_BITS | segment


def split_partition(partition: int) -> tuple[SpoolId, int]:
    """(spool, segment) of a spool record's partition."""
    return SpoolId.from_number(partition >> SEGMENT_BITS), partition & ((1 << SEGMENT_BITS) - 1)


class AssignmentListener(Protocol):
    """The worker's side of partition (re)assignment."""

    def assigned(self, partitions: set[TP]) -> None:
        """Partitions this member now reads (sources without assignment never call this)."""
        ...

    async def revoked(self, partitions: set[TP]) -> None:
        """Store and commit everything consumed from these partitions before returning."""
        ...


class Source(Protocol):
    lag_unit: str

    async def start(self, listener: AssignmentListener) -> None: ...

    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[SourceMessage]: ...

    async def commit(self, offsets: dict[TP, int]) -> None: ...

    async def refetch(self, where: Coordinates) -> SourceMessage | None:
        """The message at `where` again (for the DLQ: batches keep no values); None if it is gone."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    async def stop(self) -> None: ...


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, listener: AssignmentListener, forget: Callable[[set[TP]], None]) -> None:
        self._listener = listener
        self._forget = forget

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = {(tp.topic, tp.partition) for tp in revoked}
        await self._listener.revoked(partitions)  # its last commits still count for these partitions
        self._forget(partitions)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._listener.assigned({(tp.topic, tp.partition) for tp in assigned})


def group_consumer(
    bootstrap_servers: str, group_id: str, session_timeout_ms: int, fetch_max_bytes: int, **config: Any
) -> AIOKafkaConsumer:
    """A consumer-group member that commits by hand and starts a new group at the earliest offset."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(100, session_timeout_ms // 4),
        fetch_max_bytes=fetch_max_bytes,
        max_partition_fetch_bytes=min(fetch_max_bytes, 8 * 1024 * 1024),
        **config,
    )


class KafkaSource:
    """A manually committing member of a consumer group on aiokafka (the recordings sink's base; the events
    sink consumes with `ConfluentSource`). Its lag (`lag`) counts messages not yet stored."""

    lag_unit = "messages"

    def __init__(self, consumer: AIOKafkaConsumer, topics: Sequence[str], bootstrap_servers: str,
                 lag: PartitionLag) -> None:
        self._consumer = consumer
        self._topics = list(topics)
        self._bootstrap_servers = bootstrap_servers
        self._lag = lag

    async def start(self, listener: AssignmentListener) -> None:
        self._consumer.subscribe(topics=self._topics, listener=_Rebalance(listener, self._lag.forget))
        await self._consumer.start()

    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[SourceMessage]:
        batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        messages: list[SourceMessage] = []
        for tp, records in batches.items():
            messages += records
            key = (tp.topic, tp.partition)
            self._lag.started(key, records[0].offset)
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self._lag.ended(key, highwater)
        return messages

    def lag(self) -> int:
        return self._lag.total()

    async def commit(self, offsets: dict[TP, int]) -> None:
        await self._consumer.commit(
            {TopicPartition(topic, part): off for (topic, part), off in offsets.items()}
        )
        self._lag.committed(offsets)

    async def refetch(self, where: Coordinates) -> SourceMessage | None:
        return await read_at(self._bootstrap_servers, where)

    def pause(self) -> None:
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._consumer.resume(*self._consumer.paused())

    async def stop(self) -> None:
        await self._consumer.stop()


async def read_at(bootstrap_servers: str, where: Coordinates, timeout_s: float = 10.0) -> SourceMessage | None:
    """One message by its coordinates, with a short-lived consumer outside any group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    tp = TopicPartition(where.topic, where.partition)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, where.offset)
        found = (await consumer.getmany(tp, timeout_ms=int(timeout_s * 1000), max_records=1)).get(tp, [])
    finally:
        await consumer.stop()
    return found[0] if found and found[0].offset == where.offset else None


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
    """Drains a spool directory with a named, persisted cursor (default reader name `sink`).

    `spool` is the directory's identity; by default taken from where it lies in a data dir, else
    main/worker-0. `foreign(topic)` names the records another reader of the spool consumes (an embedded
    spool's session recordings are `gateway recordings sink`'s, its events `gateway sink`'s): while this
    reader's cursor is the spool's only one, the segments it commits past are deleted only up to the first
    that held such a record, or that it did not read whole in this run (the other reader has not started
    yet, and must find them).
    """

    POLL_INTERVAL_S = 0.1
    lag_unit = "bytes"

    def __init__(
        self,
        directory: str | Path,
        name: str = "sink",
        keyring: Keyring | None = None,
        spool: SpoolId | None = None,
        foreign: Callable[[str], bool] | None = None,
    ) -> None:
        self._directory = Path(directory)
        self.spool = spool or identify(self._directory) or SpoolId(MAIN, 0)
        self._name = name
        self._keyring = keyring  # None: no keys, an encrypted segment raises SpoolKeyError
        self._reader: SpoolReader | None = None
        self._position: SpoolPosition | None = None
        self._paused = False
        # (segment, start, end) of frames read that hold several records, oldest first, until committed past.
        self._multi: deque[tuple[int, int, int]] = deque()
        self._foreign = foreign
        self._from_start: set[int] = set()  # segments this run began reading at their first frame
        self._held_foreign: set[int] = set()  # segments in which it read a record of `foreign`
        self._read_whole: set[int] = set()  # segments of `_from_start` it read to their end

    async def start(self, listener: AssignmentListener) -> None:
        self._reader = await asyncio.to_thread(SpoolReader, self._directory, self._name, self._keyring)
        self._position = self._reader.committed
        if self._foreign is not None and self._position is not None and self._position.offset > HEADER_SIZE:
            await asyncio.to_thread(self._look_behind, self._position)

    def _look_behind(self, cursor: SpoolPosition) -> None:
        """Read the cursor's segment up to the cursor (once, at start) for records of `foreign`, so the segment
        counts as read whole in this run when it holds none."""
        foreign = self._foreign
        assert foreign is not None
        path = self._directory / segment_name(cursor.segment)
        scan = scan_segment(
            path, HEADER_SIZE, max_bytes=cursor.offset - HEADER_SIZE, keyring=self._keyring, expand=spooled_messages
        )
        if scan.stop is Stop.MISSING:
            return
        if any(foreign(record.topic) for record in scan.records):
            self._held_foreign.add(cursor.segment)
        self._from_start.add(cursor.segment)

    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[SourceMessage]:
        messages = [] if self._paused else await self.read(max_records)
        if not messages:
            await asyncio.sleep(min(timeout_s, self.POLL_INTERVAL_S))
        return messages

    async def read(self, max_records: int) -> list[SourceMessage]:
        """What is there now, up to `max_records`, without waiting for more."""
        return await asyncio.to_thread(self._read, max_records)

    def _read(self, max_records: int) -> list[SourceMessage]:
        """Read up to `max_records` records (a SpooledFrame is one message of several), walking segments
        like SpoolReader but keeping frame positions."""
        now_ms = int(time.time() * 1000)
        messages: list[SourceMessage] = []
        records = 0
        while records < max_records:
            segments = list_segments(self._directory)
            if not segments:
                break
            position = self._settle(segments)
            scan = scan_segment(
                self._directory / segment_name(position.segment),
                position.offset,
                max_records=max_records - records,
                keyring=self._keyring,
                expand=spooled_messages,
            )
            if scan.stop is Stop.MISSING:
                continue
            if position.offset == HEADER_SIZE:
                self._from_start.add(position.segment)
            read = self._messages(position, scan, now_ms)
            foreign, segment = self._foreign, position.segment
            if foreign is not None and segment not in self._held_foreign and any(foreign(m.topic) for m in read):
                self._held_foreign.add(segment)
            messages += read
            records += len(scan.records)
            self._note_frames(position.segment, scan)
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
            if position.segment in self._from_start:
                self._read_whole.add(position.segment)
            self._position = SpoolPosition(segments[segments.index(position.segment) + 1], HEADER_SIZE)
        return messages

    def _messages(self, position: SpoolPosition, scan: Scan, now_ms: int) -> list[SourceMessage]:
        """The scanned records as messages, at the positions of their frame's last bytes (module doc)."""
        partition = spool_partition(self.spool, position.segment)
        messages: list[SourceMessage] = []
        records = scan.records
        index = 0
        for end, count in _frames(scan.ends):
            frame = records[index]
            index += count
            if type(frame) is SpooledFrame:  # a request read whole: one message
                messages.append(frame.placed(partition, end - count, now_ms))  # type: ignore[arg-type]
                continue
            for record, offset in zip(records[index - count : index], range(end - count, end), strict=True):
                messages.append(_message(record, partition, offset, now_ms))
        return messages

    def _note_frames(self, segment: int, scan: Scan) -> None:
        """Remember where frames of several records lie, so a commit inside one can go back to its start."""
        start = scan.end - scan.size
        for end, count in _frames(scan.ends):
            if count > 1:
                self._multi.append((segment, start, end))
            start = end

    async def refetch(self, where: Coordinates) -> SourceMessage | None:
        return await asyncio.to_thread(self._message_at, where)

    def _message_at(self, where: Coordinates) -> SourceMessage | None:
        spool, segment = split_partition(where.partition)
        if spool != self.spool:
            return None
        start = SpoolPosition(segment, HEADER_SIZE)
        scan = scan_segment(self._directory / segment_name(segment), HEADER_SIZE, keyring=self._keyring)
        found = [m for m in self._messages(start, scan, where.timestamp) if m.offset == where.offset]
        return found[0] if found else None

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
            partition, offset = max((part, off) for (_, part), off in offsets.items())
            spool, segment = split_partition(partition)
            if spool != self.spool:
                raise ValueError(f"commit for spool {spool.name} sent to {self.spool.name}")
            multi = self._multi
            while multi and (multi[0][0], multi[0][2]) <= (segment, offset):
                multi.popleft()
            if multi and multi[0][0] == segment and multi[0][1] < offset:
                offset = multi[0][1]  # inside a frame of several records: the cursor stays at its start
            deletable = None if self._foreign is None else self._read_whole - self._held_foreign
            await asyncio.to_thread(self._reader.commit, SpoolPosition(segment, offset), deletable)

    def lag(self) -> int:
        return lag_bytes(self._directory, self._position)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    async def stop(self) -> None:
        if self._reader is not None:
            await asyncio.to_thread(self._reader.close)


def _message(record: Any, partition: int, offset: int, now_ms: int) -> SourceMessage:
    if type(record) is SpooledEvent:
        return record.placed(partition, offset, now_ms)
    return SpoolMessage(record.topic, partition, offset, now_ms, record.key, record.value, record.headers)


def _frames(ends: list[int]) -> Iterator[tuple[int, int]]:
    """(end, record count) of each frame, from the per-record frame ends of a scan."""
    for end, records in groupby(ends):
        yield end, sum(1 for _ in records)


class DataDirSource:
    """Drains every main spool of a gateway data dir (one SpoolSource per worker spool).

    Spools that appear later (the gateway restarted with more workers) are picked up by a rescan.
    Reads take turns across spools so a busy one does not starve the others.
    """

    POLL_INTERVAL_S = 0.1
    RESCAN_INTERVAL_S = 5.0
    lag_unit = "bytes"

    def __init__(
        self,
        data_dir: str | Path,
        name: str = "sink",
        keyring: Keyring | None = None,
        foreign: Callable[[str], bool] | None = None,
    ) -> None:
        self._data_dir = Path(data_dir)
        self._name = name
        self._keyring = keyring
        self._foreign = foreign  # see SpoolSource
        self._sources: dict[SpoolId, SpoolSource] = {}
        self._turn = 0
        self._scanned = 0.0
        self._paused = False

    @property
    def spools(self) -> list[SpoolId]:
        return sorted(self._sources)

    async def start(self, listener: AssignmentListener) -> None:
        await self._rescan()

    async def _rescan(self) -> None:
        self._scanned = time.monotonic()
        for spool, directory in spools(self._data_dir, (MAIN,)):
            if spool not in self._sources:
                source = SpoolSource(directory, self._name, self._keyring, spool, self._foreign)
                await source.start(_NO_LISTENER)
                self._sources[spool] = source
                log.info("draining spool %s (%s)", spool.name, directory)

    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[SourceMessage]:
        if time.monotonic() - self._scanned >= self.RESCAN_INTERVAL_S:
            await self._rescan()
        messages: list[SourceMessage] = []
        records = 0
        if not self._paused:
            sources = list(self._sources.values())
            self._turn = (self._turn + 1) % max(1, len(sources))
            for source in sources[self._turn :] + sources[: self._turn]:
                if records >= max_records:
                    break
                read = await source.read(max_records - records)
                messages += read
                records += sum(m.count if type(m) is SpooledFrame else 1 for m in read)  # type: ignore[attr-defined]
        if not messages:
            await asyncio.sleep(min(timeout_s, self.POLL_INTERVAL_S))
        return messages

    async def commit(self, offsets: dict[TP, int]) -> None:
        by_spool: dict[SpoolId, dict[TP, int]] = {}
        for (topic, partition), offset in offsets.items():
            spool, _ = split_partition(partition)
            by_spool.setdefault(spool, {})[(topic, partition)] = offset
        for spool, part in by_spool.items():
            await self._sources[spool].commit(part)

    async def refetch(self, where: Coordinates) -> SourceMessage | None:
        source = self._sources.get(split_partition(where.partition)[0])
        return await source.refetch(where) if source is not None else None

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    async def stop(self) -> None:
        for source in self._sources.values():
            await source.stop()

    def lag(self) -> int:
        return sum(source.lag() for source in self._sources.values())


class _NoListener:
    """Spool sources have no partition assignment: nothing to tell."""

    def assigned(self, partitions: set[TP]) -> None:
        return None

    async def revoked(self, partitions: set[TP]) -> None:
        return None


_NO_LISTENER = _NoListener()
