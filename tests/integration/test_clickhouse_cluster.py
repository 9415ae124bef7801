"""`gateway sink` and `gateway gdpr` on a replicated ClickHouse: two 18.16 replicas of one shard and ZooKeeper.

`--init-schema --cluster` creates the ReplicatedReplacingMergeTree table and its Distributed table on
both replicas; bad cluster configuration is a one-line error. Under a running sink one replica is
SIGKILLed: the sink fails over to the other, nothing is lost or doubled, and the replicas catch up
with each other once it is back (parts only the killed one had reach the other then); with both down
the sink commits nothing until one returns. A retried identical block adds no rows whichever replica
gets it. GDPR export reads the cluster, delete removes rows on every replica. With `--insert-quorum 2`
an insert returns only once both replicas hold it: with one replica down the sink stores and commits
nothing, and once it returns every row is stored exactly once on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import orjson
import pytest

from gateway.clickhouse import replicas
from gateway.clickhouse.replicas import ReplicaWriter
from gateway.clickhouse.schema import table_name
from gateway.clickhouse.writer import ErrorKind, WriteError
from gateway.sinkworker.rows import ROWBINARY_COLUMNS, RowEncoder
from gateway.sinkworker.teams import TeamResolver
from tests.integration.test_sink_clickhouse import produce
from tests.services.base import free_port
from tests.services.clickhouse_cluster import ClickHouseCluster
from tests.services.clickhouse_server import clickhouse_query
from tests.services.kafka_broker import KafkaBroker
from tests.sinkworker.helpers import captured_value, record
from tests.support.kafka import group_lag
from tests.support.processes import REPO_ROOT, gateway_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
PARTITIONS = 3


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cluster(clickhouse_cluster: ClickHouseCluster) -> Iterator[ClickHouseCluster]:
    """The session's cluster, both replicas running again after the test (it kills some)."""
    yield clickhouse_cluster
    clickhouse_cluster.start()


def gateway(*argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *argv], env=gateway_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def init_schema(cluster: ClickHouseCluster, table: str) -> None:
    done = gateway("sink", "--init-schema", "--cluster", cluster.cluster, "--clickhouse-url",
                   ",".join(cluster.http_urls), "--table", table)  # fmt: skip
    assert done.returncode == 0, done.stderr


def counts(url: str, table: str) -> tuple[int, int]:
    count, distinct = clickhouse_query(url, f"SELECT count(), uniqExact(uuid) FROM default.{table}").split()
    return int(count), int(distinct)


def rows_of(url: str, table: str, wave: range) -> int:
    """Rows of the events `wave` (distinct ids user-N, as `captured_value` writes them) on one replica."""
    users = f"SELECT concat('user-', toString(number)) FROM numbers({wave.start}, {len(wave)})"
    return int(clickhouse_query(url, f"SELECT count() FROM default.{table} WHERE distinct_id IN ({users})"))


def caught_up(url: str, table: str) -> None:
    clickhouse_query(url, f"SYSTEM SYNC REPLICA default.{table}", timeout=60)


def rowbinary(wave: range) -> bytes:
    """The sink's RowBinary rows of the events `wave`."""
    encoder = RowEncoder(TeamResolver({}), subsecond=False)
    return b"".join(encoder.encode_binary(record(captured_value(i), offset=i)) or b"" for i in wave)


def active_replicas(url: str, table: str) -> int:
    """Replicas of `table` with a live ZooKeeper session (what a quorum insert counts)."""
    sql = f"SELECT active_replicas FROM system.replicas WHERE database = 'default' AND table = '{table}'"
    return int(clickhouse_query(url, sql))


def table_and_topic(cluster: ClickHouseCluster, kafka: KafkaBroker, name: str) -> tuple[str, str, str]:
    """A fresh replicated events table, topic and consumer group."""
    table, topic, group = unique("events"), unique(name), unique("sink")
    init_schema(cluster, table)
    asyncio.run(kafka.create_topics([topic], partitions=PARTITIONS))
    return table, topic, group


def send_wave(kafka: KafkaBroker, topic: str, wave: range) -> None:
    asyncio.run(produce(kafka.bootstrap_servers, topic, [captured_value(i) for i in wave], PARTITIONS))


def wait_showing_log(log_path: Path, predicate: Callable[[], object], timeout: float, what: str) -> None:
    """`wait_for`, with the sink's log when it fails."""
    try:
        wait_for(predicate, timeout, what)
    except AssertionError as error:
        raise AssertionError(f"{error}; sink log:\n{log_path.read_text(errors='replace')[-4000:]}") from None


