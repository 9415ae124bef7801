"""`python -m bench suite sink`: Kafka → sink worker → ClickHouse, against two baselines in the same run.

One topic is pre-filled with PostHog-shaped capture messages (`sink_bench.event_value`, ~900 B), then
on the same ClickHouse server:
- plain INSERT: the sink's own RowBinary rows for those messages, pre-built, inserted in batches of
  the sink's flush size (a consumer with zero decode cost);
- sink: the sink worker (in this process) from the topic into a fresh events table;
- kafka-engine: ClickHouse's Kafka engine table + materialized view into the same events schema. Its
  view does less than the sink (no `$set` merge, no `$ip`, constant team), so it is a generous baseline.

Rows/s are measured from the first fetched message (sink) or with the engine's fixed start-up cost
subtracted (group join and first poll, measured on a one-message topic); "cold" figures include start-up.
CPU: the sink's process time; ClickHouse's from /proc when its pid is known (started here or in the
tests' service state file). Without addresses the suite starts its own Kafka and ClickHouse 18.16
(tests/services launchers) in a temp dir and stops them at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from bench.sink_bench import Case, event_value, produce, raw_insert, run_sink
from gateway.clickhouse.schema import events_table_ddl, table_name
from gateway.clickhouse.writer import Writer, open_writer
from gateway.sinkworker.rows import RowEncoder
from gateway.sinkworker.teams import TeamResolver

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PARTITIONS = 4
ENGINE_TIMEOUT_S = 600.0


@dataclass
class SinkSuiteOptions:
    """What `python -m bench suite sink` measures."""

    rows: int = 200_000
    kafka_bootstrap_servers: str | None = None
    clickhouse_url: str | None = None
    batch_rows: int = 100_000
    in_flight: int = 2
    batch_bytes: int = 64 << 20  # the sink's default --batch-bytes
    processes: tuple[int, ...] = (1, 2)  # `gateway sink --processes N` runs
    kafka_engine: bool = True


@dataclass
class SinkFigure:
    """One way of getting the topic's rows into a table."""

    name: str
    rows_per_s: float = 0.0
    cold_rows_per_s: float = 0.0
    client_cpu_s: float = 0.0  # this process (the sink, or the INSERT client)
    server_cpu_s: float | None = None  # ClickHouse, when its pid is known
    error: str | None = None
    peak_rss_mb: float | None = None  # a separate process's peak resident memory
    ratios: dict[str, float] = field(default_factory=dict)

    def rows_per_cpu_s(self, rows: int) -> float:
        """Rows per CPU-second of sink + ClickHouse (what one core would do if nothing else waited)."""
        cpu = self.client_cpu_s + (self.server_cpu_s or 0.0)
        return rows / cpu if cpu else 0.0


def _process_cpu_s(pid: int | None) -> float | None:
    """User+system CPU seconds of `pid` (and its reaped children), or None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


@contextlib.contextmanager
def _services(options: SinkSuiteOptions, log: TextIO) -> Iterator[tuple[str, str, int | None]]:
    """(bootstrap servers, ClickHouse URL, ClickHouse pid or None): the given ones, or started here."""
    from tests.services.base import load_state
    from tests.services.clickhouse_server import ClickHouseServer
    from tests.services.kafka_broker import KafkaBroker

    started: list[KafkaBroker | ClickHouseServer] = []
    root = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    try:
        bootstrap = options.kafka_bootstrap_servers
        if not bootstrap:
            broker = KafkaBroker(root=root / "kafka")
            log.write("suite sink: starting Kafka\n")
            broker.start()
            started.append(broker)
            bootstrap = broker.bootstrap_servers
        url, pid = options.clickhouse_url, None
        if not url:
            server = ClickHouseServer(root=root / "clickhouse")
            log.write("suite sink: starting ClickHouse\n")
            server.start()
            started.append(server)
            url, pid = server.http_url, server.pid
        else:
            record = load_state().get("clickhouse", {})
            if record.get("addresses", {}).get("http_url") == url.rstrip("/"):
                pid = record.get("pid")
        yield bootstrap, url.rstrip("/"), pid
    finally:
        for service in reversed(started):
            service.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _reset_group(bootstrap: str, topic: str, group: str) -> None:
    """Commit offset 0 for `group` on every partition, so the Kafka engine reads the topic from the start
    whatever the server's auto_offset_reset (librdkafka's default is `latest`)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in tps})
    finally:
        await consumer.stop()


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


