"""Exactly-once across crashes: skip messages whose rows are already stored.

A crash between an insert and its offset commit makes the next reader of the partition re-read
messages that are already in the table, in batches whose boundaries (and so dedup tokens) differ.
When the worker starts reading a partition (at start-up or after a reassignment), it asks the table
which offsets at or past its first fetched offset are stored (`_topic`, `_partition`, `_offset`
columns) and skips those. Servers without insert deduplication tokens (18.16) also use this before
retrying an insert whose outcome is unknown. The query scans three small columns; it runs only when
a partition starts and on such retries.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.clickhouse.schema import quote_string
from gateway.clickhouse.writer import Writer
from gateway.sinkworker.batch import TopicPartition


async def stored_offsets(
    writer: Writer, table: str, ranges: Mapping[TopicPartition, tuple[int, int | None]]
) -> dict[TopicPartition, set[int]]:
    """Offsets already in `table` within each partition's [first, last] range (last None = open)."""
    if not ranges:
        return {}
    conditions = []
    for (topic, partition), (first, last) in sorted(ranges.items()):
        bound = f" AND _offset <= {int(last)}" if last is not None else ""
        conditions.append(
            f"(_topic = {quote_string(topic)} AND _partition = {int(partition)}"
            f" AND _offset >= {int(first)}{bound})"
        )
    rows = await writer.select(
        f"SELECT _topic, _partition, _offset FROM {table} WHERE {' OR '.join(conditions)}"
    )
    found: dict[TopicPartition, set[int]] = {}
    for topic, partition, offset in rows:
        found.setdefault((topic, int(partition)), set()).add(int(offset))
    return found


_NONE: set[int] = set()


class ReplayGuard:
    """Per-partition sets of stored offsets ahead of the reader, looked up when a partition starts."""

    def __init__(self) -> None:
        self._checked: set[TopicPartition] = set()
        self._stored: dict[TopicPartition, set[int]] = {}
        self._until: dict[TopicPartition, int] = {}

    def reset(self, partitions: set[TopicPartition]) -> None:
        """Partitions (re)assigned or revoked: look them up again when next read."""
        self._checked -= partitions
        for tp in partitions:
            self._stored.pop(tp, None)
            self._until.pop(tp, None)

    def to_check(self, first_offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, tuple[int, None]]:
        """Open ranges to look up for partitions not checked since they started."""
        return {tp: (offset, None) for tp, offset in first_offsets.items() if tp not in self._checked}

    def loaded(self, checked: set[TopicPartition], found: dict[TopicPartition, set[int]]) -> None:
        """Record a lookup's result for the partitions in `checked`."""
        self._checked |= checked
        for tp, offsets in found.items():
            if offsets:
                self._stored[tp] = offsets
                self._until[tp] = max(offsets)

    def stored_in(self, tp: TopicPartition, last: int) -> set[int]:
        """Offsets already in the table for a run of the partition ending at `last` (usually none);
        forgets the partition once a run reaches past its last stored offset."""
        stored = self._stored.get(tp)
        if stored is None:
            return _NONE
        if last >= self._until[tp]:
            del self._stored[tp], self._until[tp]
        return stored
