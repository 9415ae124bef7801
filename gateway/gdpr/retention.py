"""Retention of the events table: a TTL where the server has one, else dropping expired data.

- `apply_ttl`: `ALTER TABLE … MODIFY TTL` (or `REMOVE TTL` for 0 days), on servers with table TTL
  (ClickHouse ≥ 19.6, chdb). The server then removes expired rows in merges.
- `expire`: for servers without TTL (18.16): drops every monthly partition (`toYYYYMM(timestamp)`)
  that ends (in the partition's time zone) before the cutoff — instant, no rewrite — then deletes the
  remaining older rows of the boundary month with a mutation, so nothing older than the cutoff is left.
  Run it daily (cron or a systemd timer); it works on TTL servers too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from gateway.clickhouse.schema import quote_string, ttl_clause
from gateway.clickhouse.table import EventsTable

_MONTH_PARTITION = re.compile(r"^(\d{4})(\d{2})$")


class TtlUnsupported(RuntimeError):
    """The server has no table TTL: use `expire` instead."""


async def apply_ttl(table: EventsTable, days: int) -> str:
    """Set (days > 0) or remove (0) the table's TTL; returns the statement run."""
    if not table.writer.caps.ttl:
        version = ".".join(map(str, table.writer.caps.version))
        raise TtlUnsupported(f"ClickHouse {version} has no table TTL; run `gateway gdpr expire` daily instead")
    statement = f"ALTER TABLE {table.name} " + (f"MODIFY {ttl_clause(days)}" if days > 0 else "REMOVE TTL")
    await table.writer.command(statement)
    return statement


@dataclass(frozen=True, slots=True)
class Expiry:
    cutoff: datetime
    dropped_partitions: list[str]
    deleted_rows: int


def _month_end(partition: str, zone: tzinfo) -> datetime | None:
    match = _MONTH_PARTITION.match(partition)
    if match is None:
        return None
    year, month = int(match[1]), int(match[2])
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)


async def _partition_zone(table: EventsTable) -> tzinfo:
    """The time zone `toYYYYMM(timestamp)` uses: the column's own (`DateTime64(6, 'UTC')`), else the
    server's (18.16's plain `DateTime`); a month there may end hours after it ends in UTC."""
    found = await table.writer.select(
        "SELECT type, timezone() FROM system.columns WHERE name = 'timestamp'"
        f" AND database = {quote_string(table.database)} AND table = {quote_string(table.table)}"
    )
    if not found:
        return UTC
    column_type, server_zone = found[0]
    named = re.search(r"'([^'\\]+)", column_type)  # DateTime(\'Etc/GMT+5\') in TSV
    return ZoneInfo(named[1] if named else server_zone)


async def expire(table: EventsTable, days: int, timeout: float, now: datetime | None = None) -> Expiry:
    """Remove every event whose timestamp is more than `days` days before `now`."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    partitions = await table.writer.select(
        "SELECT DISTINCT partition FROM system.parts WHERE active"
        f" AND database = {quote_string(table.database)} AND table = {quote_string(table.table)}"
    )
    zone = await _partition_zone(table)
    dropped = []
    for (partition,) in partitions:
        end = _month_end(partition, zone)
        if end is not None and end <= cutoff:
            await table.writer.command(f"ALTER TABLE {table.name} DROP PARTITION {partition}")
            dropped.append(partition)
    older = f"timestamp < toDateTime({int(cutoff.timestamp())})"
    deleted = await table.count(older)
    if deleted:
        await table.delete_where(older, timeout)
    return Expiry(cutoff, sorted(dropped), deleted)
