"""A consumer-group rebalance while the recordings sink is storing a block (issue 18 follow-up).

aiokafka runs `on_partitions_revoked` in its coordinator task, concurrently with the sink's loop. The
test holds the sink's first block put (the one seam: a store that waits before a real directory put),
revokes the partition as aiokafka does, then lets the put finish: the sink must neither crash, store a
block twice, nor commit an offset past what is stored, and it keeps consuming afterwards. Real Kafka
and ClickHouse 18.16 from tests/services.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import requests
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from gateway.clickhouse.writer import open_writer
from gateway.recordings.kafka import ReplayTopicSource
from gateway.recordings.metadata import ReplayEvents
from gateway.recordings.sink import RecordingsSink, SinkConfig
from gateway.recordings.storage import DirectoryStore
from gateway.sinkworker.dlq import FileDeadLetters
from gateway.sinkworker.teams import TeamResolver
from tests.recordings.replay import TOKEN, now_ms, rrweb_session


class HeldStore(DirectoryStore):
    """A directory store whose first put waits until the test lets it go."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.first_put = asyncio.Event()
        self.release = asyncio.Event()

    async def put(self, key: str, data: bytes) -> None:
        if not self.first_put.is_set():
            self.first_put.set()
            await self.release.wait()
        await super().put(key, data)


def test_revocation_during_a_flush(tmp_path: Path, kafka, clickhouse_http_url: str) -> None:
    database = f"rebalance_{uuid.uuid4().hex[:12]}"
    requests.post(clickhouse_http_url, data=f"CREATE DATABASE {database}".encode(), timeout=10).raise_for_status()
    topic, group = f"replay_{database}", f"g_{database}"
    asyncio.run(kafka.create_topics([topic], partitions=1))
    asyncio.run(_revoke_during_flush(tmp_path, kafka.bootstrap_servers, clickhouse_http_url, database, topic, group))


async def _revoke_during_flush(tmp_path: Path, bootstrap: str, clickhouse: str, database: str, topic: str,
                               group: str) -> None:
    events = rrweb_session(now_ms() - 60_000)
    await _produce(bootstrap, topic, [("session-a", events[:5]), ("session-b", events[:4]),
                                      ("session-a", events[5:])])
    writer = await open_writer(clickhouse, max_in_flight=1, compression="none")
    try:
        await _check_sink(tmp_path, bootstrap, ReplayEvents(writer, database), topic, group, events)
    finally:
        await writer.close()


async def _check_sink(tmp_path: Path, bootstrap: str, replay: ReplayEvents, topic: str, group: str,
                      events: list[dict]) -> None:
    await replay.create()
    store = HeldStore(tmp_path / "blocks")
    config = SinkConfig(topic=topic, block_max_age_s=0.3, retry_base_s=0.05)
    sink = RecordingsSink(ReplayTopicSource(bootstrap, topic, group), store, replay,
                          FileDeadLetters(tmp_path / "dlq"), TeamResolver({}), config)
    stop = asyncio.Event()
    running = asyncio.create_task(sink.run(stop))
    try:
        await asyncio.wait_for(store.first_put.wait(), 60)  # a flush is storing a block
        revoking = asyncio.create_task(sink.revoked({(topic, 0)}))
        for _ in range(5):
            await asyncio.sleep(0)  # the revocation starts while the put is held
        store.release.set()
        await asyncio.wait_for(revoking, 60)
        assert not running.done(), "the sink's loop died in the rebalance"
        assert await _committed(bootstrap, topic, group) == 3
        assert sink.items_stored == len(events) + 4

        # After the rebalance (the partition stays ours here) the sink goes on storing and committing.
        await _produce(bootstrap, topic, [("session-c", events[:2])])
        for _ in range(600):
            if sink.items_stored == len(events) + 6:
                break
            await asyncio.sleep(0.05)
        assert sink.items_stored == len(events) + 6
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)  # raises what killed the loop, if anything
    assert sink.clean_exit
    assert await _committed(bootstrap, topic, group) == 4

    rows = await replay.writer.select(f"SELECT session_id, _first_offset, _last_offset, event_count FROM {replay.name}"
                               " ORDER BY session_id, _first_offset")
    blocks = [(session, int(first), int(last), int(count)) for session, first, last, count in rows]
    offsets = [offset for _, first, last, _ in blocks for offset in range(first, last + 1)]
    sessions = {session for session, *_ in blocks}
    assert sessions == {"session-a", "session-b", "session-c"}
    # Every item in exactly one row, no offset range stored twice (no duplicate block rows).
    assert sum(count for *_, count in blocks) == len(events) + 6, blocks
    assert len({(session, first) for session, first, *_ in blocks}) == len(blocks), blocks
    assert sorted(set(offsets)) == [0, 1, 2, 3]
    stored = sorted(path.name for path in (tmp_path / "blocks").rglob("*") if path.is_file())
    assert len(stored) == len(blocks), stored


