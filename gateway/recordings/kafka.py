"""A manually committing consumer-group member of the replay topic: the sink's KafkaSource
(gateway.sinkworker.sources), with its own consumer settings and lag gauge.

Rebalances call the recordings sink: on revocation it stores and commits what it consumed from those
partitions; on assignment it forgets what it knew of them.
"""

from __future__ import annotations

from gateway.metrics.recordings import CONSUMER_LAG
from gateway.sinkworker.lag import PartitionLag
from gateway.sinkworker.sources import KafkaSource, group_consumer


class ReplayTopicSource(KafkaSource):
    def __init__(self, bootstrap_servers: str, topic: str, group_id: str, session_timeout_ms: int = 10_000) -> None:
        consumer = group_consumer(
            bootstrap_servers, group_id, session_timeout_ms, fetch_max_bytes=32 * 1024 * 1024,
            max_poll_interval_ms=24 * 3600 * 1000,  # a storage outage pauses polling for its whole length
        )
        super().__init__(consumer, [topic], bootstrap_servers, PartitionLag(CONSUMER_LAG, lambda tp: (str(tp[1]),)))
