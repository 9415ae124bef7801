"""What a component tells /_readiness: whether the instance should get traffic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Readiness:
    """`ready` False takes the instance out of a load balancer; `degraded` still serves (e.g. spooling)."""

    ready: bool
    degraded: bool
    detail: str


@dataclass(slots=True, frozen=True)
class Health:
    """A worker's (the sinks'): False while it cannot store what it consumes, with the reason."""

    ready: bool = True
    reason: str = ""
