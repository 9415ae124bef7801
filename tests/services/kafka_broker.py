"""A real single-node Apache Kafka (KRaft, combined broker+controller) run from Maven Central jars.

The jars come from `kafka_jars` (resolved once, cached). Each broker gets its own directory with
a generated `server.properties`, a formatted data dir and a log; it can be stopped and started
again on the same port and data (broker-outage tests).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.services.base import HOST, Service, ServiceError, free_ports, kill_pid
from tests.services.kafka_jars import KAFKA_HOME, ensure_jars

JVM_OPTS = ("-Xms256m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true")
# Class-data-sharing archive of the broker's classes: recorded by the first broker that exits
# cleanly, then loaded by every later one, which roughly halves startup on two busy cores.
CDS_ARCHIVE = KAFKA_HOME / "broker.jsa"
READY_LINE = b"Kafka Server started"
TOPIC_ALREADY_EXISTS = 36

# Warnings and errors only, plus the one INFO line that says the broker is up (readiness).
LOG4J2_PROPERTIES = """\
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def new_cluster_id() -> str:
    """A random cluster id in Kafka's format (URL-safe base64 of 16 bytes, unpadded)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


@dataclass(kw_only=True)
class KafkaBroker(Service):
    """A KRaft broker+controller on loopback; ports and cluster id stay fixed across restarts."""

    name = "kafka"
    port: int = 0
    controller_port: int = 0
    cluster_id: str = ""
    partitions: int = 4
    # A member of a KafkaCluster sets these: its node id, every node's `id@host:port` controller
    # address, the replication of internal topics, and a smaller heap.
    node_id: int = 1
    voters: str = ""
    replication: int = 1
    heap: str = "1g"
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for Kafka clients."""
        return f"{HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """The broker's log dir (also holds the KRaft metadata log)."""
        return self.root / "data"

    def addresses(self) -> dict[str, str]:
        """The bootstrap address."""
        return {"bootstrap_servers": self.bootstrap_servers}

    def start(self) -> None:
        """Start the broker (formatting storage first if new) and wait until it is unfenced."""
        self.wait_started(self.launch())

    def launch(self) -> int:
        """Start the broker process without waiting (cluster members start together); returns the
        log offset that `wait_started` reads from."""
        libs = ensure_jars()
        if not self.port:
            self.port, self.controller_port = free_ports(2)
            self.cluster_id = new_cluster_id()
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format(libs)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._spawn(self._java(libs, "kafka.Kafka", str(self.root / "server.properties"),
                               jvm_opts=self._class_data_opts()))
        return offset

    def wait_started(self, offset: int, timeout: float = 90) -> None:
        """Wait until the process launched at log `offset` says it started."""
        self._wait(lambda: self._logged_since(offset, READY_LINE), timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown (its data stays for a restart)."""
        if self.pid is not None:
            kill_pid(self.pid)
            self.pid = None
        self._record()

    def stop(self) -> None:
        """Stop the broker (SIGTERM: a clean shutdown) and keep the class archive it recorded."""
        super().stop()
        recorded = self.root / CDS_ARCHIVE.name
        if recorded.exists() and not CDS_ARCHIVE.exists():
            partial = CDS_ARCHIVE.with_name(f"{CDS_ARCHIVE.name}.{os.getpid()}.tmp")
            shutil.copyfile(recorded, partial)
            partial.replace(CDS_ARCHIVE)
        recorded.unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop and start again on the same port and data."""
        self.stop()
        self.start()

    async def create_topics(self, names: Iterable[str], *, partitions: int | None = None,
                            configs: Mapping[str, str] | None = None) -> None:
        """Create topics (with the broker's replication); topics that already exist are left as they are."""
        topics = [NewTopic(name, partitions or self.partitions, self.replication, topic_configs=dict(configs or {}))
                  for name in names]
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            response = await admin.create_topics(topics, timeout_ms=30_000)
        finally:
            await admin.close()
        # Each entry is (topic, error_code, error_message).
        errors = [err for err in response.topic_errors if err[1] not in (0, TOPIC_ALREADY_EXISTS)]
        if errors:
            raise ServiceError(f"create_topics failed: {errors}")

    def _java(self, libs: Path, main_class: str, *args: str, jvm_opts: Iterable[str] = ()) -> list[str]:
        """A `java` command line running `main_class` on the cached jars with our log4j config."""
        return ["java", *JVM_OPTS, f"-Xmx{self.heap}", *jvm_opts,
                f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}", "-cp", f"{libs}/*", main_class, *args]

    def _class_data_opts(self) -> list[str]:
        """JVM flags to load the cached class archive, or to record one at exit if there is none."""
        if CDS_ARCHIVE.exists():
            return [f"-XX:SharedArchiveFile={CDS_ARCHIVE}"]
        return [f"-XX:ArchiveClassesAtExit={self.root / CDS_ARCHIVE.name}", "-Xlog:cds*=off"]

    def _write_config(self) -> None:
        """Write server.properties and log4j2.properties for this broker."""
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # Several partitions by default, so tests can see key-based (murmur2) partitioning.
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": str(self.replication),
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": str(self.replication),
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": str(self.replication),
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.segment.bytes": str(16 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
            **self.overrides,
        }
        (self.root / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.root / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def _format(self, libs: Path) -> None:
        """Format the data dir with this broker's cluster id (kafka-storage.sh format)."""
        result = subprocess.run(
            self._java(libs, "kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}",
                       "-c", str(self.root / "server.properties")),
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def _logged_since(self, offset: int, line: bytes) -> bool:
        """Whether the log contains `line` after byte `offset` (ignores earlier runs)."""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return line in log.read()
