"""ClickHouse replica health (gateway/clickhouse/replicas.py), exported by the processes that import the
writers: the sink worker, and `gateway serve` (its GDPR endpoint deletes through them)."""

from __future__ import annotations

from prometheus_client import Gauge

CLICKHOUSE_REPLICA_UP = Gauge(
    "gateway_sink_clickhouse_replica_up", "1 while a ClickHouse replica answers, 0 after it failed", ["replica"],
    multiprocess_mode="livemin",  # across processes: 0 if any live one saw the replica fail
)
