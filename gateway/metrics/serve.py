"""Metrics of `gateway serve` (see gateway/metrics/__init__.py for the other processes), named after what
operators alert on.

With `--workers` above 1, `gateway serve` runs prometheus-client in multiprocess mode
(gateway/metrics/multiproc.py, gateway/metrics/export.py) so a scrape of any worker shows the whole
process group: counters and histograms are summed over workers, gauges over live workers (`livesum`)
or their maximum (`livemax`, for states), so no series outlives the worker that set it. No gauge uses
`set_function` (invisible to other processes): per-worker values are sampled by
`export.GaugeSampler`, spool disk usage is read at scrape time by `gateway.spool.collector.SpoolCollector`.
Hot paths precompute `.labels()` or count locally (`export.LocalCounter`, `LocalHistogram`, folded in
about once a second).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

HTTP_REQUESTS = Counter("gateway_http_requests", "HTTP requests answered", ["route", "status"])
HTTP_LATENCY = Histogram(
    "gateway_http_request_duration_seconds",
    "Time from request start to response",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REQUEST_SIZE = Histogram(
    "capture_request_size_bytes",
    "Encoded request body size",
    ["route"],
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
)
EVENTS_RECEIVED = Counter("capture_events_received", "Events parsed from valid requests", ["route"])
EVENTS_INGESTED = Counter("capture_events_ingested", "Events acknowledged to clients (durable)", ["route"])
EVENTS_DROPPED = Counter("capture_events_dropped", "Events not stored, by cause", ["cause"])
REQUEST_ERRORS = Counter("capture_request_errors", "Requests rejected, by PostHog error code", ["code"])
EVENT_BATCH_SIZE = Histogram(
    "capture_event_batch_size",
    "Records per accepted request",
    ["route"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)

KAFKA_PRODUCE_LATENCY = Histogram(
    "gateway_kafka_produce_duration_seconds",
    "Time from a request's records entering the producer to Kafka's ack (acks=all)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KAFKA_PRODUCE_ERRORS = Counter("gateway_kafka_produce_errors", "Failed Kafka produce attempts")
KAFKA_SPOOLING = Gauge(
    "gateway_kafka_spooling",
    "1 while records go to the local spool instead of Kafka (in any live worker)",
    multiprocess_mode="livemax",
)
KAFKA_QUEUE_DEPTH = Gauge(
    "gateway_kafka_queue_depth",
    "Records handed to the Kafka producer and not yet acknowledged or failed, all workers",
    multiprocess_mode="livesum",
)
EVENTS_REROUTED_OVERFLOW = Counter(
    "capture_events_rerouted_overflow",
    "Main-topic events sent keyless to the overflow topic (--overflow-*), by token and reason "
    "(rate_limited, force_limited)",
    ["token", "reason"],
)
SPOOLED_RECORDS = Counter(
    "gateway_spooled_records", "Records written to the spool because Kafka was unavailable"
)
SPOOL_REPLAYED_RECORDS = Counter("gateway_spool_replayed_records", "Spooled records replayed into Kafka")
SPOOL_ERRORS = Counter(
    "gateway_spool_errors",
    "Spool appends refused, each answered 503 + Retry-After, by spool kind (main, upstream) and reason: "
    "full (--spool-max-bytes), no_space (disk full or quota), read_only, io_error, closed",
    ["kind", "reason"],
)


def spool_gauges() -> list[GaugeMetricFamily]:
    """Spool disk usage and reader lag, fresh for each scrape: gateway/spool/collector.py fills them from disk.
    Labels: `kind` (main, upstream), `spool` (worker-N), and `reader` for lag and idle time."""
    return [
        GaugeMetricFamily("gateway_spool_bytes", "Segment bytes on disk, per worker spool", labels=["kind", "spool"]),
        GaugeMetricFamily(
            "gateway_spool_max_bytes", "Spool size bound (--spool-max-bytes); full → 503", labels=["kind", "spool"]
        ),
        GaugeMetricFamily("gateway_spool_segments", "Segment files, per worker spool", labels=["kind", "spool"]),
        GaugeMetricFamily(
            "gateway_spool_reader_lag_bytes",
            "Spooled bytes a reader (kafka, upstream = replay; sink) has not consumed yet",
            labels=["kind", "spool", "reader"],
        ),
        GaugeMetricFamily(
            "gateway_spool_reader_idle_seconds",
            "Seconds since a reader last committed progress (with lag > 0: replay stalled)",
            labels=["kind", "spool", "reader"],
        ),
    ]


# Edge policy (gateway/edge)
RATE_LIMITED = Counter(
    "gateway_rate_limited", "Requests refused with 429, by route and what was limited (ip, token)",
    ["route", "by"],
)
RATE_LIMIT_SYNC_ERRORS = Counter(
    "gateway_rate_limit_sync_errors", "Failed syncs with the shared rate-limit storage (limits failed open)"
)
UNTRUSTED_FORWARDED = Counter(
    "gateway_untrusted_forwarded_requests",
    "Requests with X-Forwarded-For/Forwarded while no proxy is trusted (set --trusted-proxy-hops or -cidrs)",
)
IN_FLIGHT = Gauge(
    "gateway_in_flight_requests",
    "Requests being handled now, all workers (each bounded by --max-in-flight; sampled each second)",
    multiprocess_mode="livesum",
)

# Reverse-proxy mode (gateway/proxy, gateway/upstream, gateway/sinks/upstream.py)
UPSTREAM_LATENCY = Histogram(
    "gateway_upstream_request_duration_seconds",
    "Time for one upstream request, by route family and outcome (HTTP status, timeout, connect_error)",
    ["route", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors", "Failed upstream requests, by route family and cause", ["route", "cause"]
)
UPSTREAM_CIRCUIT_STATE = Gauge(
    "gateway_upstream_circuit_state", "Circuit breaker per upstream host: 0 closed, 1 open, 2 half-open",
    ["upstream"],
    multiprocess_mode="livemax",
)
PROXY_CACHE = Counter(
    "gateway_proxy_cache", "Asset/remote-config cache lookups by result (hit, miss, stale, revalidated)",
    ["result"],
)
PROXY_CACHE_BYTES = Gauge(
    "gateway_proxy_cache_bytes", "Bytes held by the asset/remote-config caches of all workers",
    multiprocess_mode="livesum",
)
UPSTREAM_FORWARDED_EVENTS = Counter(
    "gateway_upstream_forwarded_events", "Events (or pass-through requests) acknowledged by the upstream",
    ["kind"],
)
UPSTREAM_SPOOLING = Gauge(
    "gateway_upstream_spooling", "1 while captured events go to the local spool instead of the upstream",
    multiprocess_mode="livemax",
)
UPSTREAM_SPOOLED_RECORDS = Counter(
    "gateway_upstream_spooled_records", "Records spooled because the upstream was unavailable or slow"
)
UPSTREAM_REPLAYED_RECORDS = Counter(
    "gateway_upstream_replayed_records", "Spooled records replayed to the upstream"
)

# Local flag evaluation (gateway/flags)
FLAGS_ANSWERED = Counter(
    "gateway_flags_answered", "POST /flags and /decide answers by source (local, upstream) with local evaluation on",
    ["source"],
)
FLAGS_LOCAL_LATENCY = Histogram(
    "gateway_flags_local_evaluation_duration_seconds",
    "Time to decode a flags request and evaluate it locally (answered or handed to the upstream)",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
)

# Privacy rules at the edge (gateway/privacy)
PRIVACY_ACTIONS = Counter(
    "gateway_privacy_actions", "Privacy rule applications (events, properties or values, per rule)", ["rule"]
)

# --- Operations (gateway/logs.py, gateway/reload.py)
CONFIG_RELOADS = Counter("gateway_config_reloads", "SIGHUP policy reloads, by result (ok, error)", ["result"])
