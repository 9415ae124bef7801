"""Sink throughput: Kafka → sink worker → ClickHouse 18.16 (HTTP) and → chdb, against raw INSERT baselines.

    python -m bench.sink_bench [--rows N] [--kafka-bootstrap-servers H:P] [--clickhouse-url URL]
                               [--chdb-path DIR] [--sweep]

Without addresses it uses the services started by `python -m tests.services start kafka clickhouse`.
Baseline: the sink's pre-built RowBinary rows inserted directly in batches of the flush size (what a
perfect consumer with zero decode cost would reach). `--sweep` also times batch sizes, in-flight
inserts and gzip over HTTP, which is how the defaults were chosen.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer

from gateway.clickhouse.schema import events_table_ddl, table_name
from gateway.clickhouse.writer import Writer, open_writer
from gateway.sinkworker.batch import FlushPolicy
from gateway.sinkworker.confluent import ConfluentSource
from gateway.sinkworker.rows import ROWBINARY_COLUMNS, RowEncoder, SourceMessage
from gateway.sinkworker.teams import TeamResolver
from gateway.sinkworker.worker import SinkWorker, WorkerConfig
from tests.services.base import load_state


@dataclass(frozen=True)
class Case:
    target: str
    batch_rows: int = 100_000
    in_flight: int = 2
    compression: str = "none"


def pageview_properties(index: int) -> dict[str, object]:
    """The properties of a posthog-js `$pageview` (without distinct_id)."""
    return {
        "$current_url": f"https://example.com/products/{index % 500}?ref=bench",
        "$browser": "Chrome",
        "$browser_version": 126,
        "$os": "Mac OS X",
        "$device_type": "Desktop",
        "$screen_height": 1117,
        "$screen_width": 1728,
        "$lib": "web",
        "$lib_version": "1.449.0",
        "$session_id": "0190c6b2-7d1e-7a4c-9f3e-4b1c2d3e4f50",
        "$window_id": "0190c6b2-7d1e-7a4c-9f3e-4b1c2d3e4f51",
        "$pathname": f"/products/{index % 500}",
        "$referrer": "https://www.google.com/",
        "$elements_chain": 'button.btn:nth-child="2"nth-of-type="1"text="Buy"',
        "plan": "pro",
    }


def event_value(index: int) -> bytes:
    """A posthog-js-like $pageview in the gateway's Kafka format (~900 bytes)."""
    event_uuid = str(uuid.uuid4())
    properties = pageview_properties(index)
    data = {
        "uuid": event_uuid,
        "event": "$pageview",
        "distinct_id": f"user-{index % 5000}",
        "properties": properties,
    }
    # bytes(memoryview(...)): a compact copy (orjson's result keeps ~8 KB of buffer; 1M messages took 12 GB)
    return bytes(
        memoryview(
            orjson.dumps(
                {
                    "uuid": event_uuid,
                    "distinct_id": f"user-{index % 5000}",
                    "ip": "203.0.113.7",
                    "data": orjson.dumps(data).decode(),
                    "now": "2026-11-29T09:15:02.328551+00:00",
                    "token": "phc_bench",
                    "event": "$pageview",
                    "timestamp": "2026-11-29T09:15:02.325Z",
                }
            )
        )
    )


