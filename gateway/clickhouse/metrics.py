"""Metrics of the ClickHouse writers (exported by the processes that write: the sink worker)."""

from __future__ import annotations

from prometheus_client import Gauge

CLICKHOUSE_REPLICA_UP = Gauge(
    "gateway_sink_clickhouse_replica_up", "1 while a ClickHouse replica answers, 0 after it failed", ["replica"]
)
