"""Dead-letter queue: messages that cannot become rows are forwarded, never dropped.

Kafka DLQ (default topic `events_plugin_ingestion_dlq`, the name PostHog capture uses for its own
DLQ): the original key, value and headers, plus headers `dlq_reason`, `dlq_detail`,
`dlq_step` = "sink", `dlq_timestamp` (epoch ms), `dlq_topic`, `dlq_partition`, `dlq_offset`.
Without Kafka (embedded mode) the same facts go as JSON lines to `<dir>/dlq-YYYYMMDD.jsonl`,
key and value base64-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import orjson
from aiokafka import AIOKafkaProducer

from gateway.metrics.sink import DLQ_MESSAGES
from gateway.settings.sink import DEFAULT_DLQ_TOPIC
from gateway.sinkworker.rows import Rejected, SourceMessage

DETAIL_LIMIT = 512


class DeadLetters(Protocol):
    async def send(self, items: Sequence[tuple[SourceMessage, Rejected]]) -> None:
        """Durably forward every item, or raise."""
        ...

    async def close(self) -> None: ...


def dlq_headers(message: SourceMessage, error: Rejected, now_ms: int) -> list[tuple[str, bytes]]:
    """Original headers followed by the dlq_* ones."""
    return [
        *message.headers,
        ("dlq_reason", error.reason.encode()),
        ("dlq_detail", error.detail[:DETAIL_LIMIT].encode()),
        ("dlq_step", b"sink"),
        ("dlq_timestamp", str(now_ms).encode()),
        ("dlq_topic", message.topic.encode()),
        ("dlq_partition", str(message.partition).encode()),
        ("dlq_offset", str(message.offset).encode()),
    ]


class KafkaDeadLetters:
    """Produces dead letters to a Kafka topic and waits for the acks."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    @classmethod
    async def start(cls, bootstrap_servers: str, topic: str = DEFAULT_DLQ_TOPIC) -> KafkaDeadLetters:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
        await producer.start()
        return cls(producer, topic)

    async def send(self, items: Sequence[tuple[SourceMessage, Rejected]]) -> None:
        now_ms = int(time.time() * 1000)
        acks = [
            await self._producer.send(
                self._topic, message.value, key=message.key, headers=dlq_headers(message, error, now_ms)
            )
            for message, error in items
        ]
        await asyncio.gather(*acks)
        for _, error in items:
            DLQ_MESSAGES.labels(error.reason).inc()

    async def close(self) -> None:
        await self._producer.stop()


class FileDeadLetters:
    """Appends dead letters as fsynced JSON lines to a directory."""

    def __init__(self, directory: str | Path) -> None:
        self._directory = Path(directory)

    async def send(self, items: Sequence[tuple[SourceMessage, Rejected]]) -> None:
        now_ms = int(time.time() * 1000)
        lines = b"".join(
            orjson.dumps(
                {
                    "headers": {
                        key: value.decode(errors="replace") for key, value in dlq_headers(m, e, now_ms)
                    },
                    "key": base64.b64encode(m.key).decode() if m.key is not None else None,
                    "value": base64.b64encode(m.value or b"").decode(),
                },
                option=orjson.OPT_APPEND_NEWLINE,
            )
            for m, e in items
        )
        await asyncio.to_thread(self._append, lines)
        for _, error in items:
            DLQ_MESSAGES.labels(error.reason).inc()

    def _append(self, lines: bytes) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        path = self._directory / time.strftime("dlq-%Y%m%d.jsonl", time.gmtime())
        with open(path, "ab") as file:
            file.write(lines)
            file.flush()
            os.fsync(file.fileno())

    async def close(self) -> None:
        return None
