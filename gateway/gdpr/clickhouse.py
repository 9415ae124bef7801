"""One person's events in the sink's ClickHouse table: export as NDJSON, delete and verify.

Works through the sink worker's writers (HTTP for servers such as 18.16, chdb in-process) and on
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

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import IO

import orjson

from gateway.sinkworker.replicas import ReplicaWriter, redact
from gateway.sinkworker.schema import quote_string, table_name
from gateway.sinkworker.writer import ErrorKind, WriteError, Writer

LIGHTWEIGHT_DELETE = (23, 4)
POLL_SECONDS = 0.2
EXPORT_PAGE_ROWS = 1000


@dataclass(frozen=True, slots=True)
class EventsTable:
    """The sink's events table on one server."""

    writer: Writer
    database: str = "default"
    table: str = "events"

    @property
    def name(self) -> str:
        return table_name(self.database, self.table)

    async def count(self, where: str) -> int:
        return int((await self.writer.select(f"SELECT count() FROM {self.name} WHERE {where}"))[0][0])

    async def delete_where(self, where: str, timeout: float) -> None:
        """Delete matching rows physically and wait for the mutations to finish."""
        if self.writer.caps.version >= LIGHTWEIGHT_DELETE:
            await self.writer.command(f"DELETE FROM {self.name} WHERE {where}")
            await self.writer.command(f"ALTER TABLE {self.name} APPLY DELETED MASK")
        else:
            await self.writer.command(f"ALTER TABLE {self.name} DELETE WHERE {where}")
        await self.wait_for_mutations(timeout)

    async def mutation_ids(self) -> set[str]:
        """Ids of the table's mutations (a replicated table's are the same on every replica)."""
        rows = await self.writer.select(f"SELECT mutation_id FROM system.mutations WHERE {self._is_this_table}")
        return {row[0] for row in rows}

    async def wait_for_mutation_ids(self, ids: set[str], timeout: float) -> None:
        """Poll until this replica lists every mutation in `ids` as done (it loads them from ZooKeeper
        with a delay, so "nothing pending" is not enough there)."""
        listed = ", ".join(map(quote_string, sorted(ids)))
        query = (f"SELECT count() FROM system.mutations WHERE {self._is_this_table}"
                 f" AND mutation_id IN ({listed}) AND is_done = 1")
        deadline = time.monotonic() + timeout
        while int((await self.writer.select(query))[0][0]) < len(ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"mutations on {self.name} still running after {timeout:g} s")
            await asyncio.sleep(POLL_SECONDS)

    @property
    def _is_this_table(self) -> str:
        return f"database = {quote_string(self.database)} AND table = {quote_string(self.table)}"

    async def wait_for_mutations(self, timeout: float) -> None:
        """Poll system.mutations until none is pending for this table; TimeoutError after `timeout` s."""
        query = (
            "SELECT count() FROM system.mutations WHERE is_done = 0"
            f" AND database = {quote_string(self.database)} AND table = {quote_string(self.table)}"
        )
        deadline = time.monotonic() + timeout
        while int((await self.writer.select(query))[0][0]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"mutations on {self.name} still running after {timeout:g} s")
            await asyncio.sleep(POLL_SECONDS)


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
        created = await table.mutation_ids() - known
    remaining = 0
    for replica in reachable:
        if created and len(replicas) > 1:
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
