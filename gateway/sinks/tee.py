"""Mirror mode: every record goes to two sinks (the local Kafka/spool sink and the upstream).

A request is acknowledged once both have the records durably (each with its own spool failover); if
either fails, the client retries and the other sees those records again (at least once, by uuid).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.core.readiness import Readiness
from gateway.core.record import Record
from gateway.sinks.base import Sink


class TeeSink:
    def __init__(self, first: Sink, second: Sink) -> None:
        self.sinks = (first, second)

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()

    async def deliver(self, records: Sequence[Record]) -> None:
        await asyncio.gather(*(sink.deliver(records) for sink in self.sinks))

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()

    def readiness(self) -> Readiness:
        states = [sink.readiness() for sink in self.sinks]
        return Readiness(
            ready=all(state.ready for state in states),
            degraded=any(state.degraded for state in states),
            detail="; ".join(state.detail for state in states),
        )
