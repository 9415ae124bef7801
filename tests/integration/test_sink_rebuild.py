"""`gateway sink --rebuild`: rebuild the events table from Kafka (the disaster-recovery drill).

Events are captured by a real `gateway serve` into Kafka, stored by a live `gateway sink`, the table
is dropped (simulated corruption) and rebuilt from a time before the first event: the same rows come
back (same uuids, every column), the live group's offsets never move, a second rebuild adds nothing,
and `--to` stops at a time. Bad input (`--from` after `--to`, a time before Kafka's retention, a
malformed table name) is a one-line error with exit code 2.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import requests
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from tests.services.clickhouse_server import clickhouse_query
from tests.services.kafka_broker import KafkaBroker
from tests.sinkworker.helpers import captured_value
from tests.support.processes import REPO_ROOT, GatewayProcess, gateway_env

TOKEN = "phc_rebuild_drill"
PARTITIONS = 4
BATCH = 50


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def sink(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "sink", *args], env=gateway_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: error:"), result.stderr
    return lines[0]


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_bad_rebuild_input_is_a_one_line_error() -> None:
    kafka = ("--kafka-bootstrap-servers", "127.0.0.1:9")  # never contacted: the settings are refused first
    line = one_line_error(sink("--rebuild", "--from", "2026-12-02T00:00:00Z", "--to", "2026-12-01", *kafka))
    assert "rebuild_from (2026-12-02T00:00:00Z): is not before --to (2026-12-01)" in line
    assert "needs --from" in one_line_error(sink("--rebuild", *kafka))
    assert "ISO 8601" in one_line_error(sink("--rebuild", "--from", "yesterday", *kafka))
    assert "only with --rebuild" in one_line_error(sink("--from", "2026-12-01", *kafka))
    assert "needs Kafka" in one_line_error(sink("--rebuild", "--from", "2026-12-01"))
    for table in ("a.b.c", "events-2", "db.`x`", ""):
        line = one_line_error(sink("--rebuild", "--from", "2026-12-01", "--table", table, *kafka))
        assert "table" in line and "NAME or DATABASE.NAME" in line, line


class Drill:
    """A gateway writing to fresh topics, a live sink's command, a table and its queries."""

    def __init__(self, tmp_path: Path, kafka: KafkaBroker, clickhouse_url: str) -> None:
        self.kafka, self.clickhouse_url = kafka, clickhouse_url
        self.topics = [unique("main"), unique("historical")]
        self.table, self.group = unique("events"), unique("sink")
        asyncio.run(kafka.create_topics(self.topics, partitions=PARTITIONS))
        self.gateway = GatewayProcess(
            tmp_path / "gateway", "--kafka-bootstrap-servers", kafka.bootstrap_servers, "--rate-limit-ip", "off",
            "--topic-main", self.topics[0], "--topic-historical", self.topics[1], "--log-level", "warning",
        )  # fmt: skip
        self.common = [
            "--kafka-bootstrap-servers", kafka.bootstrap_servers, "--clickhouse-url", clickhouse_url,
            "--topics", ",".join(self.topics), "--group-id", self.group, "--dlq-topic", unique("dlq"),
            "--team-map", f"{TOKEN}=7", "--batch-age-ms", "200", "--log-format", "text",
        ]  # fmt: skip
        self.acked: list[str] = []

    def capture(self, count: int) -> None:
        for start in range(0, count, BATCH):
            events = [{"event": f"drill_{i % 5}", "uuid": str(uuid.uuid4()), "distinct_id": f"user-{i % 37}",
                       "properties": {"index": start + i, "nested": {"a": [1, 2]}}} for i in range(BATCH)]  # fmt: skip
            response = requests.post(self.gateway.url + "/batch/", timeout=30,
                                     data=orjson.dumps({"api_key": TOKEN, "batch": events}))  # fmt: skip
            assert response.status_code == 200, response.text
            self.acked += [event["uuid"] for event in events]

    def query(self, sql: str, table: str | None = None) -> str:
        return clickhouse_query(self.clickhouse_url, sql.format(table=f"default.{table or self.table}"), timeout=30)

    def rows(self, table: str | None = None) -> str:
        """Every column of every row, in uuid order: the table's content as text."""
        return self.query("SELECT * FROM {table} ORDER BY uuid FORMAT TabSeparated", table)

    def stored(self) -> int:
        if self.query("EXISTS TABLE {table}").strip() != "1":
            return 0
        return int(self.query("SELECT count() FROM {table}"))

    def live_offsets(self) -> dict[TopicPartition, int]:
        async def read() -> dict[TopicPartition, int]:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka.bootstrap_servers)
            await admin.start()
            try:
                return {tp: meta.offset for tp, meta in (await admin.list_consumer_group_offsets(self.group)).items()}
            finally:
                await admin.close()

        return asyncio.run(read())


