"""Overflow routing, as PostHog capture's partition limiter: a hot `token:distinct_id` goes keyless to the
overflow topic instead of stalling everyone who shares its partition of the main topic.

Each key has a token bucket (`--overflow-rate` per second, `--overflow-burst` deep), kept as one
number per key (GCRA: the time at which its bucket will be full again), in-process and per worker
like PostHog's (no round trip per event). Keys are tracked in an LRU bounded by `max_keys`; a key
evicted while idle loses nothing (its bucket was full), a key evicted while busy restarts with a
full bucket. `--overflow-force` lists keys (`token:distinct_id`) or whole tokens that always
overflow. Only main-topic analytics events are routed; replay, exceptions, heatmaps, client warnings
and historical events keep their topic and key.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from gateway.core.record import Record
from gateway.metrics import serve as metrics
from gateway.metrics.export import LocalCounter

FORCE_LIMITED = "force_limited"
RATE_LIMITED = "rate_limited"
MAX_TRACKED_KEYS = 100_000
# Series of capture_events_rerouted_overflow_total with their own token label; later tokens count as "other".
MAX_TOKEN_LABELS = 1_000
# What PostHog sets on force-overflowed events: the pipeline skips person processing for them.
FORCE_HEADER = ("force_disable_person_processing", b"true")


class OverflowLimiter:
    """Decides per key whether an event overflows: `reason(key, token, now)` is None, RATE_LIMITED or
    FORCE_LIMITED; `now` comes from `clock` (read once per request: its events arrived together)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        force: Iterable[str] = (),
        *,
        max_keys: int = MAX_TRACKED_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self._interval = 1 / rate if rate > 0 else 0.0
        # A full bucket: `burst` events at once (plus a millionth of one against float rounding).
        self._tolerance = (max(burst, 1) + 1e-6) * self._interval
        self._force = frozenset(entry.encode() for entry in force)
        self._max_keys = max_keys
        self.clock = clock
        self._full_at: OrderedDict[bytes, float] = OrderedDict()  # key → when its bucket is full again

    @property
    def tracked_keys(self) -> int:
        return len(self._full_at)

    def reason(self, key: bytes, token: bytes, now: float) -> str | None:
        if self._force and (key in self._force or token in self._force):
            return FORCE_LIMITED
        if not self._interval:
            return None
        full_at = self._full_at.get(key)
        if full_at is None:
            full_at = now
            if len(self._full_at) >= self._max_keys:
                self._full_at.popitem(last=False)
        else:
            self._full_at.move_to_end(key)
            if full_at < now:
                full_at = now
        full_at += self._interval  # this event takes one token
        if full_at - now > self._tolerance:
            return RATE_LIMITED  # the bucket is empty: no token taken
        self._full_at[key] = full_at
        return None


class OverflowRouter:
    """Rewrites main-topic records whose key overflows: overflow topic, no key, every header kept."""

    def __init__(self, limiter: OverflowLimiter, main_topic: str, overflow_topic: str) -> None:
        self.limiter = limiter
        self.main_topic = main_topic
        self.overflow_topic = overflow_topic
        self._counters: dict[tuple[bytes | None, str], LocalCounter] = {}  # at most MAX_TOKEN_LABELS + 2

    def route(self, records: Sequence[Record]) -> Sequence[Record]:
        routed: list[Record] | None = None
        reason_of = self.limiter.reason
        main = self.main_topic
        now = self.limiter.clock()
        for index, record in enumerate(records):
            if record.topic != main or record.key is None:
                continue
            headers = record.headers
            # gateway/capture/events.py puts the token header first
            token = headers[0][1] if headers and headers[0][0] == "token" else record.header("token") or b""
            reason = reason_of(record.key, token, now)
            if reason is None:
                continue
            if routed is None:
                routed = list(records)
            if reason == FORCE_LIMITED and FORCE_HEADER not in headers:
                headers += (FORCE_HEADER,)
            routed[index] = Record(self.overflow_topic, None, headers, record.value)
            self._counter(token, reason).inc()
        return records if routed is None else routed

    def _counter(self, token: bytes | None, reason: str) -> LocalCounter:
        counter = self._counters.get((token, reason))
        if counter is None:
            if len(self._counters) >= MAX_TOKEN_LABELS:
                token, label = None, "other"
                counter = self._counters.get((None, reason))
            else:
                label = token.decode(errors="replace")
            if counter is None:
                counter = LocalCounter(metrics.EVENTS_REROUTED_OVERFLOW.labels(label, reason))
                self._counters[(token, reason)] = counter
        return counter
