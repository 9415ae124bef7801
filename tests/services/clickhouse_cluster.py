"""Two ClickHouse 18.16 servers as two replicas of one shard, coordinated by one ZooKeeper.

The cluster `gateway_cluster` is declared in both servers' `remote_servers` (with
`internal_replication`: replicated tables copy the data themselves), each server has `{shard}` and
`{replica}` macros for the replicated tables' ZooKeeper paths, and `ON CLUSTER` DDL runs through
ZooKeeper's default task queue. Replicas fetch parts from each other over their interserver ports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.services.base import HOST, Service, free_ports
from tests.services.clickhouse_server import ClickHouseServer
from tests.services.zookeeper_server import ZooKeeperServer

CLUSTER_NAME = "gateway_cluster"
SIZE = 2
REPLICA_CONFIG = """\
  <interserver_http_host>{host}</interserver_http_host>
  <interserver_http_port>{interserver_port}</interserver_http_port>
  <zookeeper><node><host>{host}</host><port>{zookeeper_port}</port></node><session_timeout_ms>4000</session_timeout_ms></zookeeper>
  <macros><shard>01</shard><replica>replica-{index}</replica></macros>
  <remote_servers><{cluster}><shard><internal_replication>true</internal_replication>
{replicas}  </shard></{cluster}></remote_servers>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
"""


@dataclass(kw_only=True)
class ClickHouseCluster(Service):
    """ZooKeeper plus two replicas; `.nodes[i]` can be killed and started again."""

    name = "clickhouse-cluster"
    cluster: str = CLUSTER_NAME
    zookeeper: ZooKeeperServer | None = field(default=None, repr=False)
    nodes: list[ClickHouseServer] = field(default_factory=list, repr=False)

    @property
    def http_urls(self) -> list[str]:
        return [node.http_url for node in self.nodes]

    @property
    def running(self) -> bool:
        return self.zookeeper is not None and self.zookeeper.running and all(n.running for n in self.nodes)

    def addresses(self) -> dict[str, str]:
        return {"http_urls": ",".join(self.http_urls)}

    def start(self) -> None:
        """Start ZooKeeper and every replica that does not run (on the ports they had)."""
        if self.zookeeper is None:
            self.zookeeper = ZooKeeperServer(root=self.root / "zookeeper")
        if not self.zookeeper.running:
            self.zookeeper.start()
        if not self.nodes:
            self.nodes = self._new_nodes(self.zookeeper.port)
        for node in self.nodes:
            if not node.running:
                node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.zookeeper is not None:
            self.zookeeper.stop()

    def _new_nodes(self, zookeeper_port: int) -> list[ClickHouseServer]:
        ports = [free_ports(3) for _ in range(SIZE)]
        replicas = "".join(f"    <replica><host>{HOST}</host><port>{tcp}</port></replica>\n" for _, tcp, _ in ports)
        return [
            ClickHouseServer(
                root=self.root / f"replica-{i + 1}", http_port=http, tcp_port=tcp,
                extra_config=REPLICA_CONFIG.format(host=HOST, interserver_port=interserver, index=i + 1,
                                                   zookeeper_port=zookeeper_port, cluster=self.cluster,
                                                   replicas=replicas),
            )
            for i, (http, tcp, interserver) in enumerate(ports)
        ]
