"""Hot-path metrics counted locally and folded: the exported samples equal direct prometheus updates."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.metrics.export import LocalCounter, LocalGauge, LocalHistogram, fold_local_metrics

BUCKETS = (0.001, 0.01, 0.1, 1, 10)
AMOUNTS = (0, 0.0005, 0.001, 0.0011, 0.01, 0.5, 1, 9.99, 10, 11, 1e9, -1)


def test_folded_histogram_and_counter_export_what_direct_updates_export() -> None:
    direct, local = CollectorRegistry(), CollectorRegistry()
    histograms = [Histogram("h", "h", ["route"], buckets=BUCKETS, registry=r).labels("events") for r in (direct, local)]
    counters = [Counter("c", "c", ["route"], registry=r).labels("events") for r in (direct, local)]
    local_histogram, local_counter = LocalHistogram(histograms[1]), LocalCounter(counters[1])
    for _ in range(3):
        for amount in AMOUNTS:
            histograms[0].observe(amount)
            local_histogram.observe(amount)
            counters[0].inc(2)
            local_counter.inc(2)
        assert generate_latest(local) != generate_latest(direct)  # nothing exported before the fold
        fold_local_metrics()
        assert _without_created(generate_latest(local)) == _without_created(generate_latest(direct))
    fold_local_metrics()  # nothing new: nothing changes
    assert _without_created(generate_latest(local)) == _without_created(generate_latest(direct))


def test_folded_gauge_exports_what_direct_updates_export() -> None:
    direct, local = CollectorRegistry(), CollectorRegistry()
    gauges = [Gauge("g", "g", registry=r) for r in (direct, local)]
    local_gauge = LocalGauge(gauges[1])
    for up, down in ((5, 2), (1, 4), (3, 3)):
        gauges[0].inc(up)
        gauges[0].dec(down)
        local_gauge.inc(up)
        local_gauge.dec(down)
        fold_local_metrics()
        assert generate_latest(local) == generate_latest(direct)


def _without_created(text: bytes) -> list[bytes]:
    return [line for line in text.splitlines() if b"_created" not in line]