class ObservedSink(RecordingsSink):
    """Says when aiokafka revokes its partitions, and which it has."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.revoking = asyncio.Event()
        self.partitions: set[int] = set()

    def assigned(self, partitions: set[tuple[str, int]]) -> None:
        self.partitions = {partition for _, partition in partitions}
        super().assigned(partitions)

    async def revoked(self, partitions: set[tuple[str, int]]) -> None:
        if partitions:  # aiokafka's first join revokes nothing
            self.revoking.set()
        await super().revoked(partitions)


def test_member_joining_during_a_flush(tmp_path: Path, kafka, clickhouse_http_url: str) -> None:
    """A real rebalance: a second sink joins the group while the first holds a block put."""
    database = f"joining_{uuid.uuid4().hex[:12]}"
    requests.post(clickhouse_http_url, data=f"CREATE DATABASE {database}".encode(), timeout=10).raise_for_status()
    topic, group = f"replay_{database}", f"g_{database}"
    asyncio.run(kafka.create_topics([topic], partitions=2))
    asyncio.run(_join_during_flush(tmp_path, kafka.bootstrap_servers, clickhouse_http_url, database, topic, group))


async def _join_during_flush(tmp_path: Path, bootstrap: str, clickhouse: str, database: str, topic: str,
                             group: str) -> None:
    events = rrweb_session(now_ms() - 60_000)
    first = [("session-a", events[:5]), ("session-b", events[:4]), ("session-a", events[5:])]
    await _produce(bootstrap, topic, first, partition=0)
    await _produce(bootstrap, topic, first, partition=1)
    writer = await open_writer(clickhouse, max_in_flight=1, compression="none")
    replay = ReplayEvents(writer, database)
    await replay.create()
    config = SinkConfig(topic=topic, block_max_age_s=0.3, retry_base_s=0.05)
    held = HeldStore(tmp_path / "blocks")
    sinks = [ObservedSink(ReplayTopicSource(bootstrap, topic, group), store, replay,
                          FileDeadLetters(tmp_path / "dlq"), TeamResolver({}), config)
             for store in (held, DirectoryStore(tmp_path / "blocks"))]
    stop = asyncio.Event()
    running = [asyncio.create_task(sinks[0].run(stop))]
    expected = 2 * (len(events) + 4 + 2)
    try:
        await asyncio.wait_for(held.first_put.wait(), 60)  # the first member is storing a block
        running.append(asyncio.create_task(sinks[1].run(stop)))  # the second joins: a rebalance
        await asyncio.wait_for(sinks[0].revoking.wait(), 60)
        await asyncio.sleep(0.2)
        held.release.set()
        for _ in range(1200):
            if all(sink.partitions for sink in sinks) or any(task.done() for task in running):
                break
            await asyncio.sleep(0.05)
        assert [len(sink.partitions) for sink in sinks] == [1, 1], "the rebalance did not complete"
        # Both members consume after the rebalance: new messages on both partitions get stored.
        await _produce(bootstrap, topic, [("session-c", events[:2])], partition=0)
        await _produce(bootstrap, topic, [("session-c", events[:2])], partition=1)
        for _ in range(1200):
            if sum(sink.items_stored for sink in sinks) >= expected or any(task.done() for task in running):
                break
            await asyncio.sleep(0.05)
        assert not any(task.done() for task in running), "a sink's loop died in the rebalance"
        assert all(sink.items_stored for sink in sinks), "the second member stored nothing"
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), 60)  # raises what killed a loop, if anything
    try:
        assert sum(sink.items_stored for sink in sinks) == expected
        for partition in (0, 1):
            assert await _committed(bootstrap, topic, group, partition) == 4
        rows = await writer.select(f"SELECT _partition, session_id, _first_offset, _last_offset, event_count"
                                   f" FROM {replay.name}")
    finally:
        await writer.close()
    assert sum(int(row[-1]) for row in rows) == expected, rows  # no block row twice
    covered = sorted((int(part), offset) for part, _, first, last, _ in rows
                     for offset in range(int(first), int(last) + 1))
    assert sorted(set(covered)) == [(part, offset) for part in (0, 1) for offset in range(4)]


async def _produce(bootstrap: str, topic: str, messages: list[tuple[str, list[dict]]], partition: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for session_id, items in messages:
            properties = {"$session_id": session_id, "$window_id": "w", "distinct_id": "dana",
                          "$snapshot_source": "web", "$snapshot_items": items}
            data = orjson.dumps({"event": "$snapshot_items", "properties": properties}).decode()
            value = {"uuid": "0", "distinct_id": "dana", "token": TOKEN, "data": data}
            await producer.send_and_wait(topic, orjson.dumps(value), key=session_id.encode(), partition=partition)
    finally:
        await producer.stop()


async def _committed(bootstrap: str, topic: str, group: str, partition: int = 0) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, partition))
    finally:
        await consumer.stop()
