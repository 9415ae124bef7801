"""SIGTERM while the block storage is down: the recordings sink stops with its one warning line
(sessions unstored, re-read on restart), commits nothing and raises nothing. Real Kafka and
ClickHouse 18.16 from tests/services."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import requests

from gateway.clickhouse.writer import open_writer
from gateway.recordings.kafka import ReplayTopicSource
from gateway.recordings.metadata import ReplayEvents
from gateway.recordings.sink import RecordingsSink, SinkConfig
from gateway.recordings.storage import DirectoryStore, StorageError
from gateway.sinkworker.dlq import FileDeadLetters
from gateway.sinkworker.teams import TeamResolver
from tests.recordings.replay import now_ms, rrweb_session
from tests.recordings.test_rebalance import _committed, _produce


class DownStore(DirectoryStore):
    """A storage that refuses every put."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.refused = asyncio.Event()

    async def put(self, key: str, data: bytes) -> None:
        self.refused.set()
        raise StorageError("storage unreachable")


def test_stop_while_the_storage_is_down_ends_the_sink_without_an_error(tmp_path: Path, kafka,
                                                                       clickhouse_http_url: str) -> None:
    database = f"stop_outage_{os.getpid()}"
    requests.post(clickhouse_http_url, data=f"CREATE DATABASE {database}".encode(), timeout=10).raise_for_status()
    topic, group = f"replay_{database}", f"g_{database}"
    asyncio.run(kafka.create_topics([topic], partitions=1))

    async def scenario() -> RecordingsSink:
        await _produce(kafka.bootstrap_servers, topic, [("session-a", rrweb_session(now_ms() - 60_000))])
        writer = await open_writer(clickhouse_http_url, max_in_flight=1, compression="none")
        try:
            replay = ReplayEvents(writer, database)
            await replay.create()
            store = DownStore(tmp_path / "blocks")
            sink = RecordingsSink(ReplayTopicSource(kafka.bootstrap_servers, topic, group), store, replay,
                                  FileDeadLetters(tmp_path / "dlq"), TeamResolver({}),
                                  SinkConfig(topic=topic, block_max_age_s=0.2, retry_base_s=0.05))
            stop = asyncio.Event()
            running = asyncio.create_task(sink.run(stop))
            await asyncio.wait_for(store.refused.wait(), 60)  # the sink is retrying a put: SIGTERM now
            stop.set()
            await asyncio.wait_for(running, 60)
            return sink
        finally:
            await writer.close()

    sink = asyncio.run(scenario())
    assert sink.clean_exit is False
    assert (asyncio.run(_committed(kafka.bootstrap_servers, topic, group)) or 0) == 0  # nothing stored, nothing past
