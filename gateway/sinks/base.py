"""The contract between the capture pipeline and wherever records go."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.core.readiness import Readiness
from gateway.core.record import Record


class Sink(Protocol):
    async def start(self) -> None:
        """Open resources; called once before the first delivery."""

    async def deliver(self, records: Sequence[Record]) -> None:
        """Return only when the records are durable; raise ServiceUnavailable when they cannot be."""

    async def close(self) -> None:
        """Flush and release resources; called once on shutdown."""

    def readiness(self) -> Readiness:
        """Current health for /_readiness."""
