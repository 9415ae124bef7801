"""A circuit breaker per upstream host: after N consecutive failures, answer at once instead of waiting.

CLOSED lets everything through. N consecutive failures open it; OPEN refuses for `reset_after`
seconds, then HALF_OPEN lets exactly one probe through: its success closes the circuit, its failure
opens it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

from gateway.metrics import serve as metrics


class State(IntEnum):
    """Values of the `gateway_upstream_circuit_state` gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitOpen(Exception):
    """The upstream is considered down; `retry_after` is when the next probe may go through."""

    def __init__(self, upstream: str, retry_after: float) -> None:
        super().__init__(f"upstream {upstream} is unavailable (circuit open)")
        self.retry_after = retry_after


class CircuitBreaker:
    def __init__(
        self, name: str, failures: int, reset_after: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.threshold = failures
        self.reset_after = reset_after
        self.clock = clock
        self.state = State.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._gauge = metrics.UPSTREAM_CIRCUIT_STATE.labels(name)
        self._gauge.set(State.CLOSED)

    def check(self) -> None:
        """Raise CircuitOpen unless a request may go to the upstream now."""
        if self.state is State.CLOSED:
            return
        now = self.clock()
        waited = now - self.opened_at
        if waited >= self.reset_after:  # open long enough, or a probe never reported back
            self.opened_at = now
            self._set(State.HALF_OPEN)  # this caller is the probe
            return
        raise CircuitOpen(self.name, self.reset_after - waited)

    def success(self) -> None:
        self.failures = 0
        if self.state is not State.CLOSED:
            self._set(State.CLOSED)

    def failure(self) -> None:
        self.failures += 1
        if self.state is State.HALF_OPEN or self.failures >= self.threshold:
            self.opened_at = self.clock()
            self._set(State.OPEN)

    def _set(self, state: State) -> None:
        self.state = state
        self._gauge.set(state)
