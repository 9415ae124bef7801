"""The gateway's own Kafka batches against a real broker: concurrent requests share batches, and every
record arrives once, unchanged, in its murmur2 partition and in order per key; a replay that failed
half-way and is retried still lands the first copy of every record in order."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
import warnings
from collections import defaultdict
from pathlib import Path
from unittest import mock

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, NotLeaderForPartitionError, RequestTimedOutError
from aiokafka.partitioner import murmur2
from aiokafka.protocol.produce import ProduceRequest

from gateway.core.record import Record
from gateway.sinks import kafka_producer
from gateway.sinks.factory import producer_config
from gateway.sinks.kafka_producer import AckTimeout, ReconnectingProducer
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


def test_a_replay_retried_after_a_failed_batch_lands_first_copies_in_order(kafka: KafkaBroker, tmp_path: Path) -> None:
    """aiokafka fails a batch whose partition had no leader for `request_timeout_ms`, yet sends the batches
    queued behind it, and a client retired after a failure still delivers what it holds: had the replay
    handed a partition's batches over at once, its retry would land the failed records after later ones."""
    topic = f"t{uuid.uuid4().hex[:10]}-replay-retry"
    asyncio.run(kafka.create_topics([topic], partitions=1))
    settings = settings_for(tmp_path, kafka_bootstrap_servers=kafka.bootstrap_servers, kafka_max_batch_bytes=4096)
    records = [Record(topic, b"phc_t:user", (), b"%04d:" % n + b"x" * 300) for n in range(60)]  # ~6 batches
    real_send_batch = AIOKafkaProducer.send_batch
    failed: list[object] = []

    async def send_batch(self: AIOKafkaProducer, batch: object, topic: str, *, partition: int) -> asyncio.Future:
        if failed:
            return await real_send_batch(self, batch, topic, partition=partition)
        failed.append(batch)  # the first batch expires: its partition had no leader in time
        expired = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.2, expired.set_exception, NotLeaderForPartitionError())
        return expired

    async def replay_twice() -> None:
        producer = ReconnectingProducer(lambda: AIOKafkaProducer(**producer_config(settings)))
        try:
            with mock.patch.object(AIOKafkaProducer, "send_batch", send_batch):
                with pytest.raises(NotLeaderForPartitionError):
                    await producer.produce_bulk(records)
                await producer.produce_bulk(records)  # the replayer reads the same records again
        finally:
            await producer.stop()

    asyncio.run(replay_twice())
    consumed = consume_all(kafka.bootstrap_servers, [topic], at_least=len(records))
    first_copies = list(dict.fromkeys(record.value for _, record in consumed))
    assert first_copies == [record.value for record in records]


def test_a_straggler_failure_does_not_retire_the_client_that_replaced_its_own(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    """A delivery that began on a client since retired (its ack timed out after another request's failure
    replaced the client) must not retire the fresh one: that would cost every request in flight a retry."""
    topic = f"t{uuid.uuid4().hex[:10]}-straggler"
    asyncio.run(kafka.create_topics([topic], partitions=1))
    settings = settings_for(tmp_path, kafka_bootstrap_servers=kafka.bootstrap_servers)
    clients: list[AIOKafkaProducer] = []

    def make_client() -> AIOKafkaProducer:
        clients.append(AIOKafkaProducer(**producer_config(settings)))
        return clients[-1]

    async def scenario() -> None:
        producer = ReconnectingProducer(make_client)
        try:
            await producer.produce(request_records(topic, 0))
            straggler = producer.generation  # a slow request starts on the first client
            producer.reset(producer.generation)  # another request's failure retires that client
            await producer.produce(request_records(topic, 1))
            producer.reset(straggler)  # the slow request times out late
            await producer.produce(request_records(topic, 2))
            assert len(clients) == 2
            producer.reset(producer.generation)  # a failure on the current client does retire it
            await producer.produce(request_records(topic, 3))
            assert len(clients) == 3
        finally:
            await producer.stop()

    asyncio.run(scenario())


def stalled_leader(client: AIOKafkaProducer, stalled: asyncio.Event) -> None:
    """Once `stalled` is set, `client`'s produce requests get no answer, as from a leader that died without
    closing its connections: each fails when its connection is closed, or after a long request timeout."""
    send, close = client.client.send, client.client.close
    unanswered: list[asyncio.Future] = []

    async def stalled_send(node_id: int, request: object, **kwargs: object) -> object:
        if not (stalled.is_set() and isinstance(request, ProduceRequest)):
            return await send(node_id, request, **kwargs)
        unanswered.append(asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(unanswered[-1], 60)
        except TimeoutError:
            raise RequestTimedOutError() from None

    async def closing() -> None:
        for future in unanswered:
            if not future.done():
                future.set_exception(KafkaConnectionError("connection closed"))
        await close()

    client.client.send, client.client.close = stalled_send, closing  # type: ignore[method-assign]


def test_shutdown_after_a_failover_leaves_no_client_open(
    kafka: KafkaBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client retired while its leader does not answer (an idempotent client retries forever) is closed at
    shutdown: no connection, transport or task of it is left for the event loop's end to complain about."""
    monkeypatch.setattr(kafka_producer, "STOP_GRACE_S", 0.5)
    topic = f"t{uuid.uuid4().hex[:10]}-retired"
    asyncio.run(kafka.create_topics([topic], partitions=1))
    settings = settings_for(tmp_path, kafka_bootstrap_servers=kafka.bootstrap_servers)
    clients: list[AIOKafkaProducer] = []
    left_running: list[asyncio.Task] = []

    async def scenario() -> None:
        stalled = asyncio.Event()

        def make_client() -> AIOKafkaProducer:
            clients.append(AIOKafkaProducer(**producer_config(settings)))
            if len(clients) == 1:
                stalled_leader(clients[0], stalled)
            return clients[-1]

        producer = ReconnectingProducer(make_client)
        await producer.produce(request_records(topic, 0))
        stalled.set()
        with pytest.raises(AckTimeout):
            await producer.produce(request_records(topic, 1), deadline=asyncio.get_running_loop().time() + 0.5)
        producer.reset(producer.generation)  # what KafkaSink does after a failed delivery: a fresh client
        await producer.produce(request_records(topic, 2))
        assert len(clients) == 2
        await producer.stop()
        await asyncio.sleep(0.1)  # let cancelled helpers finish
        left_running.extend(task for task in asyncio.all_tasks() if task is not asyncio.current_task())

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        asyncio.run(scenario())
        clients.clear()
        gc.collect()
    assert not left_running
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not [r.getMessage() for r in caplog.records if r.name.startswith(("asyncio", "gateway"))]
