"""Smoke tests proving the real-service fixtures work: Kafka, Redis, ClickHouse, nginx."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from tests.services.base import Service, ServiceError, free_port, pid_alive
from tests.services.clickhouse_server import clickhouse_query
from tests.services.fixtures import SessionServices
from tests.services.kafka_broker import KafkaBroker
from tests.services.nginx_server import NginxServer, nginx_test


async def _consume(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[ConsumerRecord]:
    """Read `count` records from the start of `topic` (no consumer group)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        async with asyncio.timeout(timeout):
            async for record in consumer:
                records.append(record)
                if len(records) == count:
                    return records
    finally:
        await consumer.stop()
    return records


def test_kafka_produce_consume_with_keys_and_headers(kafka: KafkaBroker) -> None:
    topic = f"smoke-{uuid.uuid4().hex}"

    async def scenario() -> list[ConsumerRecord]:
        await kafka.create_topics([topic])
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        await producer.start()
        try:
            for i in range(20):
                await producer.send(topic, f"value-{i}".encode(), key=f"key-{i}".encode(),
                                    headers=[("source", b"test"), ("n", str(i).encode())])
            await producer.flush()
        finally:
            await producer.stop()
        return await _consume(kafka.bootstrap_servers, topic, 20)

    records = asyncio.run(scenario())
    assert sorted(r.value for r in records) == sorted(f"value-{i}".encode() for i in range(20))
    by_key = {r.key: r for r in records}
    assert by_key[b"key-3"].value == b"value-3"
    assert list(by_key[b"key-3"].headers) == [("source", b"test"), ("n", b"3")]
    assert len({r.partition for r in records}) > 1  # keys spread over the topic's partitions


def test_kafka_broker_restart_on_same_address(kafka: KafkaBroker) -> None:
    topic = f"outage-{uuid.uuid4().hex}"
    address = kafka.bootstrap_servers

    async def scenario() -> list[ConsumerRecord]:
        producer = AIOKafkaProducer(bootstrap_servers=address, request_timeout_ms=10_000)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before")  # auto-created topic
            await asyncio.to_thread(kafka.stop)
            try:
                assert not kafka.running
            finally:
                await asyncio.to_thread(kafka.start)
            await producer.send_and_wait(topic, b"after")  # the same producer reconnects
        finally:
            await producer.stop()
        return await _consume(address, topic, 2)

    records = asyncio.run(scenario())
    assert kafka.bootstrap_servers == address
    assert sorted(r.value for r in records) == [b"after", b"before"]


def test_redis_ping_set_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
        client.set("smoke", "value", ex=60)
        assert client.get("smoke") == b"value"
    finally:
        client.close()


def test_clickhouse_version_and_json_insert(clickhouse_http_url: str) -> None:
    assert clickhouse_query(clickhouse_http_url, "SELECT version()").startswith("18.")
    table = f"smoke_{uuid.uuid4().hex}"
    clickhouse_query(clickhouse_http_url, f"CREATE TABLE {table} (uuid String, event String, "
                     "ts DateTime) ENGINE = MergeTree ORDER BY (event, uuid)")
    rows = [{"uuid": str(uuid.uuid4()), "event": f"e{i}", "ts": "2026-01-02 03:04:05"} for i in range(3)]
    body = "\n".join(json.dumps(row) for row in rows).encode()
    clickhouse_query(clickhouse_http_url, f"INSERT INTO {table} FORMAT JSONEachRow", data=body)
    result = clickhouse_query(clickhouse_http_url, f"SELECT event, ts FROM {table} ORDER BY event FORMAT TSV")
    assert result.splitlines() == [f"e{i}\t2026-01-02 03:04:05" for i in range(3)]
    clickhouse_query(clickhouse_http_url, f"DROP TABLE {table}")


def test_nginx_config_check_and_serve(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\n"
        f"http {{ server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok'; }} }} }}\n"
    )
    assert "syntax is ok" in nginx_test(conf, tmp_path / "prefix")
    server = NginxServer(root=tmp_path / "prefix", conf=conf, ports=[port])
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.read() == b"ok"
    finally:
        server.stop()
    assert not server.running


STARTED_PIDS: list[int] = []


@dataclass(kw_only=True)
class FailingOnce(Service):
    """Starts its process, then fails the first time, as a server whose port was taken between finding it
    free and binding it (a cluster's second node, say); starts the second time."""

    name = "failing-once"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pid = subprocess.Popen(["sleep", "60"], start_new_session=True).pid
        STARTED_PIDS.append(self.pid)
        if len(STARTED_PIDS) == 1:
            raise ServiceError("second node: address already in use")


def test_a_service_that_fails_half_way_through_starting_is_stopped_and_started_once_more(tmp_path: Path) -> None:
    services = SessionServices(tmp_path)
    service = services.get(FailingOnce)
    first, second = STARTED_PIDS
    assert service.pid == second and pid_alive(second)
    assert not pid_alive(first), "the half-started attempt is stopped, not left running"
    services.stop_started()
    assert not pid_alive(second)