async def produce(bootstrap: str, topic: str, values: Sequence[bytes], partitions: int = 4) -> None:
    """Fill `topic` fast with producer batches (round-robin over partitions)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1 << 20, linger_ms=10)
    await producer.start()
    try:
        sent = 0
        batch = producer.create_batch()
        for value in values:
            if batch.append(key=None, value=value, timestamp=None) is None:  # full: ship it
                batch.close()
                await (await producer.send_batch(batch, topic, partition=sent % partitions))
                sent += 1
                batch = producer.create_batch()
                batch.append(key=None, value=value, timestamp=None)
        batch.close()
        await (await producer.send_batch(batch, topic, partition=sent % partitions))
    finally:
        await producer.stop()


async def count(writer: Writer, table: str) -> int:
    return int((await writer.select(f"SELECT count() FROM {table}"))[0][0])


class TimedSource(ConfluentSource):
    """Records when the first message arrives, so group-join time is not counted."""

    first_fetch: float | None = None

    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[SourceMessage]:
        messages = await super().fetch(timeout_s, max_records)
        if messages and self.first_fetch is None:
            self.first_fetch = time.perf_counter()
        return messages


async def run_sink(case: Case, writer: Writer, bootstrap: str, topic: str, rows: int) -> float:
    """Rows/s of the full sink over a prefilled topic."""
    table = f"bench_{uuid.uuid4().hex[:8]}"
    await writer.command(events_table_ddl(writer.caps, "default", table))
    quoted = table_name("default", table)
    source = TimedSource.create(bootstrap, [topic], f"bench-{uuid.uuid4().hex[:8]}", 6000)
    config = WorkerConfig(
        quoted, FlushPolicy(case.batch_rows, 256 << 20, 1.0), min(case.in_flight, writer.max_in_flight)
    )
    encoder = RowEncoder(TeamResolver({}), subsecond=writer.caps.datetime64)
    worker = SinkWorker(source, writer, _NoDeadLetters(), encoder, config)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    while await count(writer, quoted) < rows:
        if task.done():
            await task  # raises what stopped the worker
            raise RuntimeError("sink stopped before storing every row")
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - (source.first_fetch or 0)
    stop.set()
    await task
    await writer.command(f"DROP TABLE {quoted}")
    return rows / elapsed


async def raw_insert(writer: Writer, body_rows: list[bytes], batch_rows: int) -> float:
    """Rows/s inserting the sink's pre-built RowBinary rows, one batch at a time."""
    table = f"raw_{uuid.uuid4().hex[:8]}"
    await writer.command(events_table_ddl(writer.caps, "default", table))
    quoted = table_name("default", table)
    bodies = [b"".join(body_rows[i : i + batch_rows]) for i in range(0, len(body_rows), batch_rows)]
    started = time.perf_counter()
    for body in bodies:
        await writer.insert(quoted, body, None, ROWBINARY_COLUMNS)
    elapsed = time.perf_counter() - started
    await writer.command(f"DROP TABLE {quoted}")
    return len(body_rows) / elapsed


class _NoDeadLetters:
    async def send(self, items: object) -> None:
        raise AssertionError("benchmark messages are all valid")

    async def close(self) -> None:
        return None


async def main(args: argparse.Namespace) -> None:
    state = load_state()
    bootstrap = args.kafka_bootstrap_servers or state["kafka"]["addresses"]["bootstrap_servers"]
    http_url = args.clickhouse_url or state["clickhouse"]["addresses"]["http_url"]
    chdb_dsn = "chdb://" + (args.chdb_path or tempfile.mkdtemp(prefix="sink-bench-chdb-"))
    values = [event_value(i) for i in range(args.rows)]
    topic = f"sink-bench-{uuid.uuid4().hex[:8]}"
    await produce(bootstrap, topic, values)
    print(f"{args.rows} messages, {sum(map(len, values)) / args.rows:.0f} B each, topic {topic}")

    from aiokafka.structs import ConsumerRecord

    started = time.perf_counter()
    for target, subsecond in (("clickhouse-18.16", False), ("chdb", True)):
        encoder = RowEncoder(TeamResolver({}), subsecond=subsecond)
        records = [ConsumerRecord(topic, 0, i, 0, 0, None, v, None, 0, len(v), []) for i, v in enumerate(values)]
        started = time.perf_counter()
        encoded = [encoder.encode_binary(r) for r in records]
        print(f"encode only ({target} row format): {len(encoded) / (time.perf_counter() - started):,.0f} rows/s")
        dsn = http_url if target.startswith("clickhouse") else chdb_dsn
        cases = [Case(target)]
        if args.sweep:
            cases += [Case(target, rows_, flight) for rows_ in (20_000, 50_000, 200_000) for flight in (1, 4)]
            if dsn == http_url:
                cases.append(Case(target, compression="gzip"))
        for case in cases:
            writer = await open_writer(dsn, case.in_flight, case.compression)
            try:
                raw = await raw_insert(writer, encoded, case.batch_rows)
                sink = await run_sink(case, writer, bootstrap, topic, args.rows)
            finally:
                await writer.close()
            print(
                f"{target:17} batch {case.batch_rows:>7} in-flight {case.in_flight} {case.compression:4}: "
                f"raw INSERT {raw:>9,.0f} rows/s | sink {sink:>9,.0f} rows/s ({sink / raw:.0%} of raw)"
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--kafka-bootstrap-servers", default="")
    parser.add_argument("--clickhouse-url", default="")
    parser.add_argument("--chdb-path", default="")
    parser.add_argument("--sweep", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(parse_args()))