def rebuild_rate(stderr: str) -> float:
    match = re.search(r"rebuild done: (\d+) rows written into .* ([\d.]+) rows/s", stderr)
    assert match, stderr[-3000:]
    return float(match.group(2))


def test_dr_drill_drop_the_table_and_rebuild_the_same_rows_from_kafka(
    tmp_path: Path, kafka: KafkaBroker, clickhouse_http_url: str
) -> None:
    drill = Drill(tmp_path, kafka, clickhouse_http_url)
    before_first = datetime.now(UTC)
    time.sleep(0.05)
    with drill.gateway.start(timeout=30):
        drill.capture(1000)
        time.sleep(0.5)
        middle = datetime.now(UTC)  # everything before this is in Kafka: the gateway acks after acks=all
        time.sleep(0.5)
        drill.capture(500)
    assert len(set(drill.acked)) == 1500

    log = tmp_path / "live-sink.log"
    with log.open("wb") as out:
        live = subprocess.Popen([sys.executable, "-m", "gateway", "sink", *drill.common, "--table", drill.table],
                                env=gateway_env(), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while drill.stored() < 1500:
            assert time.monotonic() < deadline and live.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        time.sleep(1)  # all committed (the sink commits right after each insert)
    finally:
        live.terminate()
        assert live.wait(30) == 0
    original = drill.rows()
    assert original.count("\n") == 1500
    assert set(drill.query("SELECT uuid FROM {table}").split()) == set(drill.acked)
    live_offsets = drill.live_offsets()
    assert sum(live_offsets.values()) == 1500

    drill.query("DROP TABLE {table}")  # the simulated corruption
    rebuilt = sink("--rebuild", "--from", iso(before_first), *drill.common, "--table", f"default.{drill.table}")
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert rebuild_rate(rebuilt.stderr) > 0
    assert "rebuild done: 1500 rows written" in rebuilt.stderr
    assert drill.rows() == original  # same uuids, every column the same
    assert drill.query("SELECT count(), uniqExact(uuid) FROM {table}").split() == ["1500", "1500"]
    assert drill.live_offsets() == live_offsets  # the live group's offsets never moved

    again = sink("--rebuild", "--from", iso(before_first), *drill.common, "--table", drill.table)
    assert again.returncode == 0 and "rebuild done: 0 rows written" in again.stderr, again.stderr[-3000:]
    assert drill.query("SELECT count() FROM {table}").strip() == "1500"

    partial_table = unique("partial")
    partial = sink("--rebuild", "--from", iso(before_first), "--to", iso(middle), *drill.common,
                   "--table", partial_table)  # fmt: skip
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert drill.query("SELECT count(), uniqExact(uuid) FROM {table}", partial_table).split() == ["1000", "1000"]
    assert set(drill.query("SELECT uuid FROM {table}", partial_table).split()) == set(drill.acked[:1000])


def test_rebuild_from_before_kafkas_retention_says_what_was_lost(
    kafka: KafkaBroker, clickhouse_http_url: str
) -> None:
    topic = unique("retained")
    asyncio.run(kafka.create_topics([topic], partitions=1))

    async def produce_then_expire() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        await producer.start()
        try:
            for index in range(20):
                await producer.send_and_wait(topic, captured_value(index), partition=0)
                await asyncio.sleep(0.01)
        finally:
            await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        await admin.start()
        try:  # what retention does to old segments: offsets 0..9 are gone
            await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(10)}, timeout_ms=10_000)
        finally:
            await admin.close()
        return 10

    start = datetime.now(UTC)
    asyncio.run(produce_then_expire())
    result = sink("--rebuild", "--from", iso(start), "--kafka-bootstrap-servers", kafka.bootstrap_servers,
                  "--clickhouse-url", clickhouse_http_url, "--topics", topic, "--table", unique("lost"))  # fmt: skip
    line = one_line_error(result)
    assert f"before what Kafka still holds: {topic}/0 lost offsets 0..9 to retention and starts at" in line
    assert "rebuild from --from 20" in line
    missing = sink("--rebuild", "--from", iso(start), "--kafka-bootstrap-servers", kafka.bootstrap_servers,
                   "--clickhouse-url", clickhouse_http_url, "--topics", unique("nosuch"))  # fmt: skip
    assert "none of them exists in Kafka" in one_line_error(missing)
