"""Overflow routing against a real broker: a hot key's excess goes keyless to the overflow topic, spread
over its partitions, while normal keys keep their murmur2 partition; nothing is lost, also via the spool."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests
from aiokafka.partitioner import murmur2

from gateway.core.record import Record
from gateway.settings import ServeSettings
from tests.services.kafka_broker import KafkaBroker
from tests.support.inprocess import InProcessGateway, settings_for
from tests.support.kafka import consume_all
from tests.support.waiting import wait_until_not_degraded

TOKEN = "phc_overflow_test"
RATE, BURST = 50, 50
OVERFLOW_PARTITIONS = 6
HEADER_NAMES = ["token", "distinct_id", "timestamp", "event", "uuid", "now"]


def overflow_settings(data_dir: Path, kafka: KafkaBroker, **overrides: object) -> ServeSettings:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = settings_for(data_dir, kafka_bootstrap_servers=kafka.bootstrap_servers, topic_main=f"{prefix}-main",
                            topic_overflow=f"{prefix}-overflow", kafka_ack_timeout_ms=1500,
                            overflow_rate=float(RATE), overflow_burst=BURST, **overrides)
    asyncio.run(kafka.create_topics([settings.topic_main]))
    asyncio.run(kafka.create_topics([settings.topic_overflow], partitions=OVERFLOW_PARTITIONS))
    return settings


def event(distinct_id: str, name: str = "load") -> dict:
    return {"event": name, "uuid": str(uuid.uuid4()), "distinct_id": distinct_id, "properties": {}}


def post_batch(url: str, events: list[dict]) -> None:
    response = requests.post(url + "/batch/", data=orjson.dumps({"api_key": TOKEN, "batch": events}), timeout=30)
    assert response.status_code == 200, response.text


def assert_headers_kept(record: Record, sent: dict) -> None:
    assert [name for name, _ in record.headers] == HEADER_NAMES
    headers = dict(record.headers)
    assert headers["token"] == TOKEN.encode() and headers["uuid"] == sent["uuid"].encode()
    assert headers["distinct_id"] == sent["distinct_id"].encode() and headers["event"] == sent["event"].encode()


def test_hot_key_excess_goes_keyless_to_the_overflow_topic(kafka: KafkaBroker, tmp_path: Path) -> None:
    settings = overflow_settings(tmp_path, kafka)
    normal_keys = [f"calm-{n}" for n in range(5)]
    sent: dict[str, dict] = {}
    requests_per_second, hot_per_request = 20, 50  # the hot key sends 1000 events/s: 20 times the rate
    with InProcessGateway(settings) as gateway:
        started = time.monotonic()
        for n in range(3 * requests_per_second):
            batch = [event("hot") for _ in range(hot_per_request)] + [event(key) for key in normal_keys]
            sent |= {e["uuid"]: e for e in batch}
            post_batch(gateway.url, batch)
            time.sleep(max(0.0, started + (n + 1) / requests_per_second - time.monotonic()))
        elapsed = time.monotonic() - started
        metrics = requests.get(gateway.url + "/metrics", timeout=10).text

    consumed = consume_all(kafka.bootstrap_servers, [settings.topic_main, settings.topic_overflow],
                           at_least=len(sent))
    uuids = Counter(orjson.loads(record.value)["uuid"] for _, record in consumed)
    assert set(uuids) == set(sent) and max(uuids.values()) == 1, "every event exactly once, on one topic"

    main = [(p, r) for p, r in consumed if r.topic == settings.topic_main]
    overflow = [(p, r) for p, r in consumed if r.topic == settings.topic_overflow]
    for partition, record in main:
        assert record.key == f"{TOKEN}:{orjson.loads(record.value)['distinct_id']}".encode()
        assert partition == (murmur2(record.key) & 0x7FFFFFFF) % kafka.partitions
        assert_headers_kept(record, sent[orjson.loads(record.value)["uuid"]])
    main_ids = Counter(orjson.loads(r.value)["distinct_id"] for _, r in main)
    assert all(main_ids[key] == 3 * requests_per_second for key in normal_keys), main_ids
    hot_sent = 3 * requests_per_second * hot_per_request
    assert BURST <= main_ids["hot"] <= BURST + RATE * elapsed + 1, (main_ids["hot"], elapsed)

    assert len(overflow) == hot_sent - main_ids["hot"]
    for _, record in overflow:
        assert record.key is None
        value = orjson.loads(record.value)
        assert value["distinct_id"] == "hot"
        assert_headers_kept(record, sent[value["uuid"]])
    spread = Counter(partition for partition, _ in overflow)
    assert len(spread) >= 3, f"overflow records on partitions {dict(spread)}"
    counted = f'capture_events_rerouted_overflow_total{{reason="rate_limited",token="{TOKEN}"}} {len(overflow)}.0'
    assert counted in metrics


@pytest.fixture
def broker_restored(kafka: KafkaBroker) -> Iterator[KafkaBroker]:
    yield kafka
    if not kafka.running:
        kafka.start()


def test_overflow_records_spooled_during_an_outage_are_replayed_keyless(
    broker_restored: KafkaBroker, tmp_path: Path
) -> None:
    kafka = broker_restored
    settings = overflow_settings(tmp_path, kafka, overflow_force=(f"{TOKEN}:bot",))
    bot = [event("bot") for _ in range(200)]
    others = [event(f"person-{n}") for n in range(20)]
    with InProcessGateway(settings) as gateway:
        kafka.stop()
        try:
            for n in range(0, len(bot), 20):
                post_batch(gateway.url, bot[n : n + 20] + others[n // 10 : n // 10 + 2])
            assert requests.get(gateway.url + "/_readiness", timeout=5).json()["status"] == "degraded"
        finally:
            kafka.start()
        wait_until_not_degraded(gateway.url)

    consumed = consume_all(kafka.bootstrap_servers, [settings.topic_main, settings.topic_overflow],
                           at_least=len(bot) + len(others), timeout=60)
    by_uuid = {orjson.loads(record.value)["uuid"]: (partition, record) for partition, record in consumed}
    assert set(by_uuid) == {e["uuid"] for e in bot + others}
    for sent in others:
        partition, record = by_uuid[sent["uuid"]]
        assert record.topic == settings.topic_main and record.key == f"{TOKEN}:{sent['distinct_id']}".encode()
        assert partition == (murmur2(record.key) & 0x7FFFFFFF) % kafka.partitions
    spread = Counter()
    for sent in bot:
        partition, record = by_uuid[sent["uuid"]]
        assert record.topic == settings.topic_overflow and record.key is None
        assert record.headers[-1] == ("force_disable_person_processing", b"true")
        assert record.headers[4] == ("uuid", sent["uuid"].encode())
        spread[partition] += 1
    assert len(spread) >= 3, f"replayed overflow records on partitions {dict(spread)}"
