"""Kafka mode against real servers: `gateway serve` → Kafka → `gateway recordings sink` → S3 (s3s-fs) and
ClickHouse 18.16. A SIGKILL mid-way neither loses nor duplicates snapshot items; a storage outage pauses
the sink (readiness 503 with the reason) and nothing is lost when storage returns; a record without a
session id goes to the DLQ topic with its reason."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import requests
from aiokafka import AIOKafkaProducer

from tests.recordings.replay import now_ms, post_snapshots, rrweb_session
from tests.services.s3_server import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server
from tests.support.inprocess import free_port
from tests.support.kafka import consume_all
from tests.support.processes import REPO_ROOT, GatewayProcess, gateway_env, run_gateway
from tests.support.waiting import wait_for

REPLAY = "session_recording_snapshot_item_events"
DLQ = "session_recording_snapshot_item_events_dlq"


def clickhouse_count(url: str, sql: str) -> int:
    """The count, or -1 while the sink has not created its table yet."""
    response = requests.post(url, data=sql.encode(), timeout=10)
    return int(response.text.strip() or 0) if response.status_code == 200 else -1


def test_kafka_sink_survives_crash_and_storage_outage(
    tmp_path: Path, kafka, clickhouse_http_url: str, s3_server: S3Server
) -> None:
    asyncio.run(kafka.create_topics([REPLAY, DLQ]))
    database = f"rec_{uuid.uuid4().hex[:12]}"
    requests.post(clickhouse_http_url, data=f"CREATE DATABASE {database}".encode(), timeout=10).raise_for_status()
    table = f"{database}.session_replay_events"
    prefix = f"s3://{BUCKET}/{database}"
    port = free_port()
    flags = ["--kafka-bootstrap-servers", kafka.bootstrap_servers, "--clickhouse", clickhouse_http_url,
             "--database", database, "--recordings-storage", prefix, "--s3-endpoint-url", s3_server.endpoint_url,
             "--s3-access-key-id", ACCESS_KEY, "--s3-secret-access-key", SECRET_KEY,
             "--recordings-group-id", f"g-{database}", "--block-max-bytes", "2K", "--block-max-age", "0.3",
             "--recordings-http-port", str(port), "--log-format", "text", "--data-dir", str(tmp_path / "data")]
    log_path = tmp_path / "sink.log"

    def start_sink() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "gateway", "recordings", "sink", *flags],
                                    stdout=log, stderr=subprocess.STDOUT, env=gateway_env(), cwd=REPO_ROOT)

    sessions = {f"session-{n}": rrweb_session(now_ms() - 10_000 + n, padding=200) for n in range(12)}
    with GatewayProcess(tmp_path / "gw", "--kafka-bootstrap-servers", kafka.bootstrap_servers) as gateway:
        for session_id, events in sessions.items():
            post_snapshots(gateway.url, session_id, "dana", events, per_request=1)
        asyncio.run(_produce_without_session_id(kafka.bootstrap_servers))

        sink = start_sink()
        try:
            wait_for(lambda: clickhouse_count(clickhouse_http_url, f"SELECT count() FROM {table}") >= 10,
                     timeout=60, what="some blocks stored")
            sink.kill()  # a crash: stored blocks whose offsets are not yet committed are read again
            sink.wait(10)
            sink = start_sink()
            expected_events = sum(len(events) for events in sessions.values())
            total = f"SELECT sum(event_count) FROM (SELECT * FROM {table} FINAL)"
            wait_for(lambda: clickhouse_count(clickhouse_http_url, total) >= expected_events, timeout=60,
                     what="every snapshot item stored")

            s3_server.stop()  # storage outage
            try:
                late = rrweb_session(now_ms())
                post_snapshots(gateway.url, "session-late", "dana", late)
                wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 503,
                         timeout=30, what="readiness down during the outage")
                reason = requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).json()["reason"]
                assert reason.startswith("storage")
            finally:
                s3_server.start()
            sessions["session-late"] = late
            wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200,
                     timeout=60, what="readiness back after the outage")
            wait_for(lambda: clickhouse_count(clickhouse_http_url, total) >= expected_events + len(late),
                     timeout=60, what="the items sent during the outage stored")
        finally:
            sink.terminate()
            assert sink.wait(30) == 0, log_path.read_text()[-3000:]

    export_flags = [f for f in flags if f not in ("--recordings-http-port", str(port))]
    for session_id, events in sessions.items():
        result = run_gateway("recordings", "export", session_id, "--out", str(tmp_path / "out.json"), *export_flags)
        assert result.returncode == 0, result.stderr
        assert orjson.loads((tmp_path / "out.json").read_bytes()) == events, f"{session_id}: lost or duplicated"

    dead = consume_all(kafka.bootstrap_servers, [DLQ], at_least=1)
    headers = {key: value for key, value in dead[0][1].headers}
    assert headers["dlq_reason"] == b"missing_session_id"


async def _produce_without_session_id(bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        data = {"event": "$snapshot_items", "properties": {"distinct_id": "dana", "$snapshot_items": []}}
        value = {"uuid": "0", "distinct_id": "dana", "token": "t", "data": orjson.dumps(data).decode()}
        await producer.send_and_wait(REPLAY, orjson.dumps(value), key=b"x")
    finally:
        await producer.stop()
