"""The gateway's own Kafka batches against a real broker: concurrent requests share batches, and every
record arrives once, unchanged, in its murmur2 partition and in order per key."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from pathlib import Path
from unittest import mock

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from gateway.core.record import Record
from gateway.sinks.factory import producer_config
from gateway.sinks.kafka_producer import ReconnectingProducer
from tests.services.kafka_broker import KafkaBroker
from tests.support.inprocess import settings_for
from tests.support.kafka import consume_all

REQUESTS = 400
KEYS = 7


def request_records(topic: str, request: int) -> list[Record]:
    """One request: 1 to 3 records, keyed from a small pool; the value says (request, index)."""
    return [
        Record(topic, f"phc_t:user-{(request + i) % KEYS}".encode(),
               (("token", b"phc_t"), ("uuid", str(uuid.uuid4()).encode())), f"{request}:{i}".encode())
        for i in range(1 + request % 3)
    ]


def test_concurrent_requests_share_batches_and_keep_per_key_order(kafka: KafkaBroker, tmp_path: Path) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}-batching"
    asyncio.run(kafka.create_topics([topic]))
    settings = settings_for(tmp_path, kafka_bootstrap_servers=kafka.bootstrap_servers)
    sent = [request_records(topic, n) for n in range(REQUESTS)]

    async def produce_all() -> int:
        producer = ReconnectingProducer(lambda: AIOKafkaProducer(**producer_config(settings)), linger=0.005)
        try:
            await producer.produce(sent[0])
            with mock.patch.object(AIOKafkaProducer, "send_batch", autospec=True,
                                   side_effect=AIOKafkaProducer.send_batch) as send_batch:
                await asyncio.gather(*(producer.produce(records) for records in sent[1:]))
            return send_batch.call_count
        finally:
            await producer.stop()

    batches = asyncio.run(produce_all())
    total = sum(map(len, sent))
    assert batches <= 4 * 3, f"{batches} batches for {total} records of {REQUESTS} concurrent requests"

    consumed = consume_all(kafka.bootstrap_servers, [topic], at_least=total)
    assert sorted(record.value for _, record in consumed) == sorted(r.value for rs in sent for r in rs)
    expected = {r.value: r for rs in sent for r in rs}
    per_key: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
    for partition, record in consumed:
        assert record == expected[record.value]
        assert partition == (murmur2(record.key) & 0x7FFFFFFF) % kafka.partitions
        request, index = map(int, record.value.split(b":"))
        per_key[record.key].append((request, index))
    for key, order in per_key.items():
        assert order == sorted(order), f"records of {key!r} out of order"
