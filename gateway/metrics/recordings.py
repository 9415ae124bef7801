"""Metrics of `gateway recordings sink`, served on `--recordings-http-port`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONSUMER_LAG = Gauge(
    "recordings_consumer_lag", "replay-topic messages not yet stored (end offset minus committed offset)", ["partition"]
)
ITEMS_STORED = Counter("recordings_snapshot_items_stored_total", "rrweb events stored in blocks")
BLOCKS_STORED = Counter("recordings_blocks_stored_total", "blocks written to storage")
BLOCK_BYTES = Counter("recordings_block_bytes_total", "compressed bytes written to storage")
ITEMS_SKIPPED = Counter("recordings_items_skipped_replay_total", "re-read messages already stored (after a crash)")
DEAD_LETTERS = Counter("recordings_dead_letters_total", "messages or items sent to the DLQ", ["reason"])
STORE_FAILURES = Counter("recordings_store_failures_total", "failed block or metadata writes (retried)", ["what"])
READY = Gauge("recordings_ready", "1 while storage and ClickHouse accept writes")
BUFFERED_BYTES = Gauge("recordings_buffered_bytes", "uncompressed bytes held for blocks not yet stored")
