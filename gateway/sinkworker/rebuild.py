"""`gateway sink --rebuild --from TIME [--to TIME]`: re-read the topics into a table (disaster recovery).

Each partition is read from the offset of `--from` (Kafka's `offsets_for_times`) up to the offset of
`--to`, or to its end as seen at start, so a rebuild finishes even while capture keeps writing. The
partitions are assigned, not subscribed, under the consumer group `GROUP_ID-rebuild`: offsets are
committed there, never to the live sink's group. Rows go through the live sink's worker, so the
rebuild is exactly-once in the target the same way (dedup tokens, and the replay check skips
offsets already in the table: a rebuild run again after an interruption continues where it was).
A `--from` before what Kafka still holds is refused, naming the earliest time still available.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from gateway.core.startup import CONFIG_EXIT, StartupError
from gateway.sinkworker.batch import Coordinates
from gateway.sinkworker.batch import TopicPartition as TP
from gateway.sinkworker.rows import SourceMessage
from gateway.sinkworker.sources import AssignmentListener, read_at

log = logging.getLogger(__name__)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class RebuildPlan:
    """Per partition: where the rebuild starts and the offset it stops before."""

    start: dict[TopicPartition, int]
    stop: dict[TopicPartition, int]

    @property
    def messages(self) -> int:
        return sum(self.stop[tp] - offset for tp, offset in self.start.items())


class RebuildSource:
    """A Source over fixed offset ranges of the topics; calls `on_finished` once every range is read."""

    lag_unit = "messages"

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        group_id: str,
        start: datetime,
        end: datetime | None,
        on_finished: Callable[[], None],
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._topics = list(topics)
        self._start, self._end = start, end
        self._on_finished = on_finished
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False,
            fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024,
        )  # fmt: skip
        self.plan = RebuildPlan({}, {})
        self._next: dict[TopicPartition, int] = {}
        self._pending: set[TopicPartition] = set()
        self.finished = False
        self.started_at = time.monotonic()

    async def start(self, listener: AssignmentListener) -> None:
        await self._consumer.start()
        try:
            self.plan = await self._plan()
        except BaseException:
            await self._consumer.stop()
            raise
        self._pending = {tp for tp, offset in self.plan.start.items() if offset < self.plan.stop[tp]}
        self._next = dict(self.plan.start)
        self._consumer.assign(sorted(self._pending))
        for tp in self._pending:
            self._consumer.seek(tp, self.plan.start[tp])
        listener.assigned({(tp.topic, tp.partition) for tp in self._pending})
        log.info("rebuild: %d messages in %d partitions from %s to %s", self.plan.messages, len(self._pending),
                 _iso(_ms(self._start)), _iso(_ms(self._end)) if self._end else "the end at start")
        self.started_at = time.monotonic()
        if not self._pending:
            self._finish()

    async def _plan(self) -> RebuildPlan:
        partitions = await self._partitions()
        first = await self._consumer.beginning_offsets(partitions)
        ends = await self._consumer.end_offsets(partitions)
        at_start = await self._consumer.offsets_for_times({tp: _ms(self._start) for tp in partitions})
        self._check_retention(first, at_start)
        stop = dict(ends)
        if self._end is not None:
            at_end = await self._consumer.offsets_for_times({tp: _ms(self._end) for tp in partitions})
            stop = {tp: found.offset if found is not None else ends[tp] for tp, found in at_end.items()}
        start = {tp: found.offset if found is not None else ends[tp] for tp, found in at_start.items()}
        return RebuildPlan(start, {tp: max(stop[tp], start[tp]) for tp in partitions})

    async def _partitions(self) -> list[TopicPartition]:
        """Every partition of the topics that exist (asking only for those: no auto-creation)."""
        available = await self._consumer.topics()
        existing = [topic for topic in self._topics if topic in available]
        if not existing:
            raise StartupError("--topics", ",".join(self._topics), "none of them exists in Kafka: nothing to rebuild",
                               exit_code=CONFIG_EXIT)
        if len(existing) < len(self._topics):
            log.info("rebuild: topics %s do not exist; skipped", ", ".join(set(self._topics) - set(existing)))
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap_servers)
        await admin.start()
        try:
            described = await admin.describe_topics(existing)
        finally:
            await admin.close()
        return sorted(
            TopicPartition(topic["topic"], partition["partition"])
            for topic in described
            for partition in topic["partitions"]
        )

    def _check_retention(self, first: dict[TopicPartition, int], at_start: dict[TopicPartition, object]) -> None:
        """Refuse a --from older than what a partition still holds (its earlier offsets were deleted)."""
        from_ms = _ms(self._start)
        lost = []
        for tp, found in at_start.items():
            if first[tp] > 0 and found is not None and found.offset == first[tp] and found.timestamp > from_ms:
                lost.append((found.timestamp, tp))
        if lost:
            earliest, tp = max(lost)
            raise StartupError(
                "--from", _iso(from_ms),
                f"before what Kafka still holds: {tp.topic}/{tp.partition} lost offsets 0..{first[tp] - 1} to "
                f"retention and starts at {_iso(earliest)} ({len(lost)} partition(s) affected); rebuild from "
                f"--from {_iso(earliest)} and restore older events from a ClickHouse backup",
                exit_code=CONFIG_EXIT,
            )  # fmt: skip

    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[SourceMessage]:
        if self.finished:
            return []
        batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        messages: list[SourceMessage] = []
        for tp, records in batches.items():
            stop = self.plan.stop[tp]
            kept = [record for record in records if record.offset < stop]
            messages += kept
            if records:
                self._next[tp] = records[-1].offset + 1
        for tp in list(self._pending):
            if self._next[tp] >= self.plan.stop[tp] or await self._consumer.position(tp) >= self.plan.stop[tp]:
                self._pending.discard(tp)
                self._consumer.pause(tp)
        if not self._pending:
            self._finish()
        return messages

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._on_finished()

    def read(self) -> int:
        """Messages read so far (including ones skipped as already stored)."""
        return sum(min(self._next[tp], self.plan.stop[tp]) - offset for tp, offset in self.plan.start.items())

    def lag(self) -> int:
        return self.plan.messages - self.read()

    async def commit(self, offsets: dict[TP, int]) -> None:
        await self._consumer.commit({TopicPartition(topic, part): off for (topic, part), off in offsets.items()})

    async def refetch(self, where: Coordinates) -> SourceMessage | None:
        return await read_at(self._bootstrap_servers, where)

    def pause(self) -> None:
        self._consumer.pause(*self._pending)

    def resume(self) -> None:
        self._consumer.resume(*self._pending)

    async def stop(self) -> None:
        await self._consumer.stop()
