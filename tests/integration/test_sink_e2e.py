"""The whole pipeline with real processes: `gateway serve` → Kafka → `gateway sink` → ClickHouse 18.16.

Clients post gzip `/batch/` requests to a gateway subprocess; a sink subprocess consumes its topics
into a fresh table. Checked on the table itself: every acknowledged uuid stored exactly once, with
the fields capture and the sink derive (team via token, server-side `$ip`, timestamp). The second
test stops ClickHouse for 30 s while clients keep posting: the consumer group's lag grows, then
drains after the restart, and nothing is lost or doubled.
(Crash of the sink between insert and commit, SIGKILL + restart and poison messages → DLQ are in
test_sink_clickhouse.py.)
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import requests

from gateway.settings.sink import DEFAULT_TOPICS
from tests.services.clickhouse_server import ClickHouseServer, clickhouse_query
from tests.services.fixtures import SessionServices
from tests.services.kafka_broker import KafkaBroker
from tests.support.kafka import group_lag
from tests.support.processes import REPO_ROOT, GatewayProcess, gateway_env

TOKEN = "phc_sink_e2e"
TEAM_ID = 42
BATCH = 100
PARTITIONS = 4
OUTAGE_SECONDS = 30
EPOCH = datetime(2026, 11, 1, tzinfo=UTC)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class Pipeline:
    """Topics, a table, a gateway subprocess and a sink subprocess, all unique to one test."""

    def __init__(self, tmp_path: Path, kafka: KafkaBroker, clickhouse_url: str) -> None:
        self.kafka = kafka
        self.clickhouse_url = clickhouse_url
        self.table = unique("events")
        self.group = unique("sink")
        self.topics = [unique("main"), unique("historical"), unique("overflow")]
        asyncio.run(kafka.create_topics(self.topics, partitions=PARTITIONS))
        self.gateway = GatewayProcess(
            tmp_path / "gateway", "--kafka-bootstrap-servers", kafka.bootstrap_servers,
            "--rate-limit-ip", "off", "--topic-main", self.topics[0], "--topic-historical", self.topics[1],
            "--topic-overflow", self.topics[2], "--log-level", "warning",
        )  # fmt: skip
        self.sink_log = tmp_path / "sink.log"
        self.sink_command = [
            sys.executable, "-m", "gateway", "sink", "--clickhouse-url", clickhouse_url,
            "--table", self.table, "--kafka-bootstrap-servers", kafka.bootstrap_servers,
            "--topics", ",".join(self.topics), "--group-id", self.group, "--dlq-topic", unique("dlq"),
            "--team-map", f"{TOKEN}={TEAM_ID}", "--strict-teams", "--batch-rows", "20000",
            "--batch-age-ms", "300", "--session-timeout-ms", "6000", "--log-level", "WARNING",
        ]  # fmt: skip
        self.sink: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        subprocess.run([*self.sink_command, "--init-schema"], env=gateway_env(), cwd=REPO_ROOT,
                       check=True, timeout=60, capture_output=True)  # fmt: skip
        self.gateway.start(timeout=30)
        with self.sink_log.open("ab") as log:
            self.sink = subprocess.Popen(self.sink_command, stdout=log, stderr=subprocess.STDOUT,
                                         env=gateway_env(), cwd=REPO_ROOT)  # fmt: skip

    def stop(self) -> None:
        self.gateway.stop()
        if self.sink is not None and self.sink.poll() is None:
            self.sink.terminate()
            try:
                self.sink.wait(30)
            except subprocess.TimeoutExpired:
                self.sink.kill()

    def query(self, sql: str) -> str:
        return clickhouse_query(self.clickhouse_url, sql.format(table=f"default.{self.table}"), timeout=30)

    def counts(self) -> tuple[int, int]:
        count, distinct = self.query("SELECT count(), uniqExact(uuid) FROM {table}").split()
        return int(count), int(distinct)

    def wait_stored(self, expected: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.counts()[0] < expected:
            assert self.sink is not None and self.sink.poll() is None, self.log()
            assert time.monotonic() < deadline, f"{self.counts()} of {expected} stored\n{self.log()}"
            time.sleep(0.25)
        time.sleep(1)  # anything beyond `expected` (a duplicate) would arrive now

    def lag(self) -> int:
        """Messages in the topics past the group's committed offsets (the consumer lag Kafka sees)."""
        return group_lag(self.kafka.bootstrap_servers, self.topics, self.group, partitions=PARTITIONS)

    def log(self) -> str:
        return self.sink_log.read_text(errors="replace")[-3000:] if self.sink_log.exists() else ""


