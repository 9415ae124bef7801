"""`gateway sink` settings, on the same field machinery as `gateway serve` (flags, `GATEWAY_*` env
vars, TOML file, `--help`, `--check`). Shared names come from `gateway.settings.shared`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.settings import shared
from gateway.settings.fields import ConfigError, MiB, choice, command_settings, size

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


@command_settings
@dataclass(frozen=True, slots=True)
class SinkSettings:
    clickhouse: str = field(default=DEFAULT_CLICKHOUSE, metadata={
        "help": "ClickHouse target: chdb://PATH (embedded) or http(s)://[user:pass@]host:8123", "url": True})
    clickhouse_url: str = field(default="", metadata={
        "help": "ClickHouse HTTP URL; overrides --clickhouse", "url": True})
    database: str = field(default="default", metadata={"help": "database of the events table"})
    table: str = field(default="events", metadata={"help": "events table name"})
    init_schema: bool = field(default=False, metadata={
        "help": "create the events table (if missing) and exit"})
    retention_days: int = field(default=0, metadata={
        "help": "TTL in days where the server supports it; 0 = keep forever"})
    kafka_bootstrap_servers: str = shared.kafka_bootstrap_servers(
        "", "the source and the DLQ; empty = drain the spools of --data-dir (embedded mode)")
    topics: tuple[str, ...] = field(default=DEFAULT_TOPICS, metadata={
        "help": "topics to consume (repeatable or comma-separated)", "repeat": True, "split": True})
    group_id: str = field(default="gateway-sink", metadata={"help": "Kafka consumer group"})
    session_timeout_ms: int = field(default=10_000, metadata={"help": "consumer group session timeout"})
    processes: int = field(default=1, metadata={
        "help": "Kafka mode: run this many sink processes in the consumer group, restarted if one crashes"})
    data_dir: Path = shared.data_dir(  # noqa: RUF009 (a field())
        "without Kafka: drain every spool/worker-N of this gateway data dir (also ones that appear later)")
    spool_dir: str = field(default="", metadata={
        "help": "drain this one spool directory (e.g. DATA_DIR/spool/worker-0) instead of Kafka or --data-dir"})
    spool_reader_name: str = field(default="sink", metadata={"help": "name of the persisted spool cursor"})
    spool_encryption_key_file: Path | None = shared.spool_encryption_key_file(  # noqa: RUF009 (a field())
        "keys of an encrypted spool, as gateway serve's")
    dlq_topic: str = field(default=DEFAULT_DLQ_TOPIC, metadata={"help": "dead-letter Kafka topic"})
    dlq_dir: str = field(default="", metadata={
        "help": "dead letters as JSON lines in this directory (default with Kafka: --dlq-topic)",
        "shown_default": "DATA_DIR/sink-dlq, SPOOL_DIR-dlq"})
    batch_rows: int = field(default=100_000, metadata={"help": "flush a batch at this many rows"})
    batch_bytes: int = field(default=64 * MiB, metadata={
        "help": "flush a batch at this many bytes of encoded rows", "parse": size})
    batch_age_ms: int = field(default=1000, metadata={"help": "flush a batch this long after its first message"})
    insert_concurrency: int = field(default=2, metadata={"help": "concurrent inserts (chdb always uses 1)"})
    fetch_max_records: int = field(default=20_000, metadata={"help": "messages per poll"})
    compression: str = field(default="none", metadata={
        "help": "HTTP insert body compression: none | gzip", "parse": choice("none", "gzip")})
    ip_property: str = field(default="set", metadata={
        "help": "$ip from the capture-time client ip: set (overwrite) | if-missing | drop",
        "parse": choice("set", "if-missing", "drop")})
    team_map: str = field(default="", metadata={
        "help": "token→team_id map: token=id,... or JSON object (inline or file path)"})
    strict_teams: bool = field(default=False, metadata={
        "help": "send events with tokens missing from --team-map to the DLQ instead of a hashed team id"})
    metrics_port: int = field(default=0, metadata={"help": "serve Prometheus /metrics on this port (0 = off)"})
    shutdown_timeout: float = shared.shutdown_timeout(60.0, "wait for in-flight batches before exiting")
    log_level: str = shared.log_level()
    log_format: str = shared.log_format()

    def validate(self) -> SinkSettings:
        checks = [
            (self.retention_days >= 0, "retention_days", "must be ≥ 0"),
            (bool(self.topics), "topics", "needs at least one topic"),
            (self.session_timeout_ms > 0, "session_timeout_ms", "must be > 0"),
            (self.processes >= 1, "processes", "must be at least 1"),
            (self.processes == 1 or (bool(self.kafka_bootstrap_servers) and not self.spool_dir), "processes",
             "more than 1 needs Kafka mode (--kafka-bootstrap-servers): a spool has one reader"),
            (self.batch_rows >= 1, "batch_rows", "must be at least 1"),
            (self.batch_bytes >= 1, "batch_bytes", "must be at least 1"),
            (self.batch_age_ms >= 0, "batch_age_ms", "must be ≥ 0"),
            (self.insert_concurrency >= 1, "insert_concurrency", "must be at least 1"),
            (self.fetch_max_records >= 1, "fetch_max_records", "must be at least 1"),
            (0 <= self.metrics_port <= 65535, "metrics_port", "must be 0..65535"),
            (self.shutdown_timeout >= 0, "shutdown_timeout", "must be ≥ 0"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigError(name, problem, value=getattr(self, name))
        target = self.clickhouse_url or self.clickhouse
        if not target.startswith(("chdb://", "http://", "https://")):
            raise ConfigError("clickhouse", "expected chdb://PATH or http(s)://[user:pass@]host:port")
        return replace(self, clickhouse=target) if self.clickhouse_url else self
