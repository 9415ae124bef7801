"""A table of ClickHouse rows that can be deleted physically: count, delete and wait for the mutations.

Deletion per server capability: legacy servers (18.16 …) run `ALTER TABLE … DELETE WHERE`, a mutation
that rewrites the affected parts; servers with lightweight deletes (chdb's engine, ClickHouse ≥ 23.4)
run `DELETE FROM … WHERE`, then `ALTER TABLE … APPLY DELETED MASK` so the data is gone from disk too.
Used by `gateway gdpr` (events) and recordings retention (session_replay_events).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gateway.clickhouse.schema import quote_string, table_name
from gateway.clickhouse.writer import Writer

LIGHTWEIGHT_DELETE = (23, 4)
POLL_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class EventsTable:
    """A table (by default the sink's events table) on one server."""

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

    async def new_mutation_ids(self, known: set[str], timeout: float) -> set[str]:
        """The table's mutations not in `known`, once there is one: a replicated table lists the ALTER
        just made on it only after loading it back from ZooKeeper."""
        deadline = time.monotonic() + timeout
        while not (created := await self.mutation_ids() - known):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the mutation on {self.name} was not listed after {timeout:g} s")
            await asyncio.sleep(POLL_SECONDS)
        return created

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
