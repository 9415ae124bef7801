"""Node loss with its disk intact: a Kafka-mode gateway SIGKILLed while Kafka is down holds acknowledged
events only in its (encrypted) spool; `gateway spool export` on its data dir, `gateway spool import` into
a second gateway's data dir, a restart of that gateway, Kafka back → every acknowledged uuid in Kafka."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.services.kafka_broker import KafkaBroker
from tests.support.kafka import consume_all
from tests.support.load import Load
from tests.support.processes import GatewayProcess, run_gateway
from tests.support.waiting import wait_until_not_degraded


@pytest.fixture
def kafka_up_afterwards(kafka: KafkaBroker) -> Iterator[KafkaBroker]:
    yield kafka
    if not kafka.running:
        kafka.start()


def test_spool_of_a_killed_node_is_delivered_by_another(kafka_up_afterwards: KafkaBroker, tmp_path: Path) -> None:
    kafka = kafka_up_afterwards
    topic = f"handover-{uuid.uuid4().hex[:8]}"
    keys = tmp_path / "spool.keys"
    keys.write_text(f"k1:{bytes(range(32)).hex()}\n")
    args = ("--kafka-bootstrap-servers", kafka.bootstrap_servers, "--topic-main", topic,
            "--kafka-ack-timeout-ms", "1000", "--rate-limit-ip", "off", "--spool-encryption-key-file", str(keys))
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"

    kafka.stop()
    gateway_b = GatewayProcess(node_b, *args, name="node-b").start()
    gateway_a = GatewayProcess(node_a, *args, name="node-a").start()
    with Load(gateway_a.url) as load_a, Load(gateway_b.url, clients=1) as load_b:
        time.sleep(3)
        gateway_a.kill()  # node A is lost; its disk is not
    assert len(load_a.acked) > 100
    export = tmp_path / "node-a.spool.tar"
    refused = run_gateway("spool", "export", "--data-dir", str(node_b), "--out", str(export))
    assert refused.returncode == 1 and "in use" in refused.stderr  # B runs: its spool is not exportable

    exported = run_gateway("spool", "export", "--data-dir", str(node_a), "--out", str(export))
    assert exported.returncode == 0, exported.stderr
    assert orjson.loads(exported.stdout)["records"] >= len(load_a.acked)
    imported = run_gateway("spool", "import", "--data-dir", str(node_b), str(export),
                           "--spool-encryption-key-file", str(keys))
    assert imported.returncode == 0, imported.stderr
    assert gateway_b.terminate() == 0  # B adopts the imported spool when it starts
    gateway_b = GatewayProcess(node_b, *args, name="node-b").start()

    kafka.start()
    started = time.monotonic()
    acked = load_a.acked | load_b.acked
    delivered = {orjson.loads(record.value)["uuid"]
                 for _, record in consume_all(kafka.bootstrap_servers, [topic], at_least=len(acked), timeout=90)}
    print(f"\nhand-over: {len(acked)} acknowledged events in Kafka {time.monotonic() - started:.1f}s after it was back")
    wait_until_not_degraded(gateway_b.url)
    assert gateway_b.terminate() == 0
    missing = acked - delivered
    assert not missing, f"{len(missing)} acknowledged events never reached Kafka"
