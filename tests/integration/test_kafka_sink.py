"""The Kafka sink against a real broker: exact messages, murmur2 partitions, outages and a full spool."""

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
from gateway.spool import Spool
from gateway.spool.crypto import load_keyring
from tests.services.kafka_broker import KafkaBroker
from tests.support.conformance import assert_record_matches, expected_records, replay
from tests.support.inprocess import InProcessGateway, settings_for
from tests.support.kafka import consume_all
from tests.support.load import Load
from tests.support.waiting import wait_until_not_degraded

TOKEN = "phc_kafka_test"
OUTAGE_SECONDS = 30


def kafka_settings(data_dir: Path, kafka: KafkaBroker, **overrides: object) -> ServeSettings:
    """Settings with topics unique to the test, so tests never see each other's messages."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return settings_for(data_dir, kafka_bootstrap_servers=kafka.bootstrap_servers, topic_main=f"{prefix}-main",
                        topic_historical=f"{prefix}-historical", kafka_ack_timeout_ms=1500, **overrides)


def single_event(distinct_id: str) -> dict:
    return {"event": "load", "uuid": str(uuid.uuid4()), "distinct_id": distinct_id, "properties": {"token": TOKEN}}



def test_conformance_dump_through_kafka(conformance_cases: list[dict], kafka: KafkaBroker, tmp_path: Path) -> None:
    cases = conformance_cases
    clock: dict = {"now": None}
    settings = kafka_settings(tmp_path, kafka, trusted_proxy_hops=1)
    with InProcessGateway(settings, clock=lambda: clock["now"]) as gateway:
        replay(cases, gateway.url, clock)
        assert requests.get(gateway.url + "/_readiness", timeout=5).json()["status"] == "ok"
    consumed = consume_all(kafka.bootstrap_servers, [settings.topic_main, settings.topic_historical], at_least=88)
    # The dump sends two requests twice (the hint-mismatch cases), so expected messages are a multiset.
    expected = {(exp["uuid"], exp["now"]): (case, exp) for case, exp in expected_records(cases)}
    wanted = Counter((exp["uuid"], exp["now"]) for _, exp in expected_records(cases))
    got = Counter()
    assert len(consumed) == 88
    for partition, record in consumed:
        value = orjson.loads(record.value)
        got[(value["uuid"], value["now"])] += 1
        case, exp = expected[(value["uuid"], value["now"])]
        assert_record_matches(record, case, exp, topics=(settings.topic_main, settings.topic_historical))
        assert partition == (murmur2(record.key) & 0x7FFFFFFF) % kafka.partitions
    assert got == wanted
    assert not list((tmp_path / "spool" / "worker-0").glob("*.seg")) or all(
        p.stat().st_size < 64 for p in (tmp_path / "spool" / "worker-0").glob("*.seg")
    ), "nothing should have been spooled while Kafka was up"


@pytest.fixture
def broker_restored(kafka: KafkaBroker) -> Iterator[KafkaBroker]:
    """Whatever a test does to the shared broker, it is running again afterwards."""
    yield kafka
    if not kafka.running:
        kafka.start()


def test_broker_outage_loses_nothing_and_never_answers_5xx(broker_restored: KafkaBroker, tmp_path: Path) -> None:
    kafka = broker_restored
    settings = kafka_settings(tmp_path, kafka)
    with InProcessGateway(settings) as gateway:
        with Load(gateway.url) as load:
            time.sleep(3)
            kafka.stop()
            time.sleep(OUTAGE_SECONDS)
            assert requests.get(gateway.url + "/_readiness", timeout=5).json()["status"] == "degraded"
            kafka.start()
            time.sleep(3)
        wait_until_not_degraded(gateway.url)
    assert not any(status >= 500 or status == 0 for status in load.statuses), load.statuses
    consumed = consume_all(kafka.bootstrap_servers, [settings.topic_main], at_least=len(load.acked), timeout=90)
    uuids = [orjson.loads(record.value)["uuid"] for _, record in consumed]
    assert load.acked <= set(uuids), f"{len(load.acked - set(uuids))} acknowledged events missing"
    assert len(load.acked) > 200


def test_spool_full_answers_503_then_recovers(broker_restored: KafkaBroker, tmp_path: Path) -> None:
    kafka = broker_restored
    settings = kafka_settings(tmp_path, kafka, spool_max_bytes=2 * 1024 * 1024)
    acked: set[str] = set()
    big = "x" * 20_000
    with InProcessGateway(settings) as gateway:
        kafka.stop()
        try:
            for _ in range(400):
                event = single_event("filler")
                event["properties"]["blob"] = big
                response = requests.post(gateway.url + "/e/", data=orjson.dumps(event), timeout=30)
                if response.status_code == 503:
                    break
                assert response.status_code == 200
                acked.add(event["uuid"])
            assert response.status_code == 503
            assert response.headers["Retry-After"].isdigit()
            assert response.json()["code"] == "service_unavailable"
            assert requests.get(gateway.url + "/_readiness", timeout=5).status_code == 503
        finally:
            kafka.start()
        wait_until_not_degraded(gateway.url)
        event = single_event("after")
        assert requests.post(gateway.url + "/e/", data=orjson.dumps(event), timeout=30).status_code == 200
        acked.add(event["uuid"])
    consumed = consume_all(kafka.bootstrap_servers, [settings.topic_main], at_least=len(acked), timeout=60)
    assert acked <= {orjson.loads(record.value)["uuid"] for _, record in consumed}


def test_encrypted_spool_is_replayed_into_kafka(kafka: KafkaBroker, tmp_path: Path) -> None:
    """A backlog spooled encrypted (e.g. during an outage before a restart) reaches Kafka with the key."""
    keys = tmp_path / "spool.keys"
    keys.write_text(f"k1:{bytes(range(32)).hex()}\n")
    settings = kafka_settings(tmp_path, kafka, spool_encryption_key_file=keys)
    events = [single_event(f"enc-{i}") for i in range(10)]
    records = [Record(settings.topic_main, e["distinct_id"].encode(), (("token", TOKEN.encode()),), orjson.dumps(e))
               for e in events]

    async def spool_backlog() -> None:
        spool = Spool(tmp_path / "spool" / "worker-0", fsync="never", keyring=load_keyring(keys))
        await spool.open()
        await spool.append(records)
        await spool.close()

    asyncio.run(spool_backlog())
    assert b"enc-0" not in b"".join(p.read_bytes() for p in (tmp_path / "spool" / "worker-0").glob("*.seg"))
    with InProcessGateway(settings) as gateway:
        wait_until_not_degraded(gateway.url)
    consumed = consume_all(kafka.bootstrap_servers, [settings.topic_main], at_least=len(events))
    assert sorted(orjson.loads(record.value)["uuid"] for _, record in consumed) == sorted(e["uuid"] for e in events)