ENGINE_COLUMNS = (
    "uuid String, event String, distinct_id String, ip String, data String, now String, token String, timestamp String"
)
ENGINE_SELECT = """
SELECT toUUID(uuid) AS uuid, event, visitParamExtractRaw(data, 'properties') AS properties,
       parseDateTimeBestEffort(timestamp) AS timestamp, toInt64(1) AS team_id, distinct_id,
       visitParamExtractString(visitParamExtractRaw(data, 'properties'), '$elements_chain') AS elements_chain,
       parseDateTimeBestEffort(now) AS created_at, token,
       CAST('full' AS Enum8('full' = 0, 'propertyless' = 1, 'force_upgrade' = 2)) AS person_mode,
       toUInt8(0) AS historical_migration, now() AS _timestamp, toUInt64(0) AS _offset,
       toUInt64(0) AS _partition, '{topic}' AS _topic
FROM {source}
"""


async def _kafka_engine_run(
    writer: Writer, bootstrap: str, topic: str, rows: int, pid: int | None
) -> tuple[float, float | None]:
    """Seconds from CREATE MATERIALIZED VIEW until `rows` rows are stored, and ClickHouse CPU seconds."""
    suffix = uuid.uuid4().hex[:8]
    target, source, view = (table_name("default", f"{kind}_{suffix}") for kind in ("ke", "kq", "mv"))
    group = f"bench-ke-{suffix}"
    await _reset_group(bootstrap, topic, group)
    await writer.command(events_table_ddl(writer.caps, "default", f"ke_{suffix}"))
    await writer.command(
        f"CREATE TABLE {source} ({ENGINE_COLUMNS}) ENGINE = Kafka('{bootstrap}', '{topic}', '{group}', 'JSONEachRow')"
    )
    cpu_before = _process_cpu_s(pid)
    started = time.perf_counter()
    await writer.command(f"CREATE MATERIALIZED VIEW {view} TO {target} AS {ENGINE_SELECT}".format(
        topic=topic, source=source))  # fmt: skip
    try:
        while int((await writer.select(f"SELECT count() FROM {target}"))[0][0]) < rows:
            if time.perf_counter() - started > ENGINE_TIMEOUT_S:
                raise TimeoutError(f"Kafka engine stored fewer than {rows} rows in {ENGINE_TIMEOUT_S:g} s")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu_after = _process_cpu_s(pid)
    finally:
        for name in (view, source, target):
            await writer.command(f"DROP TABLE IF EXISTS {name}")
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return elapsed, cpu


