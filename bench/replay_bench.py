"""Spool replay into Kafka: records/s the gateway's replayer drains, against producing the same records
straight from memory with the same producer (the baseline), in one run.

Usage: python -m bench.replay_bench --kafka-bootstrap-servers HOST:PORT [--records 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import uvloop
from aiokafka import AIOKafkaProducer

from gateway.core.record import Record
from gateway.settings import ServeSettings
from gateway.sinks.factory import producer_config
from gateway.sinks.failover import Mode
from gateway.sinks.kafka import KafkaSink
from gateway.sinks.kafka_producer import ReconnectingProducer
from gateway.sinks.spool import SpoolSink

BATCH = 1000


def make_records(topic: str, count: int) -> list[Record]:
    """600-byte events over 1000 distinct keys, the shape measured-here.md uses."""
    body = b'{"uuid":"%s","event":"$pageview","properties":{"p":"' + b"x" * 520 + b'"}}'
    return [
        Record(topic, f"phc_bench:user-{n % 1000}".encode(), (("uuid", str(n).encode()),), body % str(n).encode())
        for n in range(count)
    ]


def producer(settings: ServeSettings) -> ReconnectingProducer:
    config = producer_config(settings)
    return ReconnectingProducer(lambda: AIOKafkaProducer(**config))


async def baseline(settings: ServeSettings, records: list[Record]) -> float:
    """Records/s producing from memory in replay-sized batches, the replayer's own producer path."""
    sender = producer(settings)
    await sender.ping()
    started = time.perf_counter()
    for start in range(0, len(records), BATCH):
        await sender.produce_bulk(records[start : start + BATCH])
    elapsed = time.perf_counter() - started
    await sender.stop()
    return len(records) / elapsed


async def replay(settings: ServeSettings, records: list[Record], directory: Path) -> float:
    """Records/s from a full spool to Kafka through KafkaSink's replayer (reading, producing, committing)."""
    filler = SpoolSink.at(directory, fsync="never", fsync_window_ms=0, max_bytes=8 << 30, keyring=None)
    await filler.start()
    for start in range(0, len(records), BATCH):
        await filler.deliver(records[start : start + BATCH])
    await filler.close()

    sink = KafkaSink(producer(settings), SpoolSink.at(directory, fsync="batch", fsync_window_ms=2,
                                                      max_bytes=8 << 30, keyring=None),
                     ack_timeout=10, max_record_bytes=1 << 20)
    started = time.perf_counter()
    await sink.start()
    while sink.mode is not Mode.DIRECT:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await sink.close()
    return len(records) / elapsed


async def main_async(args: argparse.Namespace) -> None:
    topic = f"replay-bench-{uuid.uuid4().hex[:8]}"
    settings = ServeSettings(kafka_bootstrap_servers=args.kafka_bootstrap_servers, topic_main=topic)
    records = make_records(topic, args.records)
    await baseline(settings, records[:BATCH])  # creates the topic and warms the connection
    base = await baseline(settings, records)
    with tempfile.TemporaryDirectory() as directory:
        replayed = await replay(settings, records, Path(directory))
    print(f"records: {args.records}, 600-byte values, compression {settings.kafka_compression}")
    print(f"{'produce from memory (baseline)':34s} {base:>10,.0f} records/s   1.00")
    print(f"{'spool replay (KafkaSink)':34s} {replayed:>10,.0f} records/s   {replayed / base:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka-bootstrap-servers", required=True)
    parser.add_argument("--records", type=int, default=200_000)
    uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
