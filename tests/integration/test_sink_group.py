"""Several `gateway sink` processes in one consumer group: real Kafka, ClickHouse 18.16 over HTTP.

- `--processes N`: the parent supervises N children (a killed child is restarted, SIGUSR2 makes each
  log its stacks, SIGTERM stops them all cleanly, a crash loop stops the sink with one line).
- Three separate sink processes over a 12-partition topic while events keep arriving: started one
  after another, one stopped (SIGTERM), one killed -9 mid-batch, one added back. Every rebalance
  must keep rows exactly-once: plain count() = distinct uuids = events produced, and the group's
  lag drains to 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer

from tests.services.clickhouse_server import clickhouse_query
from tests.services.kafka_broker import KafkaBroker
from tests.sinkworker.helpers import captured_value
from tests.support.kafka import group_lag
from tests.support.processes import REPO_ROOT, gateway_env

PARTITIONS = 12
SESSION_TIMEOUT_MS = 6000


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class SinkGroup:
    """A topic, a table and a consumer group unique to one test, and `gateway sink` commands for them."""

    def __init__(self, tmp_path: Path, kafka: KafkaBroker, clickhouse_url: str) -> None:
        self.tmp_path = tmp_path
        self.kafka = kafka
        self.clickhouse_url = clickhouse_url
        self.topic, self.table, self.group = unique("capture"), unique("events"), unique("sink")
        self.command = [
            sys.executable, "-m", "gateway", "sink", "--kafka-bootstrap-servers", kafka.bootstrap_servers,
            "--clickhouse-url", clickhouse_url, "--table", self.table, "--topics", self.topic,
            "--group-id", self.group, "--dlq-topic", unique("dlq"), "--batch-rows", "2000",
            "--batch-age-ms", "500", "--session-timeout-ms", str(SESSION_TIMEOUT_MS), "--log-level", "INFO",
            "--log-format", "text",
        ]  # fmt: skip
        asyncio.run(kafka.create_topics([self.topic], partitions=PARTITIONS))
        subprocess.run([*self.command, "--init-schema"], env=gateway_env(), cwd=REPO_ROOT, check=True,
                       timeout=60, capture_output=True)  # fmt: skip
        self.logs: list[Path] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"sink-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen([*self.command, *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=gateway_env(), cwd=REPO_ROOT)  # fmt: skip

    def counts(self) -> tuple[int, int]:
        count, distinct = clickhouse_query(
            self.clickhouse_url, f"SELECT count(), uniqExact(uuid) FROM default.{self.table}"
        ).split()
        return int(count), int(distinct)

    def lag(self) -> int:
        return group_lag(self.kafka.bootstrap_servers, [self.topic], self.group, partitions=PARTITIONS)

    def log_text(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-12000:]}" for log in self.logs)


class Producer:
    """Produces captured events (uuid i+1 for event i) at a steady rate over every partition until stopped."""

    def __init__(self, bootstrap: str, topic: str, per_second: int = 2000, start: int = 0) -> None:
        self.bootstrap, self.topic, self.per_second = bootstrap, topic, per_second
        self.produced = start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
        await producer.start()
        try:
            while not self._stop.is_set():
                step = self.per_second // 10
                batch = range(self.produced, self.produced + step)
                acks = [await producer.send(self.topic, captured_value(i), partition=i % PARTITIONS) for i in batch]
                await asyncio.gather(*acks)
                self.produced += step
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        return self.produced

    def __exit__(self, *exc: object) -> None:
        self.stop()


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_processes_needs_kafka_mode(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "sink", "--processes", "2", "--data-dir", str(tmp_path)],
        env=gateway_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "processes" in lines[0] and "Kafka" in lines[0], result.stderr


def test_processes_children_share_the_group_and_a_killed_one_is_restarted(
    tmp_path: Path, kafka: KafkaBroker, clickhouse_http_url: str
) -> None:
    group = SinkGroup(tmp_path, kafka, clickhouse_http_url)
    sink = group.start("--processes", "2")
    try:
        with Producer(kafka.bootstrap_servers, group.topic) as producer:
            wait_for(lambda: len(children(sink.pid)) == 2, 30, "two children")
            wait_for(lambda: group.counts()[0] > 0, 60, "first rows")
            first, second = children(sink.pid)
            os.kill(first, signal.SIGKILL)  # the other child takes over its partitions meanwhile
            wait_for(lambda: "restarting it in 1s" in group.log_text(), 30, "the restart")
            wait_for(lambda: len(children(sink.pid)) == 2 and first not in children(sink.pid), 30, "the new child")
            time.sleep(3)
            produced = producer.stop()
        wait_for(lambda: group.counts()[0] >= produced, 60, f"{produced} rows")
        time.sleep(1)  # a duplicate would arrive now
        assert second in children(sink.pid)
        running = children(sink.pid)
        sink.send_signal(signal.SIGUSR2)  # passed on: each child logs its stacks and runs on
        wait_for(lambda: group.logs[0].read_text(errors="replace").count("stack dump on SIGUSR2:\ntask ") == 2, 10,
                 "a stack dump from each child")  # fmt: skip
        assert children(sink.pid) == running and sink.poll() is None
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(60) == 0, group.log_text()
    finally:
        stop_all([sink])
    assert group.counts() == (produced, produced)
    assert group.lag() == 0
    assert "Traceback" not in group.log_text()


def test_processes_crash_loop_stops_the_sink_with_one_line(
    tmp_path: Path, kafka: KafkaBroker, clickhouse_http_url: str
) -> None:
    group = SinkGroup(tmp_path, kafka, clickhouse_http_url)
    sink = group.start("--processes", "2")
    killed: list[int] = []
    try:
        # Three restarts of both children make five crashes however slowly they start; the deadline
        # only guards against a hang.
        deadline = time.monotonic() + 180
        while sink.poll() is None:
            assert time.monotonic() < deadline, group.log_text()
            running = [int(pid) for pid in re.findall(r"sink process \d running \(pid (\d+)\)", group.log_text())]
            for pid in running:
                if pid not in killed:
                    with contextlib.suppress(ProcessLookupError):  # gone already: the supervisor stopped it
                        os.kill(pid, signal.SIGKILL)  # each one after it started: crashes, not start-up failures
                    killed.append(pid)
            time.sleep(0.1)
    finally:
        stop_all([sink])
    assert sink.returncode == 1, group.log_text()
    errors = [line for line in group.logs[0].read_text().splitlines() if line.startswith("gateway: error:")]
    assert len(errors) == 1, group.log_text()
    assert "crash loop: 5 crashes in a row, each within 60 s of starting; sink stopped" in errors[0]
    assert len(killed) >= 5  # the two children restart together: both may be killed in one sweep


def test_three_sinks_through_rebalances_keep_rows_exactly_once(
    tmp_path: Path, kafka: KafkaBroker, clickhouse_http_url: str
) -> None:
    group = SinkGroup(tmp_path, kafka, clickhouse_http_url)
    sinks: list[subprocess.Popen[bytes]] = []

    def rows_grow(seconds: float) -> None:
        """Let the group settle after a change and prove it still stores rows."""
        before = group.counts()[0]
        wait_for(lambda: group.counts()[0] > before, 30, "rows after the rebalance")
        time.sleep(seconds)

    try:  # about 60 s here
        with Producer(kafka.bootstrap_servers, group.topic) as producer:
            for _ in range(3):  # one after another: each join is a rebalance
                sinks.append(group.start())
                rows_grow(3)
            sinks[0].send_signal(signal.SIGTERM)  # leaves the group cleanly: stores and commits first
            assert sinks[0].wait(30) == 0, group.log_text()
            rows_grow(2)
            # kill -9 mid-batch: a batch is always filling (events keep arriving, --batch-age-ms 500)
            sinks[1].send_signal(signal.SIGKILL)
            sinks[1].wait(10)
            sinks.append(group.start())  # one added back
            rows_grow(SESSION_TIMEOUT_MS / 1000)  # the killed member's partitions move after its session ends
            produced = producer.stop()
        wait_for(lambda: group.counts()[0] >= produced, 60, f"{produced} rows\n{group.log_text()}")
        time.sleep(1)  # a duplicate would arrive now
        wait_for(lambda: group.lag() == 0, 30, "the group's lag to drain")
        for sink in (sinks[2], sinks[3]):
            sink.send_signal(signal.SIGTERM)
        assert [sinks[2].wait(30), sinks[3].wait(30)] == [0, 0], group.log_text()
    finally:
        stop_all(sinks)
    assert group.counts() == (produced, produced)  # plain count(): no duplicate row, even before merges
    assert produced > 20_000
