"""Recordings retention and erasure: blocks are deleted from storage first, then their rows.

In that order a crash in between leaves rows whose blocks are gone, which the next run deletes
(deleting a missing object is not an error); never a block that no row points to and no run finds.
Retention also deletes objects older than the cutoff that no row names (a block stored just before a
crash whose row was never written, then superseded); an old object that a kept row names stays (its
events end after the cutoff: a client clock ahead, events flushed late).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.clickhouse.schema import quote_string
from gateway.clickhouse.table import EventsTable
from gateway.recordings.metadata import ReplayEvents, distinct_id_filter
from gateway.recordings.storage import BlockStore


@dataclass(frozen=True, slots=True)
class Removal:
    sessions: int
    blocks: int
    rows: int
    remaining_rows: int


async def remove(events: ReplayEvents, store: BlockStore, where: str, timeout: float) -> Removal:
    """Delete every block of the rows matching `where`, then those rows; verify none remain."""
    blocks = await events.blocks_where(where)
    await store.delete(sorted({block.key for block in blocks}))
    table = EventsTable(events.writer, events.database, events.table)
    rows = await table.count(where)
    if rows:
        await table.delete_where(where, timeout)
    return Removal(len({block.session_id for block in blocks}), len(blocks), rows, await table.count(where))


async def expire(events: ReplayEvents, store: BlockStore, days: int, timeout: float,
                 now: datetime | None = None) -> Removal:
    """Remove recordings whose last event is more than `days` days old, and stale unnamed objects."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    removal = await remove(events, store, f"max_last_timestamp < toDateTime({int(cutoff.timestamp())})", timeout)
    old = [item.key async for item in store.list("sessions/") if item.modified < cutoff.timestamp()]
    named = await events.named(old)  # a block written before the cutoff may hold events after it
    await store.delete([key for key in old if key not in named])
    return removal


async def erase_person(events: ReplayEvents, store: BlockStore, distinct_ids: list[str], token: str | None,
                       timeout: float) -> Removal:
    where = distinct_id_filter(distinct_ids)
    if token:
        where += f" AND token = {quote_string(token)}"
    return await remove(events, store, where, timeout)