def batch_body(start: int, count: int, client: int) -> tuple[bytes, list[str]]:
    """A gzip posthog-node-like /batch/ body of `count` events; event i is timestamped EPOCH + i ms."""
    events = []
    for index in range(start, start + count):
        events.append({
            "event": f"e2e_{index % 7}",
            "uuid": str(uuid.uuid4()),
            "distinct_id": f"user-{client}-{index % 101}",
            "timestamp": (EPOCH + timedelta(milliseconds=index)).isoformat(),
            "properties": {"index": index, "$lib": "posthog-node"},
        })  # fmt: skip
    body = gzip.compress(orjson.dumps({"api_key": TOKEN, "batch": events}), compresslevel=1)
    return body, [e["uuid"] for e in events]


class Clients:
    """Threads posting gzip batches until `total` events are acknowledged (or `stop()`)."""

    def __init__(self, url: str, total: int | None, threads: int = 4, pause_s: float = 0.0) -> None:
        self.url = url
        self.total = total
        self.pause_s = pause_s
        self.sent: dict[str, int] = {}  # uuid -> event index
        self.failures = 0
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _claim(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or (self.total is not None and self._next >= self.total):
                return None
            start, self._next = self._next, self._next + BATCH
            return start

    def _run(self, client: int) -> None:
        session = requests.Session()
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        while (start := self._claim()) is not None:
            body, uuids = batch_body(start, BATCH, client)
            for _attempt in range(5):
                try:
                    status = session.post(self.url + "/batch/", data=body, headers=headers, timeout=30).status_code
                except requests.RequestException:
                    status = 0
                if status == 200:
                    with self._lock:
                        self.sent.update((u, start + i) for i, u in enumerate(uuids))
                    break
                with self._lock:
                    self.failures += 1
                time.sleep(0.2)
            if self.pause_s:
                time.sleep(self.pause_s)

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float = 120) -> None:
        """Wait until the threads finish (all of `total` acknowledged, or stopped)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def pipeline(tmp_path: Path, kafka: KafkaBroker, clickhouse_http_url: str) -> Iterator[Pipeline]:
    pipe = Pipeline(tmp_path, kafka, clickhouse_http_url)
    try:
        pipe.start()
        yield pipe
    finally:
        pipe.stop()


def assert_exactly_once(pipe: Pipeline, sent: dict[str, int]) -> None:
    assert pipe.counts() == (len(sent), len(sent))
    stored = pipe.query("SELECT toString(uuid) FROM {table} FORMAT TSV").split()
    assert set(stored) == set(sent)


def test_100k_events_gateway_kafka_sink_clickhouse(pipeline: Pipeline) -> None:
    total = 100_000
    started = time.monotonic()
    with Clients(pipeline.gateway.url, total) as clients:
        clients.join()
    posted = time.monotonic() - started
    assert len(clients.sent) == total and clients.failures == 0
    pipeline.wait_stored(total, timeout=120)
    print(f"\n{total} events: posted in {posted:.1f} s, stored after {time.monotonic() - started:.1f} s")

    assert_exactly_once(pipeline, clients.sent)
    rows = pipeline.query(
        "SELECT toString(uuid), event, distinct_id, team_id, token, toUnixTimestamp(timestamp), properties,"
        " _topic FROM {table} FORMAT JSONEachRow"
    ).splitlines()
    assert len(rows) == total
    for line in rows:
        row_uuid, event, distinct_id, team_id, token, timestamp, properties, topic = orjson.loads(line).values()
        index = clients.sent[row_uuid]
        props = orjson.loads(properties)
        assert event == f"e2e_{index % 7}"
        assert distinct_id.startswith("user-") and distinct_id.endswith(f"-{index % 101}")
        assert (int(team_id), token, topic) == (TEAM_ID, TOKEN, pipeline.topics[0])  # 18.16 quotes Int64
        expected = (EPOCH + timedelta(milliseconds=index)).timestamp()
        assert abs(int(timestamp) - expected) < 1.0  # 18.16 stores whole seconds
        assert props["index"] == index and props["$lib"] == "posthog-node"
        assert props["$ip"] == "127.0.0.1"


@pytest.fixture
def clickhouse_server(session_services: SessionServices) -> Iterator[ClickHouseServer]:
    """The shared ClickHouse server; running again after the test whatever it did to it."""
    server = session_services.get(ClickHouseServer)
    yield server
    if not server.running:
        server.start()


def test_clickhouse_outage_builds_lag_then_drains_exactly_once(
    tmp_path: Path, kafka: KafkaBroker, clickhouse_server: ClickHouseServer
) -> None:
    pipe = Pipeline(tmp_path, kafka, clickhouse_server.http_url)
    try:
        pipe.start()
        with Clients(pipe.gateway.url, None, threads=2, pause_s=0.05) as clients:
            time.sleep(3)
            clickhouse_server.stop()
            try:
                time.sleep(OUTAGE_SECONDS / 2)
                lag_mid = pipe.lag()
                time.sleep(OUTAGE_SECONDS / 2)
                lag_end = pipe.lag()
            finally:
                clickhouse_server.start()
            assert pipe.sink is not None and pipe.sink.poll() is None, f"sink died in the outage\n{pipe.log()}"
            time.sleep(3)
        print(f"\nlag after {OUTAGE_SECONDS // 2} s down: {lag_mid}, after {OUTAGE_SECONDS} s: {lag_end}")
        assert clients.failures == 0  # the gateway only needs Kafka
        assert 0 < lag_mid < lag_end  # events kept arriving; none were committed while ClickHouse was down
        pipe.wait_stored(len(clients.sent), timeout=90)
        deadline = time.monotonic() + 30
        while pipe.lag() > 0:  # committed offsets catch up once the backlog is stored
            assert time.monotonic() < deadline, f"lag stuck at {pipe.lag()}"
            time.sleep(0.5)
        assert_exactly_once(pipe, clients.sent)
    finally:
        pipe.stop()


def test_exception_events_reach_the_table_with_the_sinks_default_topics(
    tmp_path: Path, kafka: KafkaBroker, clickhouse_http_url: str
) -> None:
    """`$exception` goes to PostHog's error-tracking topic; the sink consumes it without `--topics`."""
    person, table = unique("crashy"), unique("events")
    asyncio.run(kafka.create_topics(DEFAULT_TOPICS))
    sink = [sys.executable, "-m", "gateway", "sink", "--clickhouse-url", clickhouse_http_url, "--table", table,
            "--kafka-bootstrap-servers", kafka.bootstrap_servers, "--group-id", unique("sink"),
            "--dlq-topic", unique("dlq"), "--batch-age-ms", "200", "--session-timeout-ms", "6000"]  # fmt: skip
    subprocess.run([*sink, "--init-schema"], env=gateway_env(), cwd=REPO_ROOT, check=True, timeout=60,
                   capture_output=True)  # fmt: skip
    events = [
        {"event": "$exception", "distinct_id": person, "uuid": str(uuid.uuid4()),
         "properties": {"$exception_list": [{"type": "TypeError", "value": "x is undefined"}]}},
        {"event": "$pageview", "distinct_id": person, "uuid": str(uuid.uuid4()), "properties": {}},
    ]  # fmt: skip
    log = tmp_path / "sink.log"
    with GatewayProcess(tmp_path / "gateway", "--kafka-bootstrap-servers", kafka.bootstrap_servers,
                        "--rate-limit-ip", "off") as gateway, log.open("ab") as out:  # fmt: skip
        response = requests.post(gateway.url + "/batch/", json={"api_key": TOKEN, "batch": events}, timeout=10)
        assert response.status_code == 200
        process = subprocess.Popen(sink, stdout=out, stderr=subprocess.STDOUT, env=gateway_env(), cwd=REPO_ROOT)
        try:
            query = f"SELECT event, _topic FROM default.{table} WHERE distinct_id = '{person}' ORDER BY event"
            deadline = time.monotonic() + 90
            while len(stored := clickhouse_query(clickhouse_http_url, query).splitlines()) < 2:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        finally:
            process.terminate()
            process.wait(30)
    assert stored == ["$exception\terror_tracking_events", "$pageview\tevents_plugin_ingestion"]
