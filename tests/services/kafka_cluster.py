"""A real 3-node Apache Kafka KRaft cluster on loopback: every node a broker and a controller voter.

Each node is a `KafkaBroker` with its own ports, data dir and a 512 MB heap; they share one cluster
id and controller quorum. Topics are replicated to all three nodes with `min.insync.replicas=2`, so
one node can die without losing an acks=all write, and a second one makes acks=all impossible.
Failure detection is tuned down from Kafka's 9 s broker session so a killed node is fenced (and
its partitions get new leaders) within a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient

from tests.services.base import HOST, Service, ServiceError, free_ports
from tests.services.kafka_broker import KafkaBroker, new_cluster_id

SIZE = 3
CLUSTER_CONFIG = {
    "default.replication.factor": str(SIZE),
    "min.insync.replicas": "2",
    # A node that stops heartbeating is fenced after 6 s (default 9 s) and leaves every ISR.
    "broker.session.timeout.ms": "6000",
    "broker.heartbeat.interval.ms": "1000",
    "replica.lag.time.max.ms": "10000",
}


@dataclass(kw_only=True)
class KafkaCluster(Service):
    """Three KRaft broker+controller nodes; `.nodes[i]` can be killed and started again."""

    name = "kafka-cluster"
    partitions: int = 6
    nodes: list[KafkaBroker] = field(default_factory=list, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        """Every node's `host:port`, comma-separated (what the gateway is given)."""
        return ",".join(node.bootstrap_servers for node in self.nodes)

    @property
    def running(self) -> bool:
        """Whether every node runs."""
        return bool(self.nodes) and all(node.running for node in self.nodes)

    def addresses(self) -> dict[str, str]:
        """The bootstrap list."""
        return {"bootstrap_servers": self.bootstrap_servers}

    def start(self) -> None:
        """Start the nodes that do not run, together (a lone voter cannot elect a controller), and wait."""
        if not self.nodes:
            self.nodes = self._new_nodes()
        stopped = [node for node in self.nodes if not node.running]
        offsets = [node.launch() for node in stopped]
        for node, offset in zip(stopped, offsets, strict=True):
            node.wait_started(offset, timeout=120)

    def stop(self) -> None:
        """Stop every node at once (one by one, the last ones would wait on a lost quorum)."""
        with ThreadPoolExecutor(len(self.nodes) or 1) as pool:
            list(pool.map(KafkaBroker.stop, self.nodes))

    def node_by_id(self, node_id: int) -> KafkaBroker:
        """The node with Kafka node id `node_id`."""
        return next(node for node in self.nodes if node.node_id == node_id)

    async def create_topics(self, names: Iterable[str], *, partitions: int | None = None,
                            configs: Mapping[str, str] | None = None) -> None:
        """Create topics replicated to every node (min.insync.replicas=2 from the broker config)."""
        await self._any_running().create_topics(names, partitions=partitions or self.partitions, configs=configs)

    async def leaders(self, topic: str) -> dict[int, int]:
        """The leader's node id of each partition of `topic` (-1 while it has none)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self._any_running().bootstrap_servers)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        return {p["partition"]: p["leader"] for p in described["partitions"]}

    def _any_running(self) -> KafkaBroker:
        for node in self.nodes:
            if node.running:
                return node
        raise ServiceError("no node of the Kafka cluster runs")

    def _new_nodes(self) -> list[KafkaBroker]:
        ports = free_ports(2 * SIZE)
        voters = ",".join(f"{i + 1}@{HOST}:{ports[SIZE + i]}" for i in range(SIZE))
        cluster_id = new_cluster_id()
        return [
            KafkaBroker(root=self.root / f"node-{i + 1}", port=ports[i], controller_port=ports[SIZE + i],
                        cluster_id=cluster_id, partitions=self.partitions, node_id=i + 1, voters=voters,
                        replication=SIZE, heap="512m", overrides=CLUSTER_CONFIG)
            for i in range(SIZE)
        ]
