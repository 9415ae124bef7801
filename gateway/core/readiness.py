"""What a component tells /_readiness (whether the instance should get traffic), and a worker's /ready (the sinks')."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Readiness:
    """`ready` False takes the instance out of a load balancer; `degraded` still serves (e.g. spooling)."""

    ready: bool
    degraded: bool
    detail: str



class Health:
    """A worker's readiness (the sinks'): not ready while it cannot store what it consumes, with the reason.
    `report` (a gauge's `set`) gets 1 or 0 at every change."""

    def __init__(self, report: Callable[[float], None]) -> None:
        self.ready = True
        self.reason = ""
        self._report = report
        report(1)

    def failing(self, reason: str) -> bool:
        """Not ready because of `reason`; True if it was ready until now."""
        was_ready, self.ready, self.reason = self.ready, False, reason
        self._report(0)
        return was_ready

    def recovered(self) -> bool:
        """Ready again; True if it was not."""
        if self.ready:
            return False
        self.ready, self.reason = True, ""
        self._report(1)
        return True
