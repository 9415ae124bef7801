"""The sink's tables on a replicated ClickHouse cluster (`gateway sink --cluster NAME`).

The cluster must be declared in the servers' `remote_servers`, every server needs `{shard}` and
`{replica}` macros and ZooKeeper. `ON CLUSTER` DDL runs through ZooKeeper's task queue on every
host of the cluster and waits for them all: a replica that is down makes `--init-schema` fail with
the hosts that did not answer (the task stays queued and runs when they return). A table that
exists but is not replicated is refused rather than written on one node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from gateway.clickhouse.replicas import ReplicaWriter, redact
from gateway.clickhouse.schema import distributed_table_ddl, events_table_ddl, quote_string, table_name
from gateway.clickhouse.writer import WriteError
from gateway.core.startup import CONFIG_EXIT, StartupError

DDL_TIMEOUT_S = 30
SYNC_TIMEOUT_S = 30
log = logging.getLogger(__name__)
# Error code of `ON CLUSTER` when not every host ran the statement in time.
TIMEOUT_EXCEEDED = "Code: 159"


async def table_engine(writer: ReplicaWriter, database: str, table: str) -> str | None:
    """The table's engine on the current replica, None if it has no such table."""
    rows = await writer.select(
        f"SELECT engine FROM system.tables WHERE database = {quote_string(database)} AND name = {quote_string(table)}"
    )
    return rows[0][0] if rows else None


async def check_cluster(writer: ReplicaWriter, cluster: str) -> None:
    """`cluster` is declared on the server and the server has the macros the table paths use."""
    where = redact(writer.current_url)
    rows = await writer.select(f"SELECT count() FROM system.clusters WHERE cluster = {quote_string(cluster)}")
    if not int(rows[0][0]):
        raise StartupError("--cluster", cluster, f"no such cluster in the remote_servers of {where}",
                           exit_code=CONFIG_EXIT)
    macros = {row[0] for row in await writer.select("SELECT macro FROM system.macros")}
    missing = sorted({"shard", "replica"} - macros)
    if missing:
        raise StartupError("--cluster", cluster, f"{where} has no <macros> {', '.join(missing)} in its config",
                           exit_code=CONFIG_EXIT)


async def create_cluster_tables(writer: ReplicaWriter, retention_days: int, database: str, table: str,
                                cluster: str) -> None:
    """CREATE … ON CLUSTER the replicated events table and its Distributed table; every replica must answer."""
    down = [url for url, replica in writer.replicas() if replica is None]
    if down:
        raise StartupError("--clickhouse-url", ",".join(map(redact, down)),
                           "unreachable: the tables are created on every replica, start it first")
    settings = {"distributed_ddl_task_timeout": str(DDL_TIMEOUT_S), "wait_end_of_query": "1"}
    for ddl in (events_table_ddl(writer.caps, database, table, retention_days, cluster),
                distributed_table_ddl(database, table, cluster)):
        try:
            await writer.command(ddl, settings)
        except WriteError as error:
            why = str(error).splitlines()[0]
            if TIMEOUT_EXCEEDED in why:
                why = f"not every host of cluster {cluster} ran it within {DDL_TIMEOUT_S} s " \
                      f"(it stays queued for them): {why}"
            raise StartupError("--cluster", cluster, f"creating the tables failed: {why}") from error


async def prepare_cluster_table(writer: ReplicaWriter, *, database: str, table: str, cluster: str,
                                retention_days: int, create: bool) -> None:
    """Check the cluster; create the tables if asked or missing; refuse a table that is not replicated."""
    await check_cluster(writer, cluster)
    engine = await table_engine(writer, database, table)
    if create or engine is None:
        await create_cluster_tables(writer, retention_days, database, table, cluster)
        engine = await table_engine(writer, database, table)
    if not (engine or "").startswith("Replicated"):
        raise StartupError("--table", table_name(database, table),
                           f"is {engine}, not a Replicated table: --cluster needs one (use another --table, or "
                           "migrate the data into a table created by --init-schema --cluster)",
                           exit_code=CONFIG_EXIT)
    if not create:
        await catch_up(writer, table_name(database, table))


async def catch_up(writer: ReplicaWriter, table: str, timeout: float = SYNC_TIMEOUT_S) -> None:
    """Let the current replica fetch the parts the others have before the sink asks it which offsets are
    stored (replay.py): rows a previous run inserted through another replica must not be stored twice."""
    try:
        await asyncio.wait_for(writer.command(f"SYSTEM SYNC REPLICA {table}"), timeout)
    except (TimeoutError, WriteError) as error:
        log.warning("replica %s did not catch up with the others in %g s (%r): rows a previous run stored only on "
                    "an unreachable replica may be stored again", redact(writer.current_url), timeout, error)


async def open_cluster(urls: Sequence[str], *, max_in_flight: int, compression: str, database: str, table: str,
                       cluster: str, retention_days: int, create: bool, insert_quorum: int = 0) -> ReplicaWriter:
    """Connect to the replicas and prepare the replicated table (see `prepare_cluster_table`); every insert
    waits for `insert_quorum` replicas (0: off)."""
    writer = await ReplicaWriter.connect(urls, max_in_flight, compression, insert_quorum)
    try:
        await prepare_cluster_table(writer, database=database, table=table, cluster=cluster,
                                    retention_days=retention_days, create=create)
    except BaseException:
        await writer.close()
        raise
    return writer
