"""Events-table DDL, emitted per server capability (probed with `SELECT version()`).

Modern servers (chdb, ClickHouse ≥ 22.2) get PostHog's column types (DateTime64(6), Bool, ZSTD
codecs, LowCardinality), a TTL for retention and a non-replicated insert-deduplication window.
Legacy servers such as Debian's 18.16 get DateTime, UInt8, plain String, no TTL and
`cityHash64(toString(uuid))` (18.16 accepts `cityHash64(uuid)` in DDL but then fails every insert).
With a cluster, the table is a ReplicatedReplacingMergeTree created `ON CLUSTER` (ZooKeeper path per
`{shard}` macro, replica name from the `{replica}` macro), which deduplicates retried identical
blocks itself, plus a Distributed table over it for reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEDUP_WINDOW_BLOCKS = 1000


@dataclass(frozen=True, slots=True)
class ServerCaps:
    """What the ClickHouse server behind a writer supports, derived from its version."""

    version: tuple[int, ...]

    @classmethod
    def from_version(cls, text: str) -> ServerCaps:
        return cls(tuple(int(part) for part in re.findall(r"\d+", text)[:3]))

    @property
    def datetime64(self) -> bool:
        return self.version >= (20, 1)

    @property
    def modern_types(self) -> bool:
        """Bool, codecs and LowCardinality without experimental settings."""
        return self.version >= (21, 12)

    @property
    def ttl(self) -> bool:
        return self.version >= (19, 6)

    @property
    def parallel_quorum(self) -> bool:
        """Several `insert_quorum` inserts into one table at a time (`insert_quorum_parallel`, on by default)."""
        return self.version >= (21, 1)

    @property
    def dedup_token(self) -> bool:
        """`insert_deduplication_token` honoured on non-replicated MergeTree."""
        return self.version >= (22, 2)


def quote_identifier(name: str) -> str:
    """Backtick-quote a database/table name."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    """Single-quote a SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def table_name(database: str, table: str) -> str:
    return f"{quote_identifier(database)}.{quote_identifier(table)}"


def ttl_clause(retention_days: int) -> str:
    """The events table's retention TTL (servers with `caps.ttl`)."""
    return f"TTL toDateTime(timestamp) + INTERVAL {int(retention_days)} DAY"


def distributed_table(table: str) -> str:
    """Name of the Distributed table over a cluster's replicated events table."""
    return f"{table}_distributed"


def on_cluster(cluster: str) -> str:
    return f" ON CLUSTER {quote_identifier(cluster)}" if cluster else ""


def events_table_ddl(
    caps: ServerCaps, database: str, table: str, retention_days: int = 0, cluster: str = ""
) -> str:
    """CREATE TABLE IF NOT EXISTS for the events table the sink fills (on every replica of `cluster`)."""
    modern = caps.modern_types
    moment = "DateTime64(6, 'UTC')" if caps.datetime64 else "DateTime"
    text = "String CODEC(ZSTD(3))" if modern else "String"
    columns = [
        "uuid UUID",
        "event String",
        f"properties {text}",
        f"timestamp {moment}",
        "team_id Int64",
        "distinct_id String",
        "elements_chain String",
        f"created_at {moment}",
        "token String",
        "person_mode Enum8('full' = 0, 'propertyless' = 1, 'force_upgrade' = 2)",
        f"historical_migration {'Bool' if modern else 'UInt8'}",
        *([f"inserted_at {moment} DEFAULT now64()"] if caps.datetime64 else []),
        "_timestamp DateTime",
        "_offset UInt64",
        "_partition UInt64",
        f"_topic {'LowCardinality(String)' if modern else 'String'}",
    ]
    uuid_hash = "cityHash64(uuid)" if modern else "cityHash64(toString(uuid))"
    engine = "ReplacingMergeTree(_timestamp)"
    if cluster:
        path = quote_string(f"/clickhouse/tables/{{shard}}/{database}.{table}")
        engine = f"ReplicatedReplacingMergeTree({path}, '{{replica}}', _timestamp)"
    clauses = [
        f"CREATE TABLE IF NOT EXISTS {table_name(database, table)}{on_cluster(cluster)} (\n    "
        + ",\n    ".join(columns) + "\n)",
        f"ENGINE = {engine}",
        "PARTITION BY toYYYYMM(timestamp)",
        f"ORDER BY (team_id, toDate(timestamp), event, cityHash64(distinct_id), {uuid_hash})",
        "SAMPLE BY cityHash64(distinct_id)",
    ]
    if retention_days > 0 and caps.ttl:
        clauses.append(ttl_clause(retention_days))
    if caps.dedup_token and not cluster:
        clauses.append(f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW_BLOCKS}")
    return "\n".join(clauses)


def distributed_table_ddl(database: str, table: str, cluster: str) -> str:
    """CREATE TABLE IF NOT EXISTS for the Distributed table reading `table` on every shard of `cluster`."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table_name(database, distributed_table(table))}{on_cluster(cluster)}"
        f" AS {table_name(database, table)}"
        f" ENGINE = Distributed({quote_identifier(cluster)}, {quote_identifier(database)}, {quote_identifier(table)})"
    )