async def _measure(
    options: SinkSuiteOptions, bootstrap: str, url: str, pid: int | None, log: TextIO
) -> tuple[list[SinkFigure], list[str]]:
    rows = options.rows
    notes: list[str] = []
    log.write(f"suite sink: producing {rows:,} messages\n")
    values = [event_value(i) for i in range(rows)]
    topic = f"sink-suite-{uuid.uuid4().hex[:8]}"
    await _create_topic(bootstrap, topic)
    await produce(bootstrap, topic, values, PARTITIONS)
    notes.append(f"{rows:,} messages of {sum(map(len, values)) / rows:.0f} B, {PARTITIONS} partitions, topic {topic}")

    writer = await open_writer(url, options.in_flight, "none")
    notes.append(f"ClickHouse {'.'.join(map(str, writer.caps.version))} at {url}")
    encoder = RowEncoder(TeamResolver({}), subsecond=writer.caps.datetime64)
    encode_started = time.process_time()
    encoded = [
        encoder.encode_binary(ConsumerRecord(topic, 0, i, 0, 0, None, v, None, 0, len(v), []))
        for i, v in enumerate(values)
    ]
    encode_cpu = time.process_time() - encode_started
    notes.append(f"row encoding alone: {rows / encode_cpu:,.0f} rows per CPU-second (RowEncoder.encode_binary)")
    del values
    figures: list[SinkFigure] = []
    try:
        log.write("suite sink: plain INSERT\n")
        cpu, server = time.process_time(), _process_cpu_s(pid)
        raw = await raw_insert(writer, encoded, options.batch_rows)
        figures.append(SinkFigure("plain-insert", raw, raw, time.process_time() - cpu, _delta(pid, server)))
        del encoded

        log.write("suite sink: sink worker\n")
        cpu, server = time.process_time(), _process_cpu_s(pid)
        cold_started = time.perf_counter()
        warm = await run_sink(Case("clickhouse", options.batch_rows, options.in_flight), writer, bootstrap, topic, rows)
        cold = rows / (time.perf_counter() - cold_started)
        figures.append(SinkFigure("sink", warm, cold, time.process_time() - cpu, _delta(pid, server)))

        for processes in options.processes:
            name = "sink-process" if processes == 1 else f"sink-process-{processes}"
            log.write(f"suite sink: gateway sink --processes {processes}\n")
            try:
                figures.append(await _sink_process_run(writer, bootstrap, url, topic, options, pid, processes, name))
            except Exception as exc:  # reported as the figure's error
                figures.append(SinkFigure(name, error=f"{type(exc).__name__}: {exc}"[:500]))

        if options.kafka_engine:
            log.write("suite sink: Kafka engine (start-up probe, then the topic)\n")
            try:
                probe = f"sink-suite-probe-{uuid.uuid4().hex[:8]}"
                await _create_topic(bootstrap, probe)
                await produce(bootstrap, probe, [event_value(0)], 1)
                startup, _ = await _kafka_engine_run(writer, bootstrap, probe, 1, pid)
                elapsed, server_cpu = await _kafka_engine_run(writer, bootstrap, topic, rows, pid)
                figures.append(SinkFigure(
                    "kafka-engine", rows / max(elapsed - startup, 1e-3), rows / elapsed, 0.0, server_cpu
                ))  # fmt: skip
                notes.append(f"Kafka engine start-up (group join + first poll + flush), subtracted: {startup:.2f} s")
            except Exception as exc:  # reported as the figure's error, with the server's words
                figures.append(SinkFigure("kafka-engine", error=f"{type(exc).__name__}: {exc}"[:500]))
    finally:
        await writer.close()
    baselines = {f.name: f.rows_per_s for f in figures if f.name in ("plain-insert", "kafka-engine") and not f.error}
    for figure in figures:
        figure.ratios = {name: figure.rows_per_s / value for name, value in baselines.items() if value}
    return figures, notes


def _family(pid: int) -> list[int]:
    """`pid` and its live children (the sink processes under a `--processes N` parent)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def _rss_mb(pid: int) -> float:
    """Resident memory of `pid` in MiB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