@contextlib.contextmanager
def running_sink(command: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`command` (a sink) logging to `log_path`; stopped with SIGTERM after the block (it must exit 0),
    killed if the block failed."""
    with log_path.open("ab") as log:
        sink = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=gateway_env(), cwd=REPO_ROOT)
    try:
        yield sink
    except BaseException:
        sink.kill()
        sink.wait(30)
        raise
    sink.send_signal(signal.SIGTERM)
    assert sink.wait(30) == 0


def test_init_schema_creates_replicated_and_distributed_tables(cluster: ClickHouseCluster) -> None:
    table = unique("events")
    init_schema(cluster, table)
    for url in cluster.http_urls:
        engines = dict(line.split("\t") for line in clickhouse_query(
            url, f"SELECT name, engine FROM system.tables WHERE database = 'default' AND name LIKE '{table}%'"
        ).splitlines())  # fmt: skip
        assert engines == {table: "ReplicatedReplacingMergeTree", f"{table}_distributed": "Distributed"}
    init_schema(cluster, table)  # idempotent


def test_bad_cluster_configuration_is_one_line(cluster: ClickHouseCluster) -> None:
    urls = ",".join(cluster.http_urls)
    table = unique("events")

    def refused(*argv: str, code: int, says: str) -> None:
        done = gateway("sink", "--init-schema", "--table", table, *argv)
        assert done.returncode == code, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("gateway: error: ")]
        assert len(errors) == 1 and says in errors[0], done.stderr

    refused("--cluster", "no_such_cluster", "--clickhouse-url", urls, code=2,
            says="--cluster (no_such_cluster): no such cluster in the remote_servers of")
    refused("--clickhouse-url", urls, code=2, says="give --cluster NAME too")
    down = f"http://127.0.0.1:{free_port()}"
    refused("--cluster", cluster.cluster, "--clickhouse-url", f"{urls},{down}", code=1,
            says=f"--clickhouse-url ({down}): unreachable")
    refused("--cluster", cluster.cluster, "--clickhouse-url", down, code=1, says="no replica reachable")
    # A table that exists but is not replicated: refused, never written on one node.
    clickhouse_query(cluster.http_urls[0], f"CREATE TABLE default.{table} (uuid UUID) ENGINE = MergeTree ORDER BY uuid")
    refused("--cluster", cluster.cluster, "--clickhouse-url", urls, code=2,
            says="is MergeTree, not a Replicated table")


def test_retried_identical_block_adds_no_rows_on_either_replica(cluster: ClickHouseCluster) -> None:
    table = unique("events")
    init_schema(cluster, table)
    encoder = RowEncoder(TeamResolver({}), subsecond=False)
    messages = [record(captured_value(i), offset=i) for i in range(500)]
    body = b"".join(encoder.encode_binary(m) for m in messages)
    # The sink's rows are a function of the messages alone: a retry sends the same bytes.
    assert body == b"".join(encoder.encode_binary(m) for m in messages)
    async def insert_on_each_replica() -> None:
        for url in cluster.http_urls:
            writer = await ReplicaWriter.connect([url])
            try:
                await writer.insert(table_name("default", table), body, None, ROWBINARY_COLUMNS)
                await writer.insert(table_name("default", table), body, None, ROWBINARY_COLUMNS)
            finally:
                await writer.close()

    asyncio.run(insert_on_each_replica())
    for url in cluster.http_urls:
        caught_up(url, table)
        assert counts(url, table) == (500, 500)


def test_replica_killed_mid_run_sink_fails_over_nothing_lost_or_doubled(
    cluster: ClickHouseCluster, kafka: KafkaBroker, tmp_path: Path
) -> None:
    table, topic, group = table_and_topic(cluster, kafka, "cluster")
    first, (first_url, second_url) = cluster.nodes[0], cluster.http_urls
    log_path = tmp_path / "sink.log"
    command = [
        sys.executable, "-m", "gateway", "sink", "--cluster", cluster.cluster,
        "--clickhouse-url", cluster.http_urls[0], "--clickhouse-url", cluster.http_urls[1],
        "--table", table, "--kafka-bootstrap-servers", kafka.bootstrap_servers, "--topics", topic,
        "--group-id", group, "--dlq-dir", str(tmp_path / "dlq"), "--batch-rows", "400",
        "--batch-age-ms", "100", "--session-timeout-ms", "6000", "--log-level", "warning",
    ]  # fmt: skip
    waves = [range(0, 6000), range(6000, 12000), range(12000, 15000), range(15000, 18000)]

    send, until = partial(send_wave, kafka, topic), partial(wait_showing_log, log_path)

    def stored(url: str) -> int:
        return counts(url, table)[0]

    with running_sink(command, log_path) as sink:
        # Replication is asynchronous: a part the first replica stored just before its kill reaches the second
        # only when the first is back. Made certain here (the second fetches nothing until then), not left to
        # the timing of the kill.
        clickhouse_query(second_url, f"SYSTEM STOP FETCHES default.{table}")
        send(waves[0])
        until(lambda: stored(first_url) > 0, 60, "first rows stored")
        first.kill()  # mid-run: the sink is inserting wave 0 into the first replica
        send(waves[1])
        # Failed over: wave 1 is on the second replica, and every message is committed, so stored on one.
        until(lambda: rows_of(second_url, table, waves[1]) >= len(waves[1])
              and group_lag(kafka.bootstrap_servers, [topic], group, partitions=PARTITIONS) == 0, 90,
              "wave 1 stored on the second replica and every message committed")  # fmt: skip

        first.start()
        clickhouse_query(second_url, f"SYSTEM START FETCHES default.{table}")
        for url in cluster.http_urls:  # each fetches from the other the parts it lacks
            caught_up(url, table)
            assert counts(url, table) == (12000, 12000), url

        # Both down: the sink keeps retrying and commits nothing; it resumes when they return.
        for node in cluster.nodes:
            node.kill()
        send(waves[2])
        time.sleep(3)
        assert sink.poll() is None
        assert group_lag(kafka.bootstrap_servers, [topic], group, partitions=PARTITIONS) >= len(waves[2])
        cluster.start()
        send(waves[3])
        until(lambda: stored(first_url) >= 18000 and stored(second_url) >= 18000, 120,
              "every wave stored on both replicas")  # fmt: skip
        until(lambda: group_lag(kafka.bootstrap_servers, [topic], group, partitions=PARTITIONS) == 0, 30, "lag drained")
    output = log_path.read_text(errors="replace")
    assert "failing over to" in output, output[-3000:]
    for url in cluster.http_urls:
        caught_up(url, table)
        assert counts(url, table) == (18000, 18000), url
    distributed = f"SELECT count(), uniqExact(uuid) FROM default.{table}_distributed"
    assert clickhouse_query(second_url, distributed).split() == ["18000", "18000"]


def test_gdpr_export_and_delete_on_every_replica(cluster: ClickHouseCluster, tmp_path: Path) -> None:
    table = unique("events")
    init_schema(cluster, table)
    encoder = RowEncoder(TeamResolver({}), subsecond=False)
    body = b"".join(encoder.encode(record(captured_value(i), offset=i)) for i in range(40))  # user-0 … user-39
    clickhouse_query(cluster.http_urls[0], f"INSERT INTO default.{table} FORMAT JSONEachRow", body)
    caught_up(cluster.http_urls[1], table)
    urls = ",".join(cluster.http_urls)
    common = ["--clickhouse-url", urls, "--table", table, "--audit-log", str(tmp_path / "audit.jsonl")]

    exported = gateway("gdpr", "export", "--distinct-id", "user-3", "--distinct-id", "user-7",
                       "--out", "-", *common)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert sorted(orjson.loads(line)["distinct_id"] for line in exported.stdout.splitlines()) == ["user-3", "user-7"]

    # One replica down: the deletion runs (ZooKeeper queues it for the other) but is not verified there.
    cluster.nodes[1].kill()
    partial = gateway("gdpr", "delete", "--distinct-id", "user-3", *common)
    assert partial.returncode == 1, partial.stderr
    assert f"replica {cluster.http_urls[1]} unreachable" in partial.stderr
    cluster.start()
    caught_up(cluster.http_urls[1], table)

    deleted = gateway("gdpr", "delete", "--distinct-id", "user-3", "--distinct-id", "user-7", *common)
    assert deleted.returncode == 0, deleted.stderr
    assert '"remaining":0' in deleted.stderr
    for url in cluster.http_urls:
        where = "distinct_id IN ('user-3', 'user-7')"
        assert clickhouse_query(url, f"SELECT count() FROM default.{table} WHERE {where}").strip() == "0"
        assert counts(url, table) == (38, 38)
    assert os.path.getsize(tmp_path / "audit.jsonl") > 0


def test_quorum_inserts_on_18_16(cluster: ClickHouseCluster, monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture) -> None:
    """What ClickHouse 18.16 answers a quorum-2 insert: concurrent ones are refused (286), one that cannot
    reach its quorum in time has an unknown outcome (319) though it is stored on one replica, with a replica
    down every insert is refused (285) without the writer failing over; the retried block is stored once."""
    table = unique("events")
    init_schema(cluster, table)
    a, b = cluster.http_urls
    name = table_name("default", table)
    waves = [range(i * 200, (i + 1) * 200) for i in range(6)]
    monkeypatch.setattr(replicas, "QUORUM_TIMEOUT_MS", 3000)

    async def insert(writer: ReplicaWriter, wave: range) -> WriteError | None:
        try:
            await writer.insert(name, rowbinary(wave), None, ROWBINARY_COLUMNS)
        except WriteError as error:
            assert error.kind is ErrorKind.TRANSIENT and error.quorum, error
            return error
        return None

    async def scenario() -> None:
        writer = await ReplicaWriter.connect([a, b], insert_quorum=2)
        reversed_writer = await ReplicaWriter.connect([b, a], insert_quorum=2)
        try:
            assert writer.max_in_flight == 1  # 18.16: one quorum insert per table at a time
            assert await insert(writer, waves[0]) is None
            assert [rows_of(url, table, waves[0]) for url in (a, b)] == [200, 200]  # acknowledged: on both

            failed = await asyncio.gather(*(insert(writer, wave) for wave in waves[1:5]))
            refused = [wave for wave, error in zip(waves[1:5], failed, strict=True) if error is not None]
            assert refused and all(error is None or error.code == 286 for error in failed), failed
            for wave in refused:  # refused before anything was written: a retry stores them
                assert rows_of(a, table, wave) == 0 and await insert(writer, wave) is None

            cluster.nodes[1].kill()
            unknown = await insert(writer, waves[5])  # b's session is still live: the insert waits for it
            assert unknown is not None and unknown.code == 319, unknown
            assert rows_of(a, table, waves[5]) == 200  # stored on a, not acknowledged
            wait_for(lambda: active_replicas(a, table) == 1, 30, "b's ZooKeeper session expired")
            with caplog.at_level(logging.WARNING, logger=replicas.__name__):
                for _ in range(3):
                    error = await insert(reversed_writer, waves[5])
                    assert error is not None and error.code == 285, error
            assert reversed_writer.current_url == a  # failed over from the dead b once, then stayed on a
            assert sum("failing over" in r.message for r in caplog.records) == 1, caplog.text

            cluster.nodes[1].start()
            deadline = time.monotonic() + 60
            while (error := await insert(writer, waves[5])) is not None:  # 286 until b fetched the part
                assert time.monotonic() < deadline, error
                await asyncio.sleep(0.5)
        finally:
            await writer.close()
            await reversed_writer.close()

    asyncio.run(scenario())
    for url in cluster.http_urls:
        caught_up(url, table)
        assert counts(url, table) == (1200, 1200), url


def test_insert_quorum_replica_killed_mid_run_nothing_stored_or_committed_until_it_returns(
    cluster: ClickHouseCluster, kafka: KafkaBroker, tmp_path: Path
) -> None:
    table, topic, group = table_and_topic(cluster, kafka, "quorum")
    (first_url, second_url), first = cluster.http_urls, cluster.nodes[0]
    log_path = tmp_path / "sink.log"
    command = [
        sys.executable, "-m", "gateway", "sink", "--cluster", cluster.cluster, "--insert-quorum", "2",
        "--clickhouse-url", ",".join(cluster.http_urls), "--table", table,
        "--kafka-bootstrap-servers", kafka.bootstrap_servers, "--topics", topic, "--group-id", group,
        "--dlq-dir", str(tmp_path / "dlq"), "--batch-rows", "200", "--fetch-max-records", "200",
        "--batch-age-ms", "100", "--insert-concurrency", "2", "--session-timeout-ms", "6000", "--log-level", "warning",
    ]  # fmt: skip
    waves = [range(0, 12000), range(12000, 15000)]  # wave 0: 60 inserts, one at a time

    send, until = partial(send_wave, kafka, topic), partial(wait_showing_log, log_path)

    def lag() -> int:
        return group_lag(kafka.bootstrap_servers, [topic], group, partitions=PARTITIONS)

    with running_sink(command, log_path) as sink:
        send(waves[0])
        until(lambda: counts(first_url, table)[0] > 0, 60, "first rows stored")
        first.kill()  # mid-run: the sink is inserting wave 0 through the first replica
        until(lambda: active_replicas(second_url, table) == 1, 30, "the first replica's session expired")
        stored, behind = counts(second_url, table)[0], lag()
        assert behind > 0, "wave 0 was not being stored when the replica was killed"
        send(waves[1])
        time.sleep(5)
        # One replica is fewer than the quorum: nothing more is stored, nothing committed, the sink retries.
        assert sink.poll() is None
        assert counts(second_url, table)[0] == stored
        assert lag() == behind + len(waves[1])

        first.start()
        until(lambda: lag() == 0, 120, "every message committed once the replica returned")
    output = log_path.read_text(errors="replace")
    assert output.count("failing over to") <= 1, output[-3000:]  # from the dead replica once, then no flapping
    for url in cluster.http_urls:  # acknowledged only once both held it: no catching up needed
        assert counts(url, table) == (15000, 15000), url
