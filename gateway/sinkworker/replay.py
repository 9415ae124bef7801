"""Exactly-once across crashes: skip messages whose rows are already stored.

A crash between an insert and its offset commit makes the next owner of the partition re-read
messages that are already in the table, in batches whose boundaries (and so dedup tokens) differ.
When the worker starts reading a partition, it asks the table which offsets at or past its start
position are stored (`_topic`, `_partition`, `_offset` columns) and skips those. Servers without
insert deduplication tokens (18.16) also use this before retrying an insert whose outcome is
unknown. The query scans three small columns; it runs only on (re)assignment and on retries.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.sinkworker.batch import TopicPartition
from gateway.sinkworker.schema import quote_string
from gateway.sinkworker.writer import Writer


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


class ReplayGuard:
    """Per-partition sets of stored offsets ahead of the consumer, loaded when a partition starts."""

    def __init__(self) -> None:
        self._unchecked: set[TopicPartition] = set()
        self._stored: dict[TopicPartition, set[int]] = {}
        self._until: dict[TopicPartition, int] = {}

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """Partitions (re)assigned: check them again when their first message arrives."""
        self._unchecked |= partitions
        for tp in partitions:
            self._stored.pop(tp, None)
            self._until.pop(tp, None)

    def revoked(self, partitions: set[TopicPartition]) -> None:
        self._unchecked -= partitions
        for tp in partitions:
            self._stored.pop(tp, None)
            self._until.pop(tp, None)

    def starts(self, first_offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, tuple[int, None]]:
        """Of these partitions' first fetched offsets, the open ranges still to look up."""
        return {tp: (offset, None) for tp, offset in first_offsets.items() if tp in self._unchecked}

    def loaded(self, checked: set[TopicPartition], found: dict[TopicPartition, set[int]]) -> None:
        """Record a lookup's result for the partitions in `checked`."""
        self._unchecked -= checked
        for tp, offsets in found.items():
            if offsets:
                self._stored[tp] = offsets
                self._until[tp] = max(offsets)

    def is_stored(self, tp: TopicPartition, offset: int) -> bool:
        """Whether this message's row is already in the table; forgets a partition once past it."""
        stored = self._stored.get(tp)
        if stored is None:
            return False
        hit = offset in stored
        if offset >= self._until[tp]:
            del self._stored[tp], self._until[tp]
        return hit
