"""Session-scoped pytest fixtures for the real services.

Each service starts lazily, on the first test that asks for it, and stops at the end of the
session. Services already started by `python -m tests.services start` (and still alive) are
reused instead and left running.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.services.base import STATE_FILE, Service, ServiceError, load_state
from tests.services.clickhouse_cluster import ClickHouseCluster
from tests.services.clickhouse_server import ClickHouseServer
from tests.services.kafka_broker import KafkaBroker
from tests.services.kafka_cluster import KafkaCluster
from tests.services.redis_server import RedisServer
from tests.services.s3_server import S3Server

S = TypeVar("S", bound=Service)
START_ATTEMPTS = 2  # a service that fails to start is stopped and started once more, on new ports


class SessionServices:
    """The services of one pytest session: reused from the state file or started here."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Service] = []

    def get(self, cls: type[S]) -> S:
        """A running instance of `cls`: this session's, the CLI's if it is alive, else a new one in `root`."""
        for service in self.started:
            if isinstance(service, cls):
                if not service.running:  # a test stopped it (an outage) and failed before restarting
                    service.start()
                return service
        record = load_state().get(cls.name)
        if record is not None:
            service = cls.from_record(record, state_file=STATE_FILE)
            if service.running:
                return service
        for attempt in range(START_ATTEMPTS):
            service = cls(root=self.root / (cls.name if attempt == 0 else f"{cls.name}-{attempt}"))
            self.started.append(service)  # stopped at the session's end even if it fails half-way through starting
            try:
                service.start()
                return service
            except ServiceError:  # e.g. a port found free was taken before the server bound it
                service.stop()
                if attempt == START_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def stop_started(self) -> None:
        """Stop the services this session started (not the reused ones)."""
        for service in reversed(self.started):
            service.stop()


@pytest.fixture(scope="session")
def session_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionServices]:
    """The session's service registry; stops what it started when the session ends."""
    services = SessionServices(tmp_path_factory.mktemp("services"))
    yield services
    services.stop_started()


@pytest.fixture(scope="session")
def kafka(session_services: SessionServices) -> KafkaBroker:
    """A running Kafka broker: `.bootstrap_servers`, `.stop()`, `.start()`, `.create_topics()`.

    A test that stops the broker must start it again (try/finally): the broker is shared.
    """
    return session_services.get(KafkaBroker)


@pytest.fixture(scope="session")
def kafka_cluster(session_services: SessionServices) -> KafkaCluster:
    """A running 3-node Kafka cluster: `.bootstrap_servers` (all nodes), `.nodes[i]` (`.kill()`,
    `.start()`), `.create_topics()` (replication 3, min.insync.replicas 2), `.leaders(topic)`.

    Started only by the tests that ask for it (marked `cluster`). A test that kills nodes must start
    them again (`.start()` restarts the stopped ones): the cluster is shared by the session.
    """
    return session_services.get(KafkaCluster)


@pytest.fixture(scope="session")
def redis_url(session_services: SessionServices) -> str:
    """`redis://` URL of a running Redis (database 0)."""
    return session_services.get(RedisServer).url


@pytest.fixture(scope="session")
def clickhouse_http_url(session_services: SessionServices) -> str:
    """Base HTTP URL of a running ClickHouse server (user `default`, no password)."""
    return session_services.get(ClickHouseServer).http_url


@pytest.fixture(scope="session")
def s3_server(session_services: SessionServices) -> S3Server:
    """A running S3-compatible server (s3s-fs): `.endpoint_url`, bucket `recordings`, keys in s3_server.py.

    A test that stops it (a storage outage) must start it again: it is shared by the session.
    """
    return session_services.get(S3Server)


@pytest.fixture(scope="session")
def clickhouse_cluster(session_services: SessionServices) -> ClickHouseCluster:
    """ZooKeeper and two ClickHouse 18.16 replicas of one shard in cluster `.cluster`: `.http_urls`,
    `.nodes[i]` (`.kill()`, `.start()`), `.zookeeper`.

    Started only by the tests that ask for it (marked `cluster`). A test that kills a replica must
    start it again (`.start()` restarts the stopped ones): the cluster is shared by the session.
    """
    return session_services.get(ClickHouseCluster)