async def _sink_process_run(
    writer: Writer,
    bootstrap: str,
    url: str,
    topic: str,
    options: SinkSuiteOptions,
    pid: int | None,
    processes: int = 1,
    name: str = "sink-process",
) -> SinkFigure:
    """`gateway sink [--processes N]` as its own process (the command users run): rows/s from its start (cold)
    and from its first stored insert to the last row (warm: start-up and the first batch's fill excluded, as
    nothing outside the process sees its first fetch), its CPU, and its peak RSS sampled every 50 ms, which
    `--batch-bytes` bounds (all processes summed)."""
    suffix = uuid.uuid4().hex[:8]
    table = f"proc_{suffix}"
    await writer.command(events_table_ddl(writer.caps, "default", table))
    quoted = table_name("default", table)
    command = [
        sys.executable, "-m", "gateway", "sink", "--kafka-bootstrap-servers", bootstrap, "--topics", topic,
        "--group-id", f"bench-proc-{suffix}", "--session-timeout-ms", "6000", "--clickhouse-url", url,
        "--table", table, "--batch-rows", str(options.batch_rows), "--batch-bytes", str(options.batch_bytes),
        "--insert-concurrency", str(options.in_flight), "--log-level", "warning", "--processes", str(processes),
    ]  # fmt: skip
    server_before = _process_cpu_s(pid)
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.DEVNULL)
    peak = 0.0
    cpu: dict[int, float] = {}
    first_stored: tuple[float, int] | None = None  # when the first insert became visible, and its rows
    try:
        while True:
            family = _family(process.pid)
            peak = max(peak, sum(map(_rss_mb, family)))
            cpu.update({member: _process_cpu_s(member) or cpu.get(member, 0.0) for member in family})
            stored = int((await writer.select(f"SELECT count() FROM {quoted}"))[0][0])
            if stored and first_stored is None:
                first_stored = (time.perf_counter(), stored)
            if stored >= options.rows:
                break
            if process.returncode is not None or time.perf_counter() - started > ENGINE_TIMEOUT_S:
                raise RuntimeError(f"gateway sink stopped or stalled (exit code {process.returncode})")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        if process.returncode is None:
            process.terminate()
        code = await process.wait()
        await writer.command(f"DROP TABLE IF EXISTS {quoted}")
    if code != 0:
        raise RuntimeError(f"gateway sink exited with {code} on SIGTERM")
    cold = options.rows / elapsed
    assert first_stored is not None
    since, stored = first_stored
    warm = (options.rows - stored) / (started + elapsed - since) if stored < options.rows else cold
    return SinkFigure(name, warm, cold, sum(cpu.values()), _delta(pid, server_before), peak_rss_mb=peak)


def _delta(pid: int | None, before: float | None) -> float | None:
    after = _process_cpu_s(pid)
    return after - before if after is not None and before is not None else None


def run_sink_suite(options: SinkSuiteOptions, log: TextIO = sys.stderr) -> tuple[list[SinkFigure], list[str]]:
    """Start or reuse the services, measure the three paths, return the figures (with ratios) and notes."""
    import uvloop

    with _services(options, log) as (bootstrap, url, pid):
        return uvloop.run(_measure(options, bootstrap, url, pid, log))


def sink_suite_table(figures: list[SinkFigure], notes: list[str], options: SinkSuiteOptions) -> str:
    header = (
        f"{'path':<14} {'rows/s':>10} {'cold rows/s':>11} {'x insert':>8} {'x kafka-eng':>11} "
        f"{'client cpu s':>12} {'server cpu s':>12} {'rows/cpu-s':>10} {'rows/client-cpu-s':>17}"
    )
    lines = [header, "-" * len(header)]
    for f in figures:
        if f.error:
            lines.append(f"{f.name:<14} error: {f.error}")
            continue
        server = f"{f.server_cpu_s:.1f}" if f.server_cpu_s is not None else "-"
        lines.append(
            f"{f.name:<14} {f.rows_per_s:>10,.0f} {f.cold_rows_per_s:>11,.0f} "
            f"{f.ratios.get('plain-insert', 0):>8.2f} {f.ratios.get('kafka-engine', 0):>11.2f} "
            f"{f.client_cpu_s:>12.1f} {server:>12} {f.rows_per_cpu_s(options.rows):>10,.0f} "
            f"{options.rows / f.client_cpu_s if f.client_cpu_s else 0:>17,.0f}"
        )
    lines += [
        "",
        *(
            f"{f.name}: peak RSS {f.peak_rss_mb:,.0f} MiB with --batch-bytes {options.batch_bytes >> 20} MiB; "
            "rows/s from its first stored insert, cold rows/s from its start"
            for f in figures
            if f.peak_rss_mb is not None
        ),
        f"batch {options.batch_rows:,} rows, {options.in_flight} inserts in flight, uncompressed HTTP.",
        "rows/s: from the first fetched message (sink), from the first stored insert (sink-process runs) or minus",
        "the engine's start-up; cold: including start-up.",
        "rows/cpu-s: rows per CPU-second of this process plus ClickHouse (when its pid is known).",
        "rows/client-cpu-s: rows per CPU-second of the sink alone (all its processes and threads, start-up included"
        " for sink-process runs).",
        *notes,
    ]
    return "\n".join(lines)
