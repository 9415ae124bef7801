"""Builders for messages in the gateway's Kafka format, and an in-memory source for worker tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord

TOPIC = "events_plugin_ingestion"
TOKEN = "phc_test_token"


def captured_value(
    index: int = 0,
    *,
    event: str = "$pageview",
    properties: dict[str, Any] | None = None,
    computed: bool = True,
    data_extra: dict[str, Any] | None = None,
    **envelope_extra: Any,
) -> bytes:
    """The JSON value capture writes for one event (newest format unless `computed=False`)."""
    event_uuid = str(uuid.UUID(int=index + 1))
    data = {
        "uuid": event_uuid,
        "event": event,
        "distinct_id": f"user-{index}",
        "properties": properties or {},
    }
    data.update(data_extra or {})
    envelope: dict[str, Any] = {
        "uuid": event_uuid,
        "distinct_id": f"user-{index}",
        "ip": "203.0.113.7",
        "data": orjson.dumps(data).decode(),
        "now": "2023-09-15T09:15:02.328551+00:00",
        "token": TOKEN,
    }
    if computed:
        envelope.update(event=event, timestamp="2023-09-15T09:15:02.325Z")
    envelope.update(envelope_extra)
    return orjson.dumps(envelope)


def record(value: bytes | None, offset: int = 0, partition: int = 0, topic: str = TOPIC) -> ConsumerRecord:
    """A ConsumerRecord as aiokafka would yield it."""
    return ConsumerRecord(
        topic,
        partition,
        offset,
        1694769302328,
        0,
        b"key",
        value,
        None,
        3,
        len(value or b""),
        [("token", b"t")],
    )


def stream(count: int, partitions: int = 2, garbage: Sequence[int] = ()) -> list[ConsumerRecord]:
    """`count` events spread round-robin over partitions; indexes in `garbage` are undecodable."""
    offsets = [0] * partitions
    messages = []
    for index in range(count):
        partition = index % partitions
        value = b"\xffnot json" if index in garbage else captured_value(index)
        messages.append(record(value, offsets[partition], partition))
        offsets[partition] += 1
    return messages


class ListSource:
    """A Source over a fixed message list, starting at `committed`; `crash_on_commit` simulates a crash."""

    def __init__(
        self,
        messages: Sequence[ConsumerRecord],
        committed: dict[tuple[str, int], int] | None = None,
        chunk: int = 7,
        crash_on_commit: bool = False,
    ) -> None:
        self.committed = dict(committed or {})
        self._all = list(messages)
        self._messages = [m for m in messages if m.offset >= self.committed.get((m.topic, m.partition), 0)]
        self._chunk = chunk
        self._crash = crash_on_commit
        self.drained = asyncio.Event()

    async def start(self, listener: Any) -> None:
        listener.assigned({(m.topic, m.partition) for m in self._messages} | set(self.committed))

    async def fetch(self, timeout_s: float, max_records: int) -> list[ConsumerRecord]:
        taken = self._messages[: min(self._chunk, max_records)]
        del self._messages[: len(taken)]
        if not taken:
            self.drained.set()
            await asyncio.sleep(min(timeout_s, 0.01))
        return taken

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        if self._crash:
            raise RuntimeError("simulated crash between insert and commit")
        self.committed.update(offsets)

    async def refetch(self, where: Any) -> ConsumerRecord | None:
        found = [m for m in self._all if (m.topic, m.partition, m.offset) == tuple(where[:3])]
        return found[0] if found else None

    def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class ListDeadLetters:
    """Collects dead letters in memory."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, Any]] = []

    async def send(self, items: Sequence[tuple[Any, Any]]) -> None:
        self.items += items

    async def close(self) -> None:
        return None
