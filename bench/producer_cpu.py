"""CPU per record of the gateway's batching Kafka producer (gateway/sinks/kafka_producer.py), without HTTP.

    python -m bench.producer_cpu --kafka-bootstrap-servers H:P [--records 40000] [--concurrency 256]
        [--compression zstd] [--rounds 3]

`--concurrency` tasks each produce one record per call and wait for its ack, like that many
concurrent single-event requests; the records are shaped like capture's (key `token:distinct_id`,
6 headers, 1.2 KB value) and the client is configured as `gateway serve` configures it. Prints, per
round, the process CPU (all threads) per record and records/s. To compare builds, run it under each
with PYTHONPATH pointing at the build.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator

import uvloop
from aiokafka import AIOKafkaProducer

from gateway.core.record import Record
from gateway.settings.serve import ServeSettings
from gateway.sinks.factory import producer_config
from gateway.sinks.kafka_producer import ReconnectingProducer


def records(count: int, topic: str) -> list[Record]:
    value = b'{"uuid":"0190","data":"' + b"x" * 1150 + b'"}'
    return [
        Record(
            topic,
            f"phc_bench:user-{i % 1000}".encode(),
            (("token", b"phc_bench"), ("distinct_id", f"user-{i % 1000}".encode()), ("event", b"$pageview"),
             ("uuid", b"0190"), ("now", b"2026-12-07T12:00:00.000Z"), ("force_disable_person_processing", b"false")),
            value,
        )
        for i in range(count)
    ]


async def _drain(producer: ReconnectingProducer, queue: Iterator[Record]) -> None:
    for record in queue:
        await producer.produce([record])


async def run(args: argparse.Namespace) -> None:
    settings = ServeSettings(kafka_bootstrap_servers=args.kafka_bootstrap_servers, kafka_compression=args.compression)
    config = producer_config(settings)  # what `gateway serve` uses: acks=all, idempotence, 1 MiB batches
    producer = ReconnectingProducer(lambda: AIOKafkaProducer(**config))
    await producer.ping()
    todo = records(args.records, args.topic)
    for round_ in range(args.rounds + 1):  # round 0 warms up (metadata, topic creation)
        queue = iter(todo)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(_drain(producer, queue) for _ in range(args.concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if round_:
            print(f"round {round_}: {cpu / len(todo) * 1e6:.1f} µs CPU per record, {len(todo) / wall:,.0f} records/s, "
                  f"CPU {cpu / wall:.0%}")
    await producer.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kafka-bootstrap-servers", required=True)
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--compression", default="zstd", help="as --kafka-compression (none, gzip, lz4, zstd)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--topic", default="bench_producer_cpu")
    args = parser.parse_args(argv)
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
