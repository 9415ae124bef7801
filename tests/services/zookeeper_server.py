"""Debian's `zookeeper` (3.8) as a standalone server on loopback: ClickHouse's replication coordinator."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

from tests.services.base import HOST, Service, free_port

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"  # its manifest's Class-Path names the dependencies
ZOO_CFG = """\
tickTime=500
dataDir={root}/data
clientPort={port}
clientPortAddress={host}
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr
"""


def zookeeper_serving(port: int, host: str = HOST) -> bool:
    """Whether the server serves requests: its `srvr` answer has a `Mode:` line. (`ruok` answers `imok`
    before that, and a ClickHouse 18.16 whose first ZooKeeper session fails crashes in its DDL worker.)"""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1) as sock:
        sock.sendall(b"srvr")
        return b"Mode:" in sock.recv(4096)
    return False


@dataclass(kw_only=True)
class ZooKeeperServer(Service):
    """One ZooKeeper server (no ensemble), 128 MB heap, ticks of 500 ms."""

    name = "zookeeper"
    port: int = 0

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def addresses(self) -> dict[str, str]:
        return {"client": self.address}

    def start(self) -> None:
        if not self.port:
            self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "zoo.cfg"
        config.write_text(ZOO_CFG.format(root=self.root, port=self.port, host=HOST))
        self._spawn(["java", "-Xmx128m", "-Dzookeeper.log.dir=" + str(self.root),
                     "-cp", f"{ZOOKEEPER_JAR}:/usr/share/java/slf4j-simple.jar",
                     "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(config)])
        self._wait(lambda: zookeeper_serving(self.port), timeout=60)
