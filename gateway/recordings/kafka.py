"""A manually committing consumer-group member of the replay topic (aiokafka).

Same shape as the spool sources of `gateway.sinkworker.sources` (fetch, commit, pause, resume, lag),
so the recordings sink runs on either. Rebalances call the sink: on revocation it stores and
commits what it consumed from those partitions; on assignment it forgets what it knew of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from gateway.recordings.metrics import CONSUMER_LAG


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, listener: Any) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._listener.revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._listener.assigned({(tp.topic, tp.partition) for tp in assigned})


class ReplayTopicSource:
    lag_unit = "messages"

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str, session_timeout_ms: int = 10_000) -> None:
        self._topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, session_timeout_ms // 4),
            max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024,
            max_poll_interval_ms=24 * 3600 * 1000,  # a storage outage pauses polling for its whole length
        )
        self._lag: dict[int, int] = {}

    async def start(self, listener: Any) -> None:
        self._consumer.subscribe(topics=[self._topic], listener=_Rebalance(listener))
        await self._consumer.start()

    async def fetch(self, timeout_s: float, max_records: int) -> Sequence[Any]:
        batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        messages: list[Any] = []
        for tp, records in batches.items():
            messages += records
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self._lag[tp.partition] = highwater - records[-1].offset - 1
                CONSUMER_LAG.labels(str(tp.partition)).set(self._lag[tp.partition])
        return messages

    def lag(self) -> int:
        return sum(self._lag.values())

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        await self._consumer.commit({TopicPartition(t, p): offset for (t, p), offset in offsets.items()})

    def pause(self) -> None:
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._consumer.resume(*self._consumer.paused())

    async def stop(self) -> None:
        await self._consumer.stop()
