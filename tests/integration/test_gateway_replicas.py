"""Two `gateway serve` replicas (own data dirs) behind the shipped nginx config as one upstream: a per-IP
limit shared through Redis holds across both, a replica SIGKILLed under load costs the clients at most
its in-flight requests and its spool is replayed into Kafka when it restarts, and a replica drained
with SIGTERM costs them nothing."""

from __future__ import annotations

import asyncio
import http.client
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.integration.test_nginx_front import render_config, replace_once
from tests.services.base import free_ports
from tests.services.kafka_cluster import KafkaCluster
from tests.services.nginx_server import NginxServer
from tests.support.kafka import consume_all
from tests.support.load import Load, event
from tests.support.processes import GatewayProcess, spool_dump
from tests.support.waiting import wait_for, wait_until_not_degraded

pytestmark = pytest.mark.cluster

CLIENTS = 2


@dataclass
class Replicas:
    url: str  # nginx
    gateways: list[GatewayProcess]


@pytest.fixture
def replicas_factory(tmp_path: Path) -> Iterator:
    started: list[tuple[NginxServer, list[GatewayProcess]]] = []

    def start(*args: str, nginx_rate: str = "") -> Replicas:
        gateways = [GatewayProcess(tmp_path / f"replica-{n}", "--trusted-proxy-hops", "1", *args,
                                   name=f"replica-{n}").start() for n in range(2)]
        http_port, https_port = free_ports(2)
        conf = render_config(tmp_path / "conf", http_port=http_port, https_port=https_port, upstream="unused")
        # Several replicas: no max_fails=0 (nginx's README advice), so a dead one is skipped for 10 s.
        upstream = conf.parent / "posthog-gateway" / "upstream.conf"
        upstream.write_text(replace_once(upstream.read_text(), "server unused max_fails=0;",
                                         "".join(f"server 127.0.0.1:{g.port};\n" for g in gateways)))
        if nginx_rate:  # the load generator is one client IP: keep nginx's own per-IP limit out of the way
            http_conf = conf.parent / "posthog-gateway" / "http.conf"
            http_conf.write_text(replace_once(http_conf.read_text(), "zone=posthog_events:20m rate=100r/s",
                                              f"zone=posthog_events:20m rate={nginx_rate}"))
        server = NginxServer(root=tmp_path / "nginx", conf=conf, ports=[http_port, https_port])
        server.start()
        started.append((server, gateways))
        return Replicas(f"http://127.0.0.1:{http_port}", gateways)

    yield start
    for server, gateways in started:
        server.stop()
        for gateway in gateways:
            gateway.stop()


@pytest.fixture
def cluster(kafka_cluster: KafkaCluster) -> Iterator[KafkaCluster]:
    yield kafka_cluster
    kafka_cluster.start()


def served_by(gateway: GatewayProcess) -> int:
    """Events this replica acknowledged (its own /metrics, which nginx hides)."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return int(sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("capture_events_ingested_total{")))


def test_per_ip_limit_is_shared_by_both_replicas(replicas_factory, redis_url: str) -> None:
    limit, offered, seconds = 50, 100, 6.0  # per second: nginx's own limit (100 r/s, burst 200) never bites
    replicas = replicas_factory("--rate-limit-ip", f"events={limit}/second", "--rate-limit-storage", redis_url)
    port = int(replicas.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, source_address=("127.0.0.5", 0), timeout=10)
    statuses: list[int] = []
    started = time.monotonic()
    try:
        for n in range(int(offered * seconds)):
            time.sleep(max(0.0, started + n / offered - time.monotonic()))  # paced, not a burst
            conn.request("POST", "/e/", body=orjson.dumps(event("rl")))
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}
    # Both replicas served (nginx round-robins), yet together they allowed the limit of one.
    assert all(served_by(gateway) > 0 for gateway in replicas.gateways)
    allowed_rate = statuses.count(200) / elapsed
    print(f"\nper-IP limit {limit}/s over two replicas sharing Redis: {allowed_rate:.1f}/s allowed")
    assert limit * 0.8 <= allowed_rate <= limit * 1.2, (allowed_rate, statuses.count(200), elapsed)


def test_killed_replica_costs_its_in_flight_requests_and_its_spool_is_replayed(
    replicas_factory, cluster: KafkaCluster,
) -> None:
    topic = f"replicas-{uuid.uuid4().hex[:8]}"
    asyncio.run(cluster.create_topics([topic]))
    replicas = replicas_factory("--kafka-bootstrap-servers", cluster.bootstrap_servers, "--topic-main", topic,
                                "--kafka-ack-timeout-ms", "1000", "--rate-limit-ip", "off", nginx_rate="5000r/s")
    killed, survivor = replicas.gateways
    with Load(replicas.url, clients=CLIENTS) as load:
        time.sleep(2)
        # Kafka loses acks=all (two brokers down): both replicas spool what they acknowledge.
        for node in cluster.nodes[:2]:
            node.kill()
        for gateway in replicas.gateways:
            wait_until_degraded(gateway)
        time.sleep(2)
        killed.kill()
        at_kill = len(load.acked)
        time.sleep(4)
        pending = spool_dump(killed.data_dir)  # acknowledged by the dead replica, not yet in Kafka
        cluster.start()
        wait_until_not_degraded(survivor.url)
        after_kill = len(load.acked) - at_kill
    failed = sum(count for status, count in load.statuses.items() if status != 200)
    # Only the requests in flight at the dead replica when it died (one per client at most) fail.
    assert failed <= CLIENTS, load.statuses
    assert after_kill > 200, "nginx did not move the load to the surviving replica"
    assert len(pending) > 20

    killed.start()  # same data dir: it replays the spool it was killed with
    wait_until_not_degraded(killed.url)
    consumed = consume_all(cluster.bootstrap_servers, [topic], at_least=len(load.acked), timeout=90)
    in_kafka = {orjson.loads(record.value)["uuid"] for _, record in consumed}
    assert {record["value"]["uuid"] for record in pending} <= in_kafka
    missing = load.acked - in_kafka
    assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged events never reached Kafka"


def test_replica_drained_with_sigterm_costs_no_request(replicas_factory) -> None:
    replicas = replicas_factory("--rate-limit-ip", "off", nginx_rate="5000r/s")
    drained, survivor = replicas.gateways
    with Load(replicas.url, clients=CLIENTS) as load:
        time.sleep(2)
        assert drained.terminate() == 0
        at_drain = served_by(survivor)
        time.sleep(2)
    assert set(load.statuses) == {200}, load.statuses
    assert served_by(survivor) > at_drain + 100


def wait_until_degraded(gateway: GatewayProcess) -> None:
    def degraded() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
        try:
            conn.request("GET", "/_readiness")
            return orjson.loads(conn.getresponse().read())["status"] == "degraded"
        finally:
            conn.close()

    wait_for(degraded, 30, f"replica on port {gateway.port} degraded")
