"""Sink worker against the real services: ClickHouse 18.16 over HTTP, and Kafka end to end.

Exactly-once is checked with count() and uniqExact(uuid) after a crash between insert and commit
(in process) and after SIGKILL of the `gateway sink` process (subprocess), each followed by a restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from prometheus_client import REGISTRY

from gateway.clickhouse.http_writer import HttpWriter
from gateway.clickhouse.schema import events_table_ddl, table_name
from gateway.clickhouse.writer import ErrorKind, WriteError
from gateway.sinkworker import confluent
from gateway.sinkworker.batch import FlushPolicy
from gateway.sinkworker.confluent import ConfluentSource
from gateway.sinkworker.dlq import KafkaDeadLetters
from gateway.sinkworker.rows import RowEncoder
from gateway.sinkworker.teams import TeamResolver
from gateway.sinkworker.worker import SinkWorker, WorkerConfig
from tests.services.clickhouse_server import clickhouse_query
from tests.services.kafka_broker import KafkaBroker
from tests.sinkworker.helpers import captured_value, record

SESSION_TIMEOUT_MS = 6000


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def counts(url: str, table: str) -> tuple[int, int]:
    count, distinct = clickhouse_query(url, f"SELECT count(), uniqExact(uuid) FROM default.{table}").split()
    return int(count), int(distinct)


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


async def create_table(url: str, table: str) -> HttpWriter:
    writer = await HttpWriter.connect(url, max_in_flight=2, compression="gzip")
    await writer.command(events_table_ddl(writer.caps, "default", table, retention_days=30))
    return writer


def test_schema_and_inserts_on_clickhouse_18_16(clickhouse_http_url: str) -> None:
    table = unique("events")

    async def scenario() -> None:
        writer = await create_table(clickhouse_http_url, table)
        try:
            assert writer.caps.version[:2] == (18, 16) and not writer.caps.dedup_token
            encoder = RowEncoder(TeamResolver({}), subsecond=False)
            body = b"".join(encoder.encode(record(captured_value(i), offset=i)) for i in range(1000))
            await writer.insert(table_name("default", table), body, "token")
            await asyncio.sleep(3.3)  # past the server's 3 s idle keep-alive: must not break the next insert
            await writer.insert(table_name("default", table), body[: body.index(b"\n") + 1], None)
        finally:
            await writer.close()

    asyncio.run(scenario())
    assert counts(clickhouse_http_url, table) == (1001, 1000)
    row = clickhouse_query(
        clickhouse_http_url, f"SELECT toString(timestamp), team_id FROM default.{table} LIMIT 1"
    )
    assert row.split("\t")[0] == "2023-09-15 09:15:02"


async def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        acks = [
            await producer.send(topic, value, key=f"k{i}".encode(), partition=i % partitions)
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


class CrashingKafkaSource(ConfluentSource):
    """Fails its first commit, as if the process died right after the insert."""

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        raise RuntimeError("simulated crash between insert and commit")


def test_kafka_crash_between_insert_and_commit_then_restart(
    kafka: KafkaBroker, clickhouse_http_url: str
) -> None:
    topic, dlq_topic, table, group = unique("capture"), unique("dlq"), unique("events"), unique("sink")
    total = 3000
    values = [captured_value(i) for i in range(total)]
    values.insert(1234, b"\x00garbage")

    async def committed() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        except GroupCoordinatorNotAvailableError:  # a fresh broker elects the coordinator lazily
            return 0
        finally:
            await admin.close()
        return sum(meta.offset for meta in offsets.values())

    async def run(source_class: type[ConfluentSource]) -> None:
        writer = await HttpWriter.connect(clickhouse_http_url)
        dead = await KafkaDeadLetters.start(kafka.bootstrap_servers, dlq_topic)
        source = source_class.create(kafka.bootstrap_servers, [topic], group, SESSION_TIMEOUT_MS)
        config = WorkerConfig(table_name("default", table), FlushPolicy(max_rows=400, max_age_s=0.2))
        worker = SinkWorker(source, writer, dead, RowEncoder(TeamResolver({}), subsecond=False), config)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            while not task.done() and await committed() < len(values):
                await asyncio.sleep(0.2)
            stop.set()
            await task
        finally:
            await dead.close()
            await writer.close()

    async def scenario() -> None:
        await kafka.create_topics([topic], partitions=3)
        await (await create_table(clickhouse_http_url, table)).close()
        await produce(kafka.bootstrap_servers, topic, values, 3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            await run(CrashingKafkaSource)
        assert counts(clickhouse_http_url, table)[0] > 0 and await committed() == 0
        await run(ConfluentSource)

    asyncio.run(scenario())
    assert counts(clickhouse_http_url, table) == (total, total)
    dead = asyncio.run(consume(kafka.bootstrap_servers, dlq_topic, 1))
    assert dict(dead[0].headers)["dlq_reason"] == b"invalid_json" and dead[0].value == b"\x00garbage"


class FailingInserts:
    """A writer whose inserts fail (as when ClickHouse refuses them) while `failing` is set."""

    def __init__(self, writer: HttpWriter) -> None:
        self.writer = writer
        self.failing = True

    def __getattr__(self, name: str) -> object:
        return getattr(self.writer, name)

    async def insert(self, *args: object, **kwargs: object) -> None:
        if self.failing:
            raise WriteError(ErrorKind.TRANSIENT, "Code: 999, e.displayText() = simulated outage")
        await self.writer.insert(*args, **kwargs)


def test_consumer_lag_and_readiness_while_inserts_fail(
    kafka: KafkaBroker, clickhouse_http_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gateway_sink_consumer_lag` is end offset minus committed offset: while inserts fail, the messages
    consumed but not stored count, and so do those produced while the paused source fetches nothing.
    Meanwhile the sink is not ready (`/ready` on --metrics-port, `gateway_sink_ready`), until an insert succeeds."""
    monkeypatch.setattr(confluent, "LAG_REFRESH_S", 0.3)
    topic, dlq_topic, table, group = unique("capture"), unique("dlq"), unique("events"), unique("sink")

    def lag() -> float | None:
        return REGISTRY.get_sample_value("gateway_sink_consumer_lag", {"topic": topic, "partition": "0"})

    async def wait_until(condition: Callable[[], bool], task: asyncio.Task[None]) -> None:
        async with asyncio.timeout(30):
            while not condition():
                assert not task.done(), task
                await asyncio.sleep(0.1)

    async def scenario() -> None:
        await kafka.create_topics([topic], partitions=1)
        writer = FailingInserts(await create_table(clickhouse_http_url, table))
        dead = await KafkaDeadLetters.start(kafka.bootstrap_servers, dlq_topic)
        source = ConfluentSource.create(kafka.bootstrap_servers, [topic], group, SESSION_TIMEOUT_MS)
        config = WorkerConfig(table_name("default", table), FlushPolicy(max_rows=100, max_age_s=0.2),
                              max_in_flight=1, fetch_max_records=100, retry_base_s=0.05, retry_max_s=0.2)
        worker = SinkWorker(source, writer, dead, RowEncoder(TeamResolver({}), subsecond=False), config)
        await produce(kafka.bootstrap_servers, topic, [captured_value(i) for i in range(500)], 1)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await wait_until(lambda: lag() == 500, task)  # nothing stored, whatever was consumed
            await wait_until(lambda: not worker.health.ready, task)  # from the first failed insert on
            assert "simulated outage" in worker.health.reason
            assert REGISTRY.get_sample_value("gateway_sink_ready") == 0
            await asyncio.sleep(1.5)  # the source pauses (batch full, the insert slot busy), its fetches end
            await produce(kafka.bootstrap_servers, topic, [captured_value(i) for i in range(500, 550)], 1)
            await wait_until(lambda: lag() == 550, task)  # the source is paused: end offsets are asked for
            writer.failing = False
            await wait_until(lambda: lag() == 0, task)
            assert worker.rows_written == 550
            assert worker.health.ready and REGISTRY.get_sample_value("gateway_sink_ready") == 1
            stop.set()
            await task
        finally:
            stop.set()
            await dead.close()
            await writer.close()

    asyncio.run(scenario())
    assert counts(clickhouse_http_url, table) == (550, 550)


