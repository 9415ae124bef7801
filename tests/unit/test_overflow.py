"""Overflow routing (gateway/sinks/overflow.py): token bucket math on a fake clock, the force list, the
bounded key table, and how records are rewritten and counted."""

from __future__ import annotations

import pytest

from gateway.core.record import Record
from gateway.metrics import serve as metrics
from gateway.metrics.export import fold_local_metrics
from gateway.settings import ServeSettings
from gateway.sinks.factory import overflow_router
from gateway.sinks.overflow import FORCE_LIMITED, MAX_TOKEN_LABELS, RATE_LIMITED, OverflowLimiter, OverflowRouter

MAIN, OVERFLOW = "events_plugin_ingestion", "events_plugin_ingestion_overflow"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(token: str, distinct_id: str, topic: str = MAIN, value: bytes = b"{}") -> Record:
    headers = (("token", token.encode()), ("distinct_id", distinct_id.encode()), ("uuid", b"u-1"))
    return Record(topic, f"{token}:{distinct_id}".encode(), headers, value)


def decisions(limiter: OverflowLimiter, key: bytes, count: int) -> list[str | None]:
    return [limiter.reason(key, b"phc_a", limiter.clock()) for _ in range(count)]


def test_burst_passes_then_the_rest_overflows() -> None:
    clock = FakeClock()
    limiter = OverflowLimiter(rate=10, burst=5, clock=clock)
    assert decisions(limiter, b"phc_a:hot", 8) == [None] * 5 + [RATE_LIMITED] * 3


def test_bucket_refills_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = FakeClock()
    limiter = OverflowLimiter(rate=10, burst=5, clock=clock)
    decisions(limiter, b"phc_a:k", 5)
    clock.now += 0.1  # one token back
    assert decisions(limiter, b"phc_a:k", 2) == [None, RATE_LIMITED]
    clock.now += 0.35  # three and a half tokens back: three whole events
    assert decisions(limiter, b"phc_a:k", 4) == [None, None, None, RATE_LIMITED]
    clock.now += 3600  # idle for an hour: the bucket holds `burst`, not more
    assert decisions(limiter, b"phc_a:k", 6) == [None] * 5 + [RATE_LIMITED]


def test_overflowed_events_take_no_token() -> None:
    """A key sending far above the rate still gets `rate` events per second through, not zero."""
    clock = FakeClock()
    limiter = OverflowLimiter(rate=100, burst=10, clock=clock)
    passed = 0
    for _ in range(2000):  # 2000 events/s for 1 s
        clock.now += 0.0005
        passed += limiter.reason(b"phc_a:hot", b"phc_a", clock.now) is None
    assert 100 + 10 - 1 <= passed <= 100 + 10 + 1


def test_keys_have_their_own_buckets() -> None:
    limiter = OverflowLimiter(rate=1, burst=2, clock=FakeClock())
    assert decisions(limiter, b"phc_a:one", 3) == [None, None, RATE_LIMITED]
    assert decisions(limiter, b"phc_a:two", 2) == [None, None]


def test_force_list_matches_a_key_or_a_whole_token_and_works_without_a_rate() -> None:
    limiter = OverflowLimiter(rate=0, burst=1, force=["phc_a:bot", "phc_b"], clock=FakeClock())
    assert limiter.reason(b"phc_a:bot", b"phc_a", 0.0) == FORCE_LIMITED
    assert limiter.reason(b"phc_a:human", b"phc_a", 0.0) is None
    assert limiter.reason(b"phc_b:anyone", b"phc_b", 0.0) == FORCE_LIMITED
    assert all(limiter.reason(b"phc_c:x", b"phc_c", 0.0) is None for _ in range(10_000))  # rate 0: never limited
    assert limiter.tracked_keys == 0


