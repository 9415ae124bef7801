"""What overflow routing (gateway/sinks/overflow.py) costs per event at the edge of the Kafka sink.

    python -m bench.overflow_bench [--events 1000000]

Runs the step KafkaSink.deliver adds (`router.route(records)` when routing is on) on requests of
50 realistic records, CPU time per event, median of 5 runs:
- off: no router (the default), only the `is None` test;
- on, under the limit: 10,000 keys in rotation, none above --overflow-rate 100 (the usual case);
- on, hot key: one key far above the rate, every event rewritten keyless and counted;
- on, key churn: a new key per event, so the LRU of 100,000 keys evicts on every event;
- force list only: 10 forced keys, no rate, none matching.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from gateway.core.record import Record
from gateway.sinks.overflow import OverflowLimiter, OverflowRouter

MAIN, OVERFLOW, TOKEN = "events_plugin_ingestion", "events_plugin_ingestion_overflow", "phc_bench_token"
PER_REQUEST = 50


def record(distinct_id: str) -> Record:
    headers = (("token", TOKEN.encode()), ("distinct_id", distinct_id.encode()), ("timestamp", b"1732900000000"),
               ("event", b"$pageview"), ("uuid", b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
               ("now", b"2024-11-29T17:06:40.000000+00:00"))
    return Record(MAIN, f"{TOKEN}:{distinct_id}".encode(), headers, b"{}")


def requests_of(ids: Callable[[int], str], events: int) -> list[list[Record]]:
    every = [record(ids(n)) for n in range(events)]
    return [every[n : n + PER_REQUEST] for n in range(0, events, PER_REQUEST)]


def run(requests: list[list[Record]], router: OverflowRouter | None) -> float:
    """CPU seconds per event to route every request."""
    route: Callable[[Sequence[Record]], Sequence[Record]] | None = router.route if router else None
    started = time.process_time()
    for records in requests:
        if route is not None:  # what KafkaSink.deliver does
            records = route(records)
    return (time.process_time() - started) / sum(map(len, requests))


def router(rate: float, force: Sequence[str] = ()) -> OverflowRouter:
    return OverflowRouter(OverflowLimiter(rate, 1000, force), MAIN, OVERFLOW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    events = parser.parse_args().events
    rotation = requests_of(lambda n: f"user-{n % 10_000}", events)
    hot = requests_of(lambda n: "hot", events)
    churn = requests_of(lambda n: f"user-{n}", events)
    cases: list[tuple[str, list[list[Record]], Callable[[], OverflowRouter | None]]] = [
        ("off (default)", rotation, lambda: None),
        ("on, under the limit", rotation, lambda: router(100)),
        ("on, hot key (all routed)", hot, lambda: router(100)),
        ("on, key churn (LRU evicts)", churn, lambda: router(100)),
        ("force list only, no match", rotation, lambda: router(0, [f"{TOKEN}:bot-{n}" for n in range(10)])),
    ]
    print(f"{'case':<30} {'µs/event':>9}")
    for name, requests, make in cases:
        figures = [run(requests, make()) for _ in range(5)]
        print(f"{name:<30} {statistics.median(figures) * 1e6:>9.3f}")


if __name__ == "__main__":
    main()
