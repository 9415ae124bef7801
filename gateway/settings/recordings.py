"""`gateway recordings` settings (sink, export, expire), on the same field machinery as `gateway sink`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.settings import shared
from gateway.settings.fields import ConfigError, MiB, command_settings, size
from gateway.settings.sink import DEFAULT_CLICKHOUSE

DEFAULT_RETENTION_DAYS = 30


@command_settings
@dataclass(frozen=True, slots=True)
class RecordingsSettings:
    recordings_storage: str = field(default="", metadata={
        "help": "where blocks go: s3://BUCKET/PREFIX or a directory", "shown_default": "DATA_DIR/recordings"})
    s3_endpoint_url: str = field(default="", metadata={
        "help": "S3-compatible endpoint (MinIO, Ceph, R2 …); empty = AWS", "url": True})
    s3_region: str = field(default="us-east-1", metadata={"help": "S3 region"})
    s3_access_key_id: str = field(default="", metadata={
        "help": "S3 access key; empty = botocore's chain (AWS_* env, profile, instance role)"})
    s3_secret_access_key: str = field(default="", metadata={"help": "S3 secret key", "secret": True})
    clickhouse: str = field(default=DEFAULT_CLICKHOUSE, metadata={
        "help": "ClickHouse for session_replay_events: chdb://PATH or http(s)://[user:pass@]host:8123", "url": True})
    database: str = field(default="default", metadata={"help": "database of the session_replay_events table"})
    replay_table: str = field(default="session_replay_events", metadata={"help": "recordings metadata table name"})
    team_map: str = field(default="", metadata={
        "help": "token→team_id map: token=id,... or JSON object (inline or file path), as gateway sink's"})
    kafka_bootstrap_servers: str = shared.kafka_bootstrap_servers(
        "", "the replay topic; empty = read the spools of --data-dir (embedded mode)")
    replay_topic: str = field(default=shared.REPLAY_TOPIC, metadata={"help": "replay topic"})
    recordings_group_id: str = field(default="gateway-recordings", metadata={"help": "Kafka consumer group"})
    session_timeout_ms: int = field(default=10_000, metadata={"help": "consumer group session timeout"})
    data_dir: Path = shared.data_dir(  # noqa: RUF009 (a field())
        "the gateway's data dir: its spools (embedded mode), the default storage and DLQ")
    recordings_reader_name: str = field(default="recordings", metadata={"help": "name of the persisted spool cursor"})
    spool_encryption_key_file: Path | None = shared.spool_encryption_key_file(  # noqa: RUF009 (a field())
        "keys of an encrypted spool, as gateway serve's")
    recordings_dlq_topic: str = field(default="session_recording_snapshot_item_events_dlq", metadata={
        "help": "dead-letter Kafka topic"})
    recordings_dlq_dir: str = field(default="", metadata={
        "help": "dead letters as JSON lines in this directory (default with Kafka: --dlq-topic)",
        "shown_default": "DATA_DIR/recordings-dlq"})
    block_max_bytes: int = field(default=8 * MiB, metadata={
        "help": "store a session's block at this many uncompressed bytes (a larger session is split)",
        "parse": size})
    block_max_age: float = field(default=10.0, metadata={"help": "seconds after a block's first item to store it"})
    buffer_max_bytes: int = field(default=256 * MiB, metadata={
        "help": "all sessions' unstored bytes together; above it the largest block is stored early", "parse": size})
    recordings_fetch_max_records: int = field(default=500, metadata={"help": "messages per poll"})
    recordings_retention_days: int = field(default=DEFAULT_RETENTION_DAYS, metadata={
        "help": "delete blocks and rows older than this many days (0 = keep forever); separate from events"})
    recordings_retention_interval: float = field(default=3600.0, metadata={
        "help": "seconds between retention runs of the sink (0 = only `gateway recordings expire`)"})
    recordings_http_port: int = field(default=0, metadata={
        "help": "serve /ready (storage and ClickHouse reachable) and /metrics on this port (0 = off)"})
    log_level: str = shared.log_level()
    log_format: str = shared.log_format()

    def validate(self) -> RecordingsSettings:
        checks = [
            (self.block_max_bytes >= 1024, "block_max_bytes", "must be at least 1K"),
            (self.buffer_max_bytes >= self.block_max_bytes, "buffer_max_bytes", "must be ≥ block_max_bytes"),
            (self.block_max_age >= 0, "block_max_age", "must be ≥ 0"),
            (self.recordings_fetch_max_records >= 1, "recordings_fetch_max_records", "must be at least 1"),
            (self.recordings_retention_days >= 0, "recordings_retention_days", "must be ≥ 0"),
            (self.recordings_retention_interval >= 0, "recordings_retention_interval", "must be ≥ 0"),
            (0 <= self.recordings_http_port <= 65535, "recordings_http_port", "must be 0..65535"),
            (self.session_timeout_ms > 0, "session_timeout_ms", "must be > 0"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigError(name, problem, value=getattr(self, name))
        if not self.clickhouse.startswith(("chdb://", "http://", "https://")):
            raise ConfigError("clickhouse", "expected chdb://PATH or http(s)://[user:pass@]host:port")
        if self.recordings_storage.startswith("s3://") and not self.recordings_storage.removeprefix("s3://").split("/")[0]:
            raise ConfigError("recordings_storage", "s3:// needs a bucket: s3://BUCKET/PREFIX",
                              value=self.recordings_storage)
        if self.recordings_storage:
            return self
        return replace(self, recordings_storage=str(self.data_dir / "recordings"))
