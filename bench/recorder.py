"""Measurements of one load-generator process, and their merge across processes.

Latencies go into HDR histograms (microseconds) overall and per one-second bucket, so percentiles
merge exactly across processes; status codes and errors are counted by name; the uuids of events in
requests answered 200 can be appended to an acked log.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 120_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


@dataclass
class Bucket:
    """Requests that completed during one second of the run."""

    requests: int = 0
    ok: int = 0
    events_acked: int = 0
    histogram: HdrHistogram = field(default_factory=new_histogram)


class Recorder:
    """Collects the outcome of every request of one process (not thread-safe; one event loop)."""

    def __init__(self, start: float, acked_log: IO[str] | None = None) -> None:
        self.start = start
        self.histogram = new_histogram()
        self.statuses: Counter[str] = Counter()
        self.requests = 0
        self.events_sent = 0
        self.events_acked = 0
        self.bytes_sent = 0
        self.skipped = 0
        self.max_lag_s = 0.0
        self.end = start
        self.buckets: list[Bucket] = []
        self._acked_log = acked_log

    def record(self, scheduled: float, done: float, status: str, uuids: list[str], body_bytes: int) -> None:
        """Count one finished request; latency runs from its scheduled send time (no coordinated omission)."""
        latency_us = max(LOWEST_US, min(HIGHEST_US, round((done - scheduled) * 1e6)))
        self.histogram.record_value(latency_us)
        self.statuses[status] += 1
        self.requests += 1
        self.events_sent += len(uuids)
        self.bytes_sent += body_bytes
        self.end = max(self.end, done)
        bucket = self._bucket(done)
        bucket.requests += 1
        bucket.histogram.record_value(latency_us)
        if status == "200":
            bucket.ok += 1
            bucket.events_acked += len(uuids)
            self.events_acked += len(uuids)
            if self._acked_log is not None and uuids:
                self._acked_log.write("\n".join(uuids) + "\n")

    def record_lag(self, lag_s: float) -> None:
        """Note how late the open-loop scheduler fired: a sign the generator itself is saturated."""
        self.max_lag_s = max(self.max_lag_s, lag_s)

    def _bucket(self, when: float) -> Bucket:
        index = max(0, int(when - self.start))
        while len(self.buckets) <= index:
            self.buckets.append(Bucket())
        return self.buckets[index]

    def export(self, cpu_s: float) -> dict[str, Any]:
        """A picklable snapshot for the parent process (histograms encoded)."""
        return {
            "histogram": self.histogram.encode(),
            "statuses": dict(self.statuses),
            "requests": self.requests,
            "events_sent": self.events_sent,
            "events_acked": self.events_acked,
            "bytes_sent": self.bytes_sent,
            "skipped": self.skipped,
            "max_lag_s": self.max_lag_s,
            "elapsed_s": self.end - self.start,
            "start": self.start,
            "cpu_s": cpu_s,
            "buckets": [
                (b.requests, b.ok, b.events_acked, b.histogram.encode() if b.requests else None)
                for b in self.buckets
            ],
        }


@dataclass
class RunSummary:
    """All processes' measurements merged; the figures every report prints."""

    config: dict[str, Any]
    histogram: HdrHistogram
    statuses: Counter[str]
    requests: int
    events_sent: int
    events_acked: int
    bytes_sent: int
    skipped: int
    max_lag_s: float
    elapsed_s: float
    cpu_s: list[float]
    timeline: list[dict[str, float]]
    started: float = 0.0  # time.monotonic() of the first generator's start: timeline second 0

    @property
    def req_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def events_per_s(self) -> float:
        """Events in requests answered 200, per second."""
        return self.events_acked / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, percentile: float) -> float:
        return self.histogram.get_value_at_percentile(percentile) / 1000 if self.requests else 0.0

    @property
    def max_ms(self) -> float:
        return self.histogram.get_max_value() / 1000 if self.requests else 0.0

    @property
    def cpu_busy(self) -> list[float]:
        """Each generator process' CPU time over the run time: near 1.0 means it was the bottleneck."""
        return [cpu / self.elapsed_s if self.elapsed_s else 0.0 for cpu in self.cpu_s]


def merge(config: dict[str, Any], exports: list[dict[str, Any]]) -> RunSummary:
    """Add up the processes' exports into one RunSummary."""
    histogram = new_histogram()
    statuses: Counter[str] = Counter()
    per_second: list[Bucket] = []
    for export in exports:
        histogram.add(HdrHistogram.decode(export["histogram"]))
        statuses.update(export["statuses"])
        for index, (requests, ok, acked, encoded) in enumerate(export["buckets"]):
            while len(per_second) <= index:
                per_second.append(Bucket())
            bucket = per_second[index]
            bucket.requests += requests
            bucket.ok += ok
            bucket.events_acked += acked
            if encoded is not None:
                bucket.histogram.add(HdrHistogram.decode(encoded))
    timeline = [
        {
            "second": index,
            "requests": b.requests,
            "ok": b.ok,
            "events_acked": b.events_acked,
            "p50_ms": b.histogram.get_value_at_percentile(50) / 1000 if b.requests else 0.0,
            "p99_ms": b.histogram.get_value_at_percentile(99) / 1000 if b.requests else 0.0,
            "max_ms": b.histogram.get_max_value() / 1000 if b.requests else 0.0,
        }
        for index, b in enumerate(per_second)
    ]
    return RunSummary(
        config=config,
        histogram=histogram,
        statuses=statuses,
        requests=sum(e["requests"] for e in exports),
        events_sent=sum(e["events_sent"] for e in exports),
        events_acked=sum(e["events_acked"] for e in exports),
        bytes_sent=sum(e["bytes_sent"] for e in exports),
        skipped=sum(e["skipped"] for e in exports),
        max_lag_s=max((e["max_lag_s"] for e in exports), default=0.0),
        elapsed_s=max((e["elapsed_s"] for e in exports), default=0.0),
        cpu_s=[e["cpu_s"] for e in exports],
        timeline=timeline,
        started=min((e["start"] for e in exports), default=0.0),
    )
