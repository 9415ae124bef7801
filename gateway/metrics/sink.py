"""Metrics of the sink worker (`gateway sink`): a plain registry per sink process, served on
`--metrics-port` (plus the process index with `--processes`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_CONSUMED = Counter(
    "gateway_sink_messages_consumed_total", "Messages read from the source", ["topic"]
)
ROWS_INSERTED = Counter("gateway_sink_rows_inserted_total", "Rows stored in ClickHouse (rate = rows/s)")
ROWS_SKIPPED_REPLAY = Counter(
    "gateway_sink_rows_skipped_replay_total", "Re-read messages skipped because their row was already stored"
)
CHECK_EVENTS_DROPPED = Counter(
    "gateway_sink_check_events_dropped_total", "`gateway check` events read from the source and not stored"
)
MESSAGES_SKIPPED = Counter(
    "gateway_sink_messages_skipped_total",
    "Messages read and skipped as not for the events table: a spool's records of topics outside --topics "
    "(heatmaps, client warnings, replay) and $snapshot_items (left to `gateway recordings sink`)",
    ["topic"],
)
DLQ_MESSAGES = Counter(
    "gateway_sink_dlq_messages_total", "Messages sent to the dead-letter queue", ["reason"]
)
INSERT_ERRORS = Counter("gateway_sink_insert_errors_total", "Failed insert attempts", ["kind"])
READY = Gauge("gateway_sink_ready", "1 while inserts succeed; 0 from a failed insert until one succeeds again")
INSERT_SECONDS = Histogram(
    "gateway_sink_insert_seconds",
    "Latency of one successful insert",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_ROWS = Histogram(
    "gateway_sink_batch_rows",
    "Rows per flushed batch",
    buckets=(1, 10, 100, 1_000, 10_000, 50_000, 100_000, 250_000, 1_000_000),
)
BATCH_BYTES = Histogram(
    "gateway_sink_batch_bytes",
    "Uncompressed RowBinary bytes per flushed batch",
    buckets=(1e3, 1e4, 1e5, 1e6, 4e6, 16e6, 64e6, 256e6),
)
INSERTS_IN_FLIGHT = Gauge("gateway_sink_inserts_in_flight", "Batches submitted and not yet stored")
CONSUMER_LAG = Gauge(
    "gateway_sink_consumer_lag",
    "Messages not yet stored: end offset (high watermark) minus the offset stored and committed",
    ["topic", "partition"],
)
COMMITS = Counter("gateway_sink_commits_total", "Offset commits", ["result"])
INGESTION_LAG = Histogram(
    "gateway_sink_ingestion_lag_seconds",
    "Capture (Kafka message time) to stored in ClickHouse, sampled per batch (alert: p95 > 30 s)",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
)
