"""The gateway in front of a 3-broker Kafka cluster (replication 3, min.insync.replicas 2) under steady
load while brokers are SIGKILLed: one broker down costs nothing acknowledged (at most a spell of spooling
while its partitions elect new leaders), two down make acks=all impossible so the gateway spools, and
the spool is replayed in order once a broker returns: per key, events reach Kafka in the order they
were acknowledged, whether they went direct or through the spool."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from tests.services.base import free_port
from tests.services.kafka_cluster import KafkaCluster
from tests.support.kafka import consume_all
from tests.support.load import Load
from tests.support.processes import GatewayProcess, spool_dump
from tests.support.readiness import ReadinessWatch
from tests.support.waiting import wait_for, wait_until_not_degraded

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(kafka_cluster: KafkaCluster) -> Iterator[KafkaCluster]:
    """The session's cluster, every node running again after the test (it kills some)."""
    yield kafka_cluster
    kafka_cluster.start()


def readiness(url: str) -> dict:
    return requests.get(url + "/_readiness", timeout=5).json()


def test_brokers_killed_under_load_lose_nothing_acknowledged(cluster: KafkaCluster, tmp_path: Path) -> None:
    topic = f"cluster-{uuid.uuid4().hex[:8]}"
    asyncio.run(cluster.create_topics([topic]))
    leader = cluster.node_by_id(asyncio.run(cluster.leaders(topic))[0])
    gateway = GatewayProcess(tmp_path / "data", "--kafka-bootstrap-servers", cluster.bootstrap_servers,
                             "--topic-main", topic, "--rate-limit-ip", "off").start()
    try:
        with ReadinessWatch(gateway.url) as watch, Load(gateway.url, clients=2) as load:
            time.sleep(3)
            # One broker down (it leads partition 0): the others take over its partitions.
            leader.kill()
            first_kill = time.monotonic()
            time.sleep(12)
            wait_until_not_degraded(gateway.url, timeout=60)
            spooled_one_down = watch.degraded_seconds(since=first_kill)
            assert set(load.statuses) == {200}, load.statuses

            # Two down: no partition has 2 in-sync replicas, acks=all cannot be met → spool.
            second = next(node for node in cluster.nodes if node.running)
            second.kill()
            wait_for(lambda: readiness(gateway.url)["status"] == "degraded", 30, "gateway degraded")
            assert "spooling" in readiness(gateway.url)["detail"]
            time.sleep(3)
            pending = spool_dump(gateway.data_dir)  # in spool order: what the replay must keep in order
            second.start()
            wait_until_not_degraded(gateway.url, timeout=90)
        assert set(load.statuses) == {200}, load.statuses
        assert gateway.terminate() == 0
    finally:
        gateway.stop()
    # Records spooled in the last moments (after readiness was ok again) wait in the durable spool for
    # the next start's replay: acknowledged and kept, not yet in Kafka.
    still_spooled = {record["value"]["uuid"] for record in spool_dump(gateway.data_dir)}
    cluster.start()
    print(f"\none broker down: gateway degraded (spooling) for {spooled_one_down:.1f}s; "
          f"{len(load.acked)} events acknowledged, {len(pending)} spooled records pending at the second kill")

    consumed = consume_all(cluster.bootstrap_servers, [topic], at_least=len(load.acked), timeout=90)
    in_kafka = [(partition, orjson.loads(record.value)["uuid"]) for partition, record in consumed]
    missing = load.acked - {uuid_ for _, uuid_ in in_kafka} - still_spooled
    assert not missing, (f"{len(missing)} of {len(load.acked)} acknowledged events are neither in Kafka nor "
                         f"in the spool ({len(still_spooled)} spooled): {sorted(missing)[:5]}")

    # Per key, the first copy of each acknowledged event in Kafka comes in the order the gateway
    # acknowledged them, whichever way each went: direct, or spooled and replayed (a record whose direct
    # send timed out is spooled too, and its direct copy may land as well, before or after the replay;
    # only the first copy counts). One still in the spool comes after all of its key's in Kafka.
    # Spool order across keys is not kept: a request sent direct before another's record was spooled
    # may time out after it, be spooled behind it, and still land first through its direct send.
    assert len(pending) > 50
    first_index: dict[str, int] = {}
    for index, (_, uuid_) in enumerate(in_kafka):  # a key's records are in one partition
        first_index.setdefault(uuid_, index)
    breaches = {  # per distinct_id: how many of its events came after a later-acknowledged one
        key: count
        for key, uuids in load.acked_by_key.items()
        if (count := sum(a > b for a, b in itertools.pairwise(first_index.get(u, math.inf) for u in uuids)))
    }
    assert not breaches, (f"acknowledged events out of order in Kafka, per key: {breaches} "
                          f"({len(pending)} spooled records pending at the second kill)")


def test_a_dead_bootstrap_server_is_skipped(cluster: KafkaCluster, tmp_path: Path) -> None:
    servers = f"127.0.0.1:{free_port()},{cluster.bootstrap_servers}"
    with GatewayProcess(tmp_path / "data", "--kafka-bootstrap-servers", servers) as gateway:
        assert readiness(gateway.url)["status"] == "ok"


def test_no_reachable_bootstrap_server_is_a_degraded_start(tmp_path: Path) -> None:
    servers = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    with GatewayProcess(tmp_path / "data", "--kafka-bootstrap-servers", servers,
                        "--kafka-ack-timeout-ms", "1000") as gateway:
        state = readiness(gateway.url)
        assert (state["status"], state["ready"]) == ("degraded", True)
        assert state["detail"] == "spooling: kafka unavailable or catching up"
        assert gateway.terminate() == 0
    assert "kafka unavailable at start" in gateway.log()
