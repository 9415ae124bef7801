"""`gateway sink` settings, on the same field machinery as `gateway serve` (flags, `GATEWAY_*` env
vars, TOML file, `--help`, `--check`). Shared names come from `gateway.settings.shared`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
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
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TIME_FORMS = "ISO 8601 (2026-12-01T10:00:00Z, 2026-12-01; UTC unless an offset is given) or epoch seconds"


def parse_time(text: str) -> datetime:
    """A `--from`/`--to` time: ISO 8601 (naive = UTC) or epoch seconds; ValueError otherwise."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return datetime.fromtimestamp(float(text), UTC)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@command_settings
@dataclass(frozen=True, slots=True)
class SinkSettings:
    clickhouse: str = field(default=DEFAULT_CLICKHOUSE, metadata={
        "help": "ClickHouse target: chdb://PATH (embedded) or http(s)://[user:pass@]host:8123", "url": True})
    clickhouse_url: tuple[str, ...] = field(default=(), metadata={
        "help": "ClickHouse HTTP URL; overrides --clickhouse. Several (repeatable or comma-separated): "
        "replicas of one shard, failed over in order (needs --cluster)", "url": True, "repeat": True, "split": True})
    cluster: str = field(default="", metadata={
        "help": "ClickHouse cluster (remote_servers) of the replicas: replicated tables, created ON CLUSTER"})
    insert_quorum: int = field(default=0, metadata={
        "help": "--cluster: acknowledge an insert (and commit its offsets) only once this many replicas hold it; "
                "inserts block while fewer are up, one insert at a time on ClickHouse < 21.1; 0 = off"})
    database: str = field(default="default", metadata={"help": "database of the events table"})
    table: str = field(default="events", metadata={
        "help": "events table: NAME or DATABASE.NAME (letters, digits, _)"})
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
    replay_topic: str = field(default=shared.REPLAY_TOPIC, metadata={
        "help": "spools: the session recordings' topic (gateway serve's --topic-replay), kept for `gateway "
                "recordings sink` until it has read them"})
    spool_encryption_key_file: Path | None = shared.spool_encryption_key_file(  # noqa: RUF009 (a field())
        "keys of an encrypted spool, as gateway serve's")
    dlq_topic: str = field(default=DEFAULT_DLQ_TOPIC, metadata={"help": "dead-letter Kafka topic"})
    dlq_dir: str = field(default="", metadata={
        "help": "dead letters as JSON lines in this directory (default with Kafka: --dlq-topic)",
        "shown_default": "DATA_DIR/sink-dlq, SPOOL_DIR-dlq"})
    batch_rows: int = field(default=100_000, metadata={"help": "flush a batch at this many rows"})
    batch_bytes: int = field(default=64 * MiB, metadata={
        "help": "flush a batch at this many bytes of encoded rows", "parse": size})
    batch_age_ms: int = field(default=1000, metadata={
        "help": "flush a batch this long after its first message (not while a backlog fills it)"})
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
    rebuild: bool = field(default=False, metadata={
        "help": "rebuild --table from Kafka: read every partition from --from to --to (or to its end at start) "
                "with the consumer group GROUP_ID-rebuild, then exit"})
    rebuild_from: str = field(default="", metadata={
        "help": f"--rebuild: first event time to read; {TIME_FORMS}", "aliases": ("--from",)})
    rebuild_to: str = field(default="", metadata={
        "help": "--rebuild: stop before events written at or after this time (default: the end at start)",
        "aliases": ("--to",)})
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
            (self.team_map or not self.strict_teams, "strict_teams",
             "needs --team-map: without one every token is unknown and every event goes to the DLQ"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigError(name, problem, value=getattr(self, name))
        for url in self.clickhouse_url:
            if not url.startswith(("http://", "https://")):
                raise ConfigError("clickhouse_url", "expected http(s)://[user:pass@]host:port", value=url)
        if len(self.clickhouse_url) > 1 and not self.cluster:
            raise ConfigError("clickhouse_url", "several URLs are replicas of a cluster: give --cluster NAME too")
        self._check_quorum()
        settings = self._checked_rebuild()._split_table()
        target = settings.clickhouse_url[0] if settings.clickhouse_url else settings.clickhouse
        if not target.startswith(("chdb://", "http://", "https://")):
            raise ConfigError("clickhouse", "expected chdb://PATH or http(s)://[user:pass@]host:port")
        if settings.cluster and target.startswith("chdb://"):
            raise ConfigError("cluster", "needs ClickHouse servers (--clickhouse-url), not chdb",
                              value=settings.cluster)
        return replace(settings, clickhouse=target) if settings.clickhouse_url else settings

    @property
    def clickhouse_urls(self) -> tuple[str, ...]:
        """Every ClickHouse target: the replicas, or the one --clickhouse."""
        return self.clickhouse_url or (self.clickhouse,)

    def _check_quorum(self) -> None:
        quorum = self.insert_quorum
        if quorum == 0:
            return
        if quorum < 2:
            raise ConfigError("insert_quorum", "must be 0 (off) or at least 2 (the replica taking an insert is one)",
                              value=quorum)
        if not self.cluster:
            raise ConfigError("insert_quorum", "needs --cluster NAME and the replicas' --clickhouse-url", value=quorum)
        if quorum > len(self.clickhouse_url):
            raise ConfigError("insert_quorum", f"more than the {len(self.clickhouse_url)} replicas given by "
                              "--clickhouse-url: no insert could ever succeed", value=quorum)

    def _split_table(self) -> SinkSettings:
        """`--table DATABASE.NAME` names the database too; anything but identifiers is refused."""
        parts = self.table.split(".")
        if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
            raise ConfigError("table", "expected NAME or DATABASE.NAME of letters, digits and _", value=self.table)
        if not _IDENTIFIER.fullmatch(self.database):
            raise ConfigError("database", "expected letters, digits and _", value=self.database)
        return replace(self, database=parts[0], table=parts[1]) if len(parts) == 2 else self

    def _checked_rebuild(self) -> SinkSettings:
        if not self.rebuild:
            for name in ("rebuild_from", "rebuild_to"):
                if getattr(self, name):
                    raise ConfigError(name, "only with --rebuild", value=getattr(self, name))
            return self
        if not self.rebuild_from:
            raise ConfigError("rebuild_from", "--rebuild needs --from TIME")
        if not self.kafka_bootstrap_servers or self.spool_dir:
            raise ConfigError("rebuild", "needs Kafka (--kafka-bootstrap-servers): it re-reads the topics")
        if self.processes > 1 or self.init_schema:
            raise ConfigError("rebuild", "runs as one process, without --processes or --init-schema")
        times = {}
        for name in ("rebuild_from", "rebuild_to"):
            text = getattr(self, name)
            try:
                times[name] = parse_time(text) if text else None
            except ValueError:
                raise ConfigError(name, f"expected {TIME_FORMS}", value=text) from None
        start, end = times["rebuild_from"], times["rebuild_to"]
        if end is not None and start is not None and start >= end:
            raise ConfigError("rebuild_from", f"is not before --to ({self.rebuild_to})", value=self.rebuild_from)
        return self
