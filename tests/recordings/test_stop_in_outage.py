"""The block storage down: SIGTERM stops the recordings sink with its one warning line (sessions
unstored, re-read on restart), committing nothing and raising nothing; the consumer lag counts the
messages held unstored. Real Kafka and ClickHouse 18.16 from tests/services."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import requests
from prometheus_client import REGISTRY

from gateway.clickhouse.writer import open_writer
from gateway.recordings.kafka import ReplayTopicSource
from gateway.recordings.metadata import ReplayEvents
from gateway.recordings.sink import RecordingsSink, SinkConfig
from gateway.recordings.storage import DirectoryStore, StorageError
from gateway.sinkworker.dlq import FileDeadLetters
from gateway.sinkworker.teams import TeamResolver
from tests.recordings.replay import now_ms, rrweb_session
from tests.recordings.test_rebalance import _committed, _produce


class OutageStore(DirectoryStore):
    """A storage that refuses every put until `up` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.refused = asyncio.Event()
        self.up = asyncio.Event()

    async def put(self, key: str, data: bytes) -> None:
        if not self.up.is_set():
            self.refused.set()
            raise StorageError("storage unreachable")
        await super().put(key, data)


def replay_topic(kafka, clickhouse_http_url: str, name: str) -> tuple[str, str, str]:
    """A database for the sink's table, and a replay topic and group of the same name."""
    database = f"{name}_{os.getpid()}"
    requests.post(clickhouse_http_url, data=f"CREATE DATABASE {database}".encode(), timeout=10).raise_for_status()
    topic, group = f"replay_{database}", f"g_{database}"
    asyncio.run(kafka.create_topics([topic], partitions=1))
    return database, topic, group


@contextlib.asynccontextmanager
async def sink_in_outage(kafka, clickhouse_http_url: str, names: tuple[str, str, str],
                         tmp_path: Path) -> AsyncIterator[tuple[RecordingsSink, OutageStore]]:
    """A recordings sink running on the topic, from the moment its storage first refused a put until it stops."""
    database, topic, group = names
    writer = await open_writer(clickhouse_http_url, max_in_flight=1, compression="none")
    try:
        replay = ReplayEvents(writer, database)
        await replay.create()
        store = OutageStore(tmp_path / "blocks")
        sink = RecordingsSink(ReplayTopicSource(kafka.bootstrap_servers, topic, group), store, replay,
                              FileDeadLetters(tmp_path / "dlq"), TeamResolver({}),
                              SinkConfig(topic=topic, block_max_age_s=0.2, retry_base_s=0.05))
        stop = asyncio.Event()
        running = asyncio.create_task(sink.run(stop))
        await asyncio.wait_for(store.refused.wait(), 60)
        yield sink, store
        stop.set()
        await asyncio.wait_for(running, 60)
    finally:
        await writer.close()


def test_stop_while_the_storage_is_down_ends_the_sink_without_an_error(tmp_path: Path, kafka,
                                                                       clickhouse_http_url: str) -> None:
    names = replay_topic(kafka, clickhouse_http_url, "stop_outage")
    _, topic, group = names

    async def scenario() -> RecordingsSink:
        await _produce(kafka.bootstrap_servers, topic, [("session-a", rrweb_session(now_ms() - 60_000))])
        async with sink_in_outage(kafka, clickhouse_http_url, names, tmp_path) as (sink, _):
            pass  # the sink is retrying a put: SIGTERM now
        return sink

    sink = asyncio.run(scenario())
    assert sink.clean_exit is False
    assert (asyncio.run(_committed(kafka.bootstrap_servers, topic, group)) or 0) == 0  # nothing stored, nothing past


def lag_metric() -> float | None:
    return REGISTRY.get_sample_value("recordings_consumer_lag", {"partition": "0"})


def test_consumer_lag_counts_consumed_but_unstored_messages_until_they_are_stored(
    tmp_path: Path, kafka, clickhouse_http_url: str
) -> None:
    """What an operator alerts on: messages not yet stored. They were consumed at once (the sink holds them
    while the storage is down), so a lag of what is left to consume would read 0 through the outage."""
    names = replay_topic(kafka, clickhouse_http_url, "lag_outage")
    _, topic, group = names

    async def scenario() -> tuple[float | None, float | None]:
        sessions = [(f"session-{n}", rrweb_session(now_ms() - 60_000)) for n in range(3)]
        await _produce(kafka.bootstrap_servers, topic, sessions)
        async with sink_in_outage(kafka, clickhouse_http_url, names, tmp_path) as (_, store):
            during = lag_metric()
            store.up.set()
            for _ in range(600):
                if await _committed(kafka.bootstrap_servers, topic, group) == len(sessions):
                    break
                await asyncio.sleep(0.1)
            return during, lag_metric()

    assert asyncio.run(scenario()) == (3, 0)
