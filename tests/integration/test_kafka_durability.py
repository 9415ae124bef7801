"""Zero loss with Kafka: `gateway serve` processes SIGKILLed under load with the broker up and down, and
spools of a multi-worker run replayed after a restart with fewer workers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from tests.services.kafka_broker import KafkaBroker
from tests.support.kafka import consume_all
from tests.support.load import Load, event
from tests.support.processes import GatewayProcess
from tests.support.waiting import wait_until_not_degraded


@pytest.fixture
def kafka_up_afterwards(kafka: KafkaBroker) -> Iterator[KafkaBroker]:
    yield kafka
    if not kafka.running:
        kafka.start()


def gateway_args(kafka: KafkaBroker, topic: str, *extra: str) -> tuple[str, ...]:
    return ("--kafka-bootstrap-servers", kafka.bootstrap_servers, "--topic-main", topic,
            "--kafka-ack-timeout-ms", "1000", "--rate-limit-ip", "off", *extra)



def kafka_uuids(kafka: KafkaBroker, topic: str, at_least: int) -> set[str]:
    consumed = consume_all(kafka.bootstrap_servers, [topic], at_least=at_least, timeout=90)
    return {orjson.loads(record.value)["uuid"] for _, record in consumed}


def run_load(url: str, seconds: float) -> set[str]:
    with Load(url) as load:
        time.sleep(seconds)
    return load.acked


def test_sigkill_under_load_with_broker_up_then_down(kafka_up_afterwards: KafkaBroker, tmp_path: Path) -> None:
    kafka = kafka_up_afterwards
    topic = f"kill-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    acked: set[str] = set()

    # Broker up: acknowledged means acked by Kafka (or spooled if slow); kill mid-load.
    gateway = GatewayProcess(data_dir, *gateway_args(kafka, topic)).start()
    with Load(gateway.url) as load:
        time.sleep(3)
        gateway.kill()
    acked |= load.acked

    # Broker down: everything is spooled; kill again mid-load, restart still without a broker.
    kafka.stop()
    gateway = GatewayProcess(data_dir, *gateway_args(kafka, topic)).start()
    with Load(gateway.url) as load:
        time.sleep(3)
        gateway.kill()
    acked |= load.acked
    gateway = GatewayProcess(data_dir, *gateway_args(kafka, topic)).start()
    acked |= run_load(gateway.url, 2)

    kafka.start()
    wait_until_not_degraded(gateway.url)
    assert gateway.terminate() == 0
    assert len(acked) > 300
    missing = acked - kafka_uuids(kafka, topic, len(acked))
    assert not missing, f"{len(missing)} acknowledged events never reached Kafka"


def test_spools_of_more_workers_are_replayed_by_fewer(kafka_up_afterwards: KafkaBroker, tmp_path: Path) -> None:
    kafka = kafka_up_afterwards
    topic = f"workers-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    kafka.stop()
    acked: set[str] = set()
    with GatewayProcess(data_dir, *gateway_args(kafka, topic, "--workers", "2")) as gateway:
        for n in range(300):  # a new connection per request, so SO_REUSEPORT spreads them over workers
            sent = event(f"user-{n % 13}")
            response = requests.post(gateway.url + "/e/", data=orjson.dumps(sent),
                                     headers={"Connection": "close"}, timeout=10)
            assert response.status_code == 200
            acked.add(sent["uuid"])
        assert gateway.terminate() == 0
    spools = sorted(p.name for p in (data_dir / "spool").iterdir())
    assert spools == ["worker-0", "worker-1"]
    assert all(list((data_dir / "spool" / name).glob("*.seg")) for name in spools)

    kafka.start()
    with GatewayProcess(data_dir, *gateway_args(kafka, topic, "--workers", "1")) as gateway:
        assert kafka_uuids(kafka, topic, len(acked)) >= acked
        wait_until_not_degraded(gateway.url)