def test_tracked_keys_are_capped_and_the_least_recently_seen_go_first() -> None:
    clock = FakeClock()
    limiter = OverflowLimiter(rate=1, burst=2, max_keys=100, clock=clock)
    decisions(limiter, b"phc_a:hot", 2)  # bucket empty
    for n in range(10_000):
        limiter.reason(f"phc_a:user-{n}".encode(), b"phc_a", clock.now)
        if n % 50 == 0:
            assert limiter.reason(b"phc_a:hot", b"phc_a", clock.now) == RATE_LIMITED  # recently seen: still tracked
        assert limiter.tracked_keys <= 100
    assert limiter.tracked_keys == 100
    assert limiter.reason(b"phc_a:user-0", b"phc_a", clock.now) is None  # evicted long ago: a full bucket again


def test_router_rewrites_only_overflowing_main_records_keyless_with_every_header() -> None:
    router = OverflowRouter(OverflowLimiter(rate=1, burst=1, clock=FakeClock()), MAIN, OVERFLOW)
    records = [
        record("phc_r1", "hot"),
        record("phc_r1", "hot"),  # over the limit
        record("phc_r1", "hot", topic="error_tracking_events"),  # never routed
        record("phc_r1", "hot", topic="events_plugin_ingestion_historical"),
        record("phc_r1", "calm"),
    ]
    routed = router.route(records)
    assert routed[0] == records[0] and routed[4] == records[4]
    assert routed[2:4] == records[2:4]
    assert routed[1] == Record(OVERFLOW, None, records[1].headers, records[1].value)
    assert records[1].topic == MAIN  # the caller's list is left alone


def test_router_returns_the_same_list_when_nothing_overflows() -> None:
    router = OverflowRouter(OverflowLimiter(rate=1000, burst=1000, clock=FakeClock()), MAIN, OVERFLOW)
    records = [record("phc_r2", f"user-{n}") for n in range(10)]
    assert router.route(records) is records


def test_forced_records_get_posthogs_skip_person_processing_header() -> None:
    router = OverflowRouter(OverflowLimiter(rate=0, burst=1, force=["phc_r3:bot"]), MAIN, OVERFLOW)
    routed = router.route([record("phc_r3", "bot")])
    assert routed[0].key is None and routed[0].topic == OVERFLOW
    assert routed[0].headers == (*record("phc_r3", "bot").headers, ("force_disable_person_processing", b"true"))


def counted(token: str, reason: str) -> float:
    fold_local_metrics()
    return metrics.EVENTS_REROUTED_OVERFLOW.labels(token, reason)._value.get()


def test_routed_events_are_counted_by_token_and_reason() -> None:
    router = OverflowRouter(OverflowLimiter(rate=1, burst=1, force=["phc_r4:bot"], clock=FakeClock()), MAIN, OVERFLOW)
    before_rate, before_force = counted("phc_r4", RATE_LIMITED), counted("phc_r4", FORCE_LIMITED)
    router.route([record("phc_r4", "hot") for _ in range(5)] + [record("phc_r4", "bot")] * 2)
    assert counted("phc_r4", RATE_LIMITED) - before_rate == 4
    assert counted("phc_r4", FORCE_LIMITED) - before_force == 2


def test_token_labels_are_bounded() -> None:
    router = OverflowRouter(OverflowLimiter(rate=0, burst=1, force=[f"phc_many{n}" for n in range(1100)]),
                            MAIN, OVERFLOW)
    before = counted("other", FORCE_LIMITED)
    router.route([record(f"phc_many{n}", "x") for n in range(1100)])
    assert counted("other", FORCE_LIMITED) - before == 1100 - MAX_TOKEN_LABELS


@pytest.mark.parametrize(("overrides", "on"), [
    ({}, False),
    ({"overflow_rate": 100.0}, True),
    ({"overflow_force": ("phc_x:bot",)}, True),
])
def test_routing_is_off_unless_a_rate_or_a_forced_key_is_set(overrides: dict, on: bool) -> None:
    router = overflow_router(ServeSettings(kafka_bootstrap_servers="127.0.0.1:9092", **overrides).validate())
    assert (router is not None) == on
    if router is not None:
        assert (router.main_topic, router.overflow_topic) == (MAIN, OVERFLOW)