async def consume(bootstrap: str, topic: str, count: int) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        records = []
        async with asyncio.timeout(30):
            async for message in consumer:
                records.append(message)
                if len(records) == count:
                    return records
    finally:
        await consumer.stop()
    return records


def test_sink_process_killed_midway_then_restarted(kafka: KafkaBroker, clickhouse_http_url: str) -> None:
    topic, table, group = unique("capture"), unique("events"), unique("sink")
    half = 4000
    env = {
        **os.environ,
        "GATEWAY_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "GATEWAY_CLICKHOUSE_URL": clickhouse_http_url,
        "GATEWAY_TABLE": table,
    }
    command = [
        sys.executable, "-m", "gateway", "sink", "--topics", topic, "--group-id", group,
        "--dlq-topic", unique("dlq"), "--batch-rows", "300", "--batch-age-ms", "100",
        "--session-timeout-ms", str(SESSION_TIMEOUT_MS), "--log-level", "WARNING",
    ]  # fmt: skip
    asyncio.run(kafka.create_topics([topic], partitions=3))
    subprocess.run([*command, "--init-schema"], env=env, check=True, timeout=60)
    asyncio.run(produce(kafka.bootstrap_servers, topic, [captured_value(i) for i in range(half)], 3))
    sink = subprocess.Popen(command, env=env)
    try:
        wait_for(lambda: counts(clickhouse_http_url, table)[0] > 0)
        sink.send_signal(signal.SIGKILL)
        sink.wait(10)
        values = [captured_value(i) for i in range(half, 2 * half)]
        asyncio.run(produce(kafka.bootstrap_servers, topic, values, 3))
        sink = subprocess.Popen(command, env=env)
        wait_for(lambda: counts(clickhouse_http_url, table)[0] >= 2 * half)
        time.sleep(1)
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(30) == 0
    finally:
        if sink.poll() is None:
            sink.kill()
    assert counts(clickhouse_http_url, table) == (2 * half, 2 * half)
