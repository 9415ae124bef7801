"""SIGTERM while ClickHouse refuses every insert: the worker gives up after the shutdown timeout and
stops, committing nothing, even when the source's stop revokes its partitions (Kafka's close does)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.clickhouse.schema import ServerCaps
from gateway.clickhouse.writer import ErrorKind, WriteError
from gateway.sinkworker.batch import FlushPolicy
from gateway.sinkworker.rows import RowEncoder
from gateway.sinkworker.teams import TeamResolver
from gateway.sinkworker.worker import SinkWorker, WorkerConfig
from tests.sinkworker.helpers import ListDeadLetters, ListSource, stream


class DownWriter:
    """A ClickHouse that answers the replay guard's lookups but never stores a batch."""

    caps = ServerCaps((18, 16, 1))
    max_in_flight = 2

    def __init__(self) -> None:
        self.inserts = 0

    async def select(self, sql: str) -> list[list[str]]:
        return []

    async def insert(self, *args: Any, **kwargs: Any) -> None:
        self.inserts += 1
        raise WriteError(ErrorKind.TRANSIENT, "connection lost: refused")


class RevokingSource(ListSource):
    """Its stop() revokes every partition through the worker first, as closing a Kafka consumer does."""

    async def start(self, listener: Any) -> None:
        self.listener = listener
        await super().start(listener)

    async def stop(self) -> None:
        await self.listener.revoked({("events_plugin_ingestion", p) for p in range(2)})


def test_shutdown_timeout_ends_the_worker_although_its_partitions_are_revoked_on_stop() -> None:
    source, writer = RevokingSource(stream(20)), DownWriter()
    config = WorkerConfig("`default`.`events`", FlushPolicy(max_rows=10, max_age_s=0.01), retry_base_s=0.01,
                          retry_max_s=0.05, shutdown_timeout_s=0.3)
    worker = SinkWorker(source, writer, ListDeadLetters(), RowEncoder(TeamResolver({})), config)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        while writer.inserts < 2:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert worker.clean_exit is False
    assert source.committed == {}
