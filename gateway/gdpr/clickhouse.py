"""One person's events in the sink's ClickHouse table: export as NDJSON, delete and verify.

Works through the ClickHouse writers (gateway/clickhouse: HTTP for servers such as 18.16, chdb in-process) on
its events table. Deletion per server capability:
- legacy servers (18.16 …): `ALTER TABLE … DELETE WHERE` — a mutation that rewrites the affected
  parts (MergeTree mutations exist since 1.1.54388);
- servers with lightweight deletes (chdb's engine, ClickHouse ≥ 23.4): `DELETE FROM … WHERE` hides
  the rows at once, then `ALTER TABLE … APPLY DELETED MASK` rewrites the parts so the data is gone
  from disk too, not only masked.
Both wait until `system.mutations` has nothing pending for the table, then count the matching rows
again: deletion is reported complete only when that count is zero. Given several replicas of a
cluster (`--clickhouse-url` repeated), the mutation runs once on a replicated table — ZooKeeper hands
it to every replica — and the wait and the count happen on every replica; an unreachable one leaves
the deletion unverified (it runs there when the replica returns). Replaced parts stay on disk until
the server's `old_parts_lifetime` (8 minutes by default) has passed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import IO

import orjson

from gateway.clickhouse.replicas import ReplicaWriter, redact
from gateway.clickhouse.schema import quote_string
from gateway.clickhouse.table import EventsTable
from gateway.clickhouse.writer import ErrorKind, WriteError

EXPORT_PAGE_ROWS = 1000


def subject_filter(distinct_ids: Sequence[str], token: str | None) -> str:
    """WHERE clause selecting a person's rows (all their distinct ids, optionally one project)."""
    if not distinct_ids:
        raise ValueError("at least one distinct id is required")
    clause = f"distinct_id IN ({', '.join(quote_string(d) for d in distinct_ids)})"
    if token:
        clause += f" AND token = {quote_string(token)}"
    return clause


async def export_rows(table: EventsTable, where: str, out: IO[bytes]) -> int:
    """Write every matching row as one JSON object per line (properties parsed); returns the count."""
    count = 0
    async for line in iter_rows(table, where):
        out.write(line)
        count += 1
    out.flush()
    return count


async def iter_rows(table: EventsTable, where: str, page: int = EXPORT_PAGE_ROWS) -> AsyncIterator[bytes]:
    """Every matching row as an NDJSON line (properties parsed), oldest first, read a page at a time so
    memory stays bounded however many events a person has. Rows inserted meanwhile may shift pages."""
    offset = 0
    while True:
        body = await table.writer.fetch(
            f"SELECT * FROM {table.name} WHERE {where} ORDER BY timestamp, uuid LIMIT {page} OFFSET {offset}",
            "JSONEachRow")
        lines = [line for line in body.splitlines() if line.strip()]
        for line in lines:
            row = orjson.loads(line)
            with contextlib.suppress(KeyError, TypeError, orjson.JSONDecodeError):  # else keep the stored text
                row["properties"] = orjson.loads(row["properties"])
            yield orjson.dumps(row) + b"\n"
        if len(lines) < page:
            return
        offset += page


@dataclass(frozen=True, slots=True)
class Deletion:
    before: int
    remaining: int
    unreachable: tuple[str, ...] = ()  # replicas where the deletion could not be verified


async def delete_rows(table: EventsTable, where: str, timeout: float) -> Deletion:
    """Delete matching rows, wait for completion on every replica, and count what remains (0 = verified)."""
    replicas = await _replicas(table)
    reachable = [replica for _, replica in replicas if replica is not None]
    if not reachable:
        raise WriteError(ErrorKind.TRANSIENT, "no ClickHouse replica reachable")
    before = max([await replica.count(where) for replica in reachable])
    created: set[str] = set()
    if before:
        known = await table.mutation_ids()
        await table.delete_where(where, timeout)
        if len(replicas) > 1:
            created = await table.new_mutation_ids(known, timeout)
    remaining = 0
    for replica in reachable:
        if created:
            await replica.wait_for_mutation_ids(created, timeout)
        await replica.wait_for_mutations(timeout)
        remaining = max(remaining, await replica.count(where))
    return Deletion(before, remaining, tuple(redact(url) for url, replica in replicas if replica is None))


async def _replicas(table: EventsTable) -> list[tuple[str, EventsTable | None]]:
    """The table on each replica of a ReplicaWriter (None where unreachable); else the table itself."""
    if not isinstance(table.writer, ReplicaWriter):
        return [("", table)]
    return [(url, None if writer is None else replace(table, writer=writer))
            for url, writer in await table.writer.connect_all()]
