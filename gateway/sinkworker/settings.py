"""Sink worker settings: one immutable value built from the CLI flags (or GATEWAY_* env vars)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sinkworker.rows import IpMode

# PostHog's own dead-letter topic name.
DEFAULT_DLQ_TOPIC = "events_plugin_ingestion_dlq"

# Every topic the gateway writes whose events PostHog stores in `events`: analytics and exceptions
# (`$exception` goes through error tracking, then into `events`). Heatmaps, client ingestion warnings
# and replay have tables of their own in PostHog.
DEFAULT_TOPICS = (
    "events_plugin_ingestion",
    "events_plugin_ingestion_historical",
    "events_plugin_ingestion_overflow",
    "error_tracking_events",
)
DEFAULT_CLICKHOUSE = "chdb://gateway-data/chdb"


@dataclass(frozen=True, slots=True)
class SinkSettings:
    clickhouse: str = DEFAULT_CLICKHOUSE  # http(s)://… or chdb://path
    database: str = "default"
    table: str = "events"
    init_schema: bool = False  # create the table and exit
    retention_days: int = 0  # TTL where the server supports it; 0 = keep forever
    kafka_bootstrap_servers: str = "localhost:9092"
    topics: tuple[str, ...] = DEFAULT_TOPICS
    group_id: str = "gateway-sink"
    session_timeout_ms: int = 10_000
    data_dir: str = ""  # drain every main spool of this gateway data dir instead of Kafka
    spool_dir: str = ""  # drain this one spool directory instead of Kafka
    spool_reader_name: str = "sink"
    spool_encryption_key_file: str = ""  # keys of an encrypted spool (else GATEWAY_SPOOL_ENCRYPTION_KEYS)
    dlq_topic: str = DEFAULT_DLQ_TOPIC
    dlq_dir: str = ""  # file DLQ; spool mode default: `<data-dir>/sink-dlq` or `<spool-dir>-dlq`
    batch_rows: int = 100_000
    batch_bytes: int = 64 * 1024 * 1024
    batch_age_ms: int = 1000
    max_in_flight: int = 2
    fetch_max_records: int = 20_000
    compression: str = "none"  # HTTP request bodies: none | gzip
    ip_property: IpMode = IpMode.SET
    team_map: str = ""  # token=id,... or JSON (inline or a file path)
    strict_teams: bool = False  # unknown tokens go to the DLQ instead of a hashed team id
    metrics_port: int = 0  # 0 = no /metrics listener
    shutdown_timeout_s: float = 60.0
    log_level: str = "INFO"
