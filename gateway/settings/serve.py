"""`gateway serve` settings: every field is a flag, a `GATEWAY_<NAME>` env var and a TOML key.

Only value checks live here; what needs the components (rate limit notation, CIDRs, TLS files,
key files, privacy patterns) is checked by building them: `gateway.http.components.check_components`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.settings import shared
from gateway.settings.fields import ConfigError, GiB, MiB, choice, command_settings, shown_value, size

DEFAULT_IP_RATE = "200/2seconds"  # 100 requests/s with bursts of 200
DEFAULT_IP_RATES = {"flags": "100/2seconds"}  # per route family, where it differs


@command_settings
@dataclass(frozen=True, slots=True)
class ServeSettings:
    host: str = field(default="0.0.0.0", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    data_dir: Path = shared.data_dir("where the durable spools live (<data-dir>/spool/worker-N)")  # noqa: RUF009
    prefix: tuple[str, ...] = field(
        default=(),
        metadata={"help": "extra mount point for every route, e.g. /ingest (repeatable)", "repeat": True},
    )
    workers: int = field(default=1, metadata={"help": "worker processes sharing the port (SO_REUSEPORT)"})
    fsync: str = field(
        default="batch",
        metadata={
            "help": "spool fsync policy: always | batch (group commit) | never",
            "parse": choice("always", "batch", "never"),
        },
    )
    fsync_window_ms: float = field(
        default=2.0, metadata={"help": "batch policy: how long one fsync waits to gather appends"}
    )
    spool_max_bytes: int = field(
        default=4 * GiB,
        metadata={"help": "spool size bound per worker; full → 503 + Retry-After", "parse": size},
    )
    spool_encryption_key_file: Path | None = shared.spool_encryption_key_file(  # noqa: RUF009 (a field())
        "encrypt the spool at rest (AES-256-GCM) with the keys in this file"
    )
    event_body_limit: int = field(
        default=2 * MiB, metadata={"help": "body limit of /e /i/v0/e /capture /track /engage", "parse": size}
    )
    batch_body_limit: int = field(default=20 * MiB, metadata={"help": "body limit of /batch", "parse": size})
    replay_body_limit: int = field(
        default=25 * MiB, metadata={"help": "body limit of /s (at most 64M)", "parse": size}
    )
    max_decompressed_bytes: int = field(
        default=64 * MiB, metadata={"help": "limit on a request's decoded payload", "parse": size}
    )
    max_compression_ratio: float = field(
        default=100.0, metadata={"help": "decoded/encoded size ratio above which a payload is refused"}
    )
    trusted_proxy_hops: int = field(
        default=0,
        metadata={"help": "reverse proxies in front of the gateway whose X-Forwarded-For entry is trusted"},
    )
    historical_rerouting_days: float = field(
        default=0.0,
        metadata={"help": "reroute main events older than this many days to the historical topic (0 = off)"},
    )
    shutdown_timeout: float = shared.shutdown_timeout(30.0, "finish in-flight requests")
    # --- edge policy (gateway/edge): routes, tokens, rate limits, CORS, client IP, admin, TLS ---
    routes: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "route families to serve; every other path is 404 (repeatable)",
            "repeat": True,
            "shown_default": "events,batch,replay, and with an upstream also flags,api,logs,assets",
        },
    )
    route_methods: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "ROUTE=M1,M2: methods a route family accepts, e.g. replay=POST (repeatable; "
            "OPTIONS is always answered)",
            "repeat": True,
            "shown_default": "GET,POST,HEAD for every route",
        },
    )
    allow_tokens: tuple[str, ...] = field(
        default=(),
        metadata={"help": "project tokens accepted; others get 403 (repeatable)",
                  "repeat": True, "shown_default": "any token"},
    )
    drop_events: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "TOKEN or TOKEN:DISTINCT_ID whose events are dropped but answered 200 and counted, "
            "like PostHog's DROP_EVENTS_BY_TOKEN_DISTINCT_ID (repeatable)",
            "repeat": True,
        },
    )
    rate_limit_ip: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "[ROUTE=]RATE per client IP, sliding window, `limits` notation, e.g. events=200/2seconds "
            "or off (repeatable; 200/2seconds = 100/s with bursts of 200)",
            "repeat": True,
            "shown_default": f"{DEFAULT_IP_RATE}, flags={DEFAULT_IP_RATES['flags']}",
        },
    )
    rate_limit_token: tuple[str, ...] = field(
        default=(),
        metadata={"help": "[ROUTE=]RATE per project token, e.g. 5000/second (repeatable)",
                  "repeat": True, "shown_default": "off"},
    )
    rate_limit_storage: str = field(
        default="memory://",
        metadata={"help": "memory:// (per worker) or redis://host:port/db to share limits between replicas",
                  "url": True},
    )
    rate_limit_sync_interval: float = field(
        default=0.1,
        metadata={"help": "redis storage: seconds between batched syncs of the local counts"},
    )
    max_in_flight: int = field(
        default=1024,
        metadata={"help": "requests handled at once per worker; more → 503 + Retry-After (0 = unbounded)"},
    )
    max_header_bytes: int = field(
        default=8190,
        metadata={"help": "longest request line or header field (name: value); longer → 400, connection closed",
                  "parse": size},
    )
    max_headers: int = field(default=128, metadata={"help": "most header fields in a request; more → 400"})
    idle_timeout: float = field(
        default=75.0,
        metadata={"help": "seconds a connection may stay idle or take to send a complete request head "
                  "(slow-header clients are cut off); keep it above a load balancer's idle timeout"},
    )
    body_read_timeout: float = field(
        default=60.0, metadata={"help": "seconds to receive a request body; slower → 408 body_read_timeout"}
    )
    cors_origins: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "allowed CORS origins: https://app.example.com or *.example.com (repeatable)",
            "repeat": True,
            "shown_default": "mirror any origin, as PostHog does",
        },
    )
    content_security_policy: str = field(
        default="default-src 'none'; frame-ancestors 'none'",
        metadata={"help": "Content-Security-Policy of the gateway's own responses (empty = none)"},
    )
    hsts_max_age: int = field(
        default=31536000,
        metadata={"help": "Strict-Transport-Security max-age, sent only under TLS (0 = off)"},
    )
    trusted_proxy_cidrs: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "proxies whose X-Forwarded-For entry (or --client-ip-header) is trusted, by CIDR; "
            "the client is the rightmost untrusted address (repeatable; replaces --trusted-proxy-hops)",
            "repeat": True,
        },
    )
    client_ip_header: str = field(
        default="",
        metadata={
            "help": "header carrying the client IP, honoured only from --trusted-proxy-cidrs peers: "
            "CF-Connecting-IP | Fly-Client-IP | True-Client-IP | X-Real-IP",
            "parse": choice("", "CF-Connecting-IP", "Fly-Client-IP", "True-Client-IP", "X-Real-IP"),
        },
    )
    admin_allow_cidrs: tuple[str, ...] = field(
        default=("127.0.0.0/8", "::1/128"),
        metadata={"help": "client CIDRs allowed to reach /metrics without a token (repeatable)",
                  "repeat": True},
    )
    admin_token_file: Path | None = field(
        default=None,
        metadata={"help": "file holding a bearer token that also grants /metrics access", "parse": Path},
    )
    admin_port: int = field(
        default=0,
        metadata={"help": "serve /metrics and the GDPR endpoints on this separate port only (0 = main port); "
                          "health probes stay on the main port"},
    )
    tls_cert: Path | None = field(
        default=None,
        metadata={"help": "PEM certificate chain: serve HTTPS (TLS 1.2+) directly", "parse": Path},
    )
    tls_key: Path | None = field(
        default=None, metadata={"help": "PEM private key of --tls-cert", "parse": Path}
    )

    # --- operations (gateway/logs.py) ---
    log_level: str = shared.log_level("debug | info | warning | error, any case (SIGHUP reloads it)")
    log_format: str = shared.log_format()

    # Kafka sink (off unless bootstrap servers are given).
    kafka_bootstrap_servers: str = shared.kafka_bootstrap_servers("", "empty = spool only (embedded mode)")
    kafka_security_protocol: str = field(
        default="PLAINTEXT",
        metadata={
            "help": "PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL",
            "parse": choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        },
    )
    kafka_sasl_mechanism: str = field(
        default="PLAIN",
        metadata={
            "help": "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512",
            "parse": choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        },
    )
    kafka_sasl_username: str = field(default="", metadata={"help": "SASL user name"})
    kafka_sasl_password: str = field(default="", metadata={"help": "SASL password", "secret": True})
    kafka_ssl_cafile: str = field(default="", metadata={"help": "CA bundle to verify the brokers (SSL)"})
    kafka_ssl_certfile: str = field(default="", metadata={"help": "client certificate (mutual TLS)"})
    kafka_ssl_keyfile: str = field(default="", metadata={"help": "client private key (mutual TLS)"})
    kafka_compression: str = field(
        default="zstd",
        metadata={
            "help": "producer compression: none | gzip | lz4 | zstd | snappy",
            "parse": choice("none", "gzip", "lz4", "zstd", "snappy"),
        },
    )
    kafka_linger_ms: int = field(
        default=0,
        metadata={"help": "how long an idle partition waits to fill a batch (0: the requests of one event-loop "
                          "pass; under load, batches grow while the previous one is with Kafka)"},
    )
    kafka_max_batch_bytes: int = field(
        default=1 * MiB,
        metadata={
            "help": "largest Kafka record batch; a record above it is refused with 413",
            "parse": size,
        },
    )
    kafka_ack_timeout_ms: float = field(
        default=3000.0,
        metadata={"help": "how long a request waits for Kafka's ack before its records are spooled instead"},
    )
    topic_main: str = field(
        default="events_plugin_ingestion", metadata={"help": "topic for analytics events"}
    )
    topic_historical: str = field(
        default="events_plugin_ingestion_historical", metadata={"help": "topic for historical migrations"}
    )
    topic_overflow: str = field(
        default="events_plugin_ingestion_overflow", metadata={"help": "topic for overflowing keys"}
    )
    overflow_rate: float = field(
        default=0.0,
        metadata={"help": "events per second a token:distinct_id may send to the main topic before its excess "
                  "goes keyless to --topic-overflow, per worker (0 = off, as in PostHog; PostHog's is 100)"},
    )
    overflow_burst: int = field(
        default=1000, metadata={"help": "events a token:distinct_id may send at once above --overflow-rate"}
    )
    overflow_force: tuple[str, ...] = field(
        default=(),
        metadata={"help": "TOKEN or TOKEN:DISTINCT_ID whose main-topic events always go to --topic-overflow "
                  "(repeatable, comma-separated)", "repeat": True, "split": True},
    )
    topic_exceptions: str = field(default="error_tracking_events", metadata={"help": "topic for $exception"})
    topic_heatmaps: str = field(default="heatmaps_ingestion", metadata={"help": "topic for $$heatmap"})
    topic_client_warnings: str = field(
        default="ingestion-clientwarnings-main-1", metadata={"help": "topic for $$client_ingestion_warning"}
    )
    topic_replay: str = field(
        default="session_recording_snapshot_item_events", metadata={"help": "topic for session replay"}
    )
    # --- privacy (gateway/privacy): data minimisation before anything is stored or forwarded ---
    ip_mode: str = field(
        default="keep",
        metadata={"help": "client IP stored: keep | truncate (IPv4 /24, IPv6 /48) | drop (empty ip, no $ip)",
                  "parse": choice("keep", "truncate", "drop")},
    )
    ip_mode_token: tuple[str, ...] = field(
        default=(),
        metadata={"help": "TOKEN=keep|truncate|drop: per-project --ip-mode (repeatable)", "repeat": True},
    )
    property_denylist: tuple[str, ...] = field(
        default=(),
        metadata={"help": "property names or globs removed from properties, $set and $set_once, "
                  "e.g. email or *_token (repeatable)", "repeat": True},
    )
    mask_emails: bool = field(
        default=False, metadata={"help": "replace e-mail addresses in string values with [email]"}
    )
    mask_cards: bool = field(
        default=False, metadata={"help": "replace card numbers (Luhn-checked) in string values with [card]"}
    )
    mask_pattern: tuple[str, ...] = field(
        default=(),
        metadata={"help": "regex whose matches in string values become [masked] (repeatable; "
                  "the env var takes one pattern per line)", "repeat": True, "separator": "\n"},
    )
    dnt: str = field(
        default="ignore",
        metadata={"help": "requests with DNT: 1 or Sec-GPC: 1: ignore | drop (200, nothing stored) | "
                  "anonymise (no IP, no person properties)", "parse": choice("ignore", "drop", "anonymise")},
    )
    inject_geoip_disable: bool = field(
        default=False, metadata={"help": "set $geoip_disable: true on every event (no GeoIP enrichment)"}
    )

    # --- reverse-proxy mode (gateway/proxy, gateway/sinks/upstream.py); off unless an upstream is set ---
    upstream: str = field(
        default="",
        metadata={"help": "PostHog API host to proxy flags, /api, logs and events to, e.g. https://eu.i.posthog.com",
                  "url": True},
    )
    assets_upstream: str = field(
        default="",
        metadata={"help": "host for /static and /array",
                  "shown_default": "the cloud assets host of --upstream, else --upstream", "url": True},
    )
    region: str = field(
        default="",
        metadata={"help": "us | eu: PostHog Cloud's API and assets hosts (instead of --upstream)",
                  "parse": choice("", "us", "eu")},
    )
    upstream_events_mode: str = field(
        default="forward",
        metadata={
            "help": "with an upstream, capture goes: forward (to the upstream only) | mirror (to Kafka/spool "
            "and the upstream) | off (to Kafka/spool only)",
            "parse": choice("forward", "mirror", "off"),
        },
    )
    upstream_passthrough: bool = field(
        default=False,
        metadata={"help": "forward capture requests byte for byte (body, content type and encoding, query) "
                  "instead of re-batched events; no gateway-side event policy applies"},
    )
    upstream_forward_as_received: bool = field(
        default=False,
        metadata={"help": "forward mode: send a capture request whose events the edge leaves unchanged as "
                  "received (still parsed and checked), instead of re-encoded with fixed timestamps; the "
                  "upstream then applies clock-skew correction with its own now (spooled requests keep "
                  "the fixed timestamps)"},
    )
    upstream_timeout: float = field(
        default=10.0, metadata={"help": "seconds for one upstream request (assets, api, logs)"}
    )
    upstream_flags_timeout: float = field(
        default=3.0, metadata={"help": "seconds for one upstream /flags or /decide request (SDKs wait 3 s)"}
    )
    upstream_ack_timeout_ms: float = field(
        default=3000.0,
        metadata={"help": "how long a capture request waits for the upstream's 200 before its events are "
                  "spooled instead"},
    )
    upstream_connections: int = field(
        default=100, metadata={"help": "keep-alive connection pool size per upstream host"}
    )
    upstream_retries: int = field(
        default=1,
        metadata={"help": "retries of idempotent upstream GETs and of connect errors (never of a sent POST)"},
    )
    upstream_circuit_failures: int = field(
        default=5, metadata={"help": "consecutive upstream failures that open the circuit (fast 503s)"}
    )
    upstream_circuit_reset: float = field(
        default=5.0, metadata={"help": "seconds an open circuit waits before letting one probe request through"}
    )
    proxy_cache_bytes: int = field(
        default=64 * MiB,
        metadata={"help": "memory budget of the LRU cache for /static and /array answers (0 = off)", "parse": size},
    )
    # --- local flag evaluation (gateway/flags); needs an upstream, a key and at least one token ---
    flags_local_token: tuple[str, ...] = field(
        default=(),
        metadata={"help": "project token whose flags are evaluated locally from polled definitions (repeatable)",
                  "repeat": True},
    )
    flags_personal_api_key: str = field(
        default="",
        metadata={"help": "personal or secret API key for /flags/definitions (prefer the _file setting)",
                  "secret": True},
    )
    flags_personal_api_key_file: Path | None = field(
        default=None,
        metadata={"help": "file holding the personal or secret API key for /flags/definitions", "parse": Path},
    )
    flags_poll_interval: float = field(
        default=30.0, metadata={"help": "seconds between polls of each token's flag definitions"}
    )
    path_alias: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "ALIAS=PATH: serve PATH (and everything under it) also at ALIAS, e.g. /k7q=/e or "
            "/assets-x=/static, against ad-blocker path lists (repeatable)",
            "repeat": True,
        },
    )

    # --- GDPR requests over HTTP (gateway/gdpr/http.py) on the admin listener; off unless a target is set ---
    gdpr_clickhouse: str = field(
        default="",
        metadata={"help": "ClickHouse holding the sink's events table, for /gdpr/export and /gdpr/delete: "
                  "http(s)://[user:pass@]host:8123 or chdb://PATH (empty = off: those answer 501)", "url": True},
    )
    gdpr_database: str = field(default="default", metadata={"help": "database of the events table"})
    gdpr_table: str = field(default="events", metadata={"help": "events table name"})
    gdpr_audit_log: Path | None = field(
        default=None,
        metadata={"help": "JSON-lines audit log of GDPR requests (the one `gateway gdpr` appends to)",
                  "parse": Path, "shown_default": "<data-dir>/audit/gdpr.jsonl"},
    )
    gdpr_audit_key_file: Path | None = field(
        default=None,
        metadata={"help": "secret key file: subjects are logged as HMAC-SHA256 instead of SHA-256", "parse": Path},
    )
    gdpr_delete_timeout: float = field(
        default=600.0, metadata={"help": "seconds a /gdpr/delete waits for ClickHouse's mutations"}
    )

    def validate(self) -> ServeSettings:
        checks = [
            (1 <= self.port <= 65535, "port", "must be 1..65535"),
            (self.workers >= 1, "workers", "must be at least 1"),
            (self.fsync_window_ms >= 0, "fsync_window_ms", "must be ≥ 0"),
            (self.spool_max_bytes > MiB, "spool_max_bytes", "must be more than 1M"),
            (self.replay_body_limit <= 64 * MiB, "replay_body_limit", "must be at most 64M"),
            (self.max_compression_ratio >= 1, "max_compression_ratio", "must be ≥ 1"),
            (self.trusted_proxy_hops >= 0, "trusted_proxy_hops", "must be ≥ 0"),
            (self.kafka_ack_timeout_ms > 0, "kafka_ack_timeout_ms", "must be > 0"),
            (self.kafka_max_batch_bytes >= 1024, "kafka_max_batch_bytes", "must be at least 1K"),
            (self.overflow_rate >= 0, "overflow_rate", "must be ≥ 0"),
            (self.overflow_burst >= 1, "overflow_burst", "must be at least 1"),
            (not self.overflow_rate or bool(self.kafka_bootstrap_servers), "overflow_rate",
             "needs --kafka-bootstrap-servers (overflow routing is the Kafka sink's)"),
            (not self.overflow_force or bool(self.kafka_bootstrap_servers), "overflow_force",
             "needs --kafka-bootstrap-servers (overflow routing is the Kafka sink's)"),
            (
                all(p.startswith("/") and not p.endswith("/") for p in self.prefix),
                "prefix",
                "must start with / and not end with /",
            ),
            (self.max_in_flight >= 0, "max_in_flight", "must be ≥ 0"),
            (self.body_read_timeout > 0, "body_read_timeout", "must be > 0"),
            (256 <= self.max_header_bytes <= 1 << 20, "max_header_bytes", "must be 256..1M"),
            (self.max_headers >= 8, "max_headers", "must be at least 8"),
            (self.idle_timeout > 0, "idle_timeout", "must be > 0"),
            (self.rate_limit_sync_interval > 0, "rate_limit_sync_interval", "must be > 0"),
            (0 <= self.admin_port <= 65535 and self.admin_port != self.port, "admin_port",
             "must be 0..65535 and differ from port"),
            ((self.tls_cert is None) == (self.tls_key is None), "tls_cert", "needs --tls-key (they go together)"),
            (not self.client_ip_header or bool(self.trusted_proxy_cidrs), "client_ip_header",
             "needs trusted_proxy_cidrs (never trust a client-supplied header)"),
            (not (self.region and self.upstream), "region", "excludes --upstream"),
            (not self.upstream_passthrough or (bool(self.upstream or self.region)
                                               and self.upstream_events_mode == "forward"),
             "upstream_passthrough", "needs an upstream and --upstream-events-mode forward"),
            (not self.upstream_forward_as_received or (bool(self.upstream or self.region)
                                                       and self.upstream_events_mode == "forward"),
             "upstream_forward_as_received", "needs an upstream and --upstream-events-mode forward"),
            (self.upstream_timeout > 0, "upstream_timeout", "must be > 0"),
            (self.upstream_flags_timeout > 0, "upstream_flags_timeout", "must be > 0"),
            (self.upstream_ack_timeout_ms > 0, "upstream_ack_timeout_ms", "must be > 0"),
            (self.upstream_connections >= 1, "upstream_connections", "must be at least 1"),
            (self.upstream_retries >= 0, "upstream_retries", "must be ≥ 0"),
            (self.upstream_circuit_failures >= 1, "upstream_circuit_failures", "must be at least 1"),
            (self.proxy_cache_bytes >= 0, "proxy_cache_bytes", "must be ≥ 0"),
            (self.flags_poll_interval > 0, "flags_poll_interval", "must be > 0"),
            (not self.flags_local_token or bool(self.upstream or self.region), "flags_local_token",
             "needs an upstream"),
            (not self.flags_local_token or bool(self.flags_personal_api_key or self.flags_personal_api_key_file),
             "flags_local_token", "needs flags_personal_api_key(_file)"),
            (not (self.flags_personal_api_key and self.flags_personal_api_key_file), "flags_personal_api_key",
             "excludes flags_personal_api_key_file"),
            (not self.gdpr_clickhouse or self.gdpr_clickhouse.startswith(("chdb://", "http://", "https://")),
             "gdpr_clickhouse", "expected chdb://PATH or http(s)://[user:pass@]host:port"),
            (self.gdpr_delete_timeout > 0, "gdpr_delete_timeout", "must be > 0"),
        ]
        for ok, name, problem in checks:
            if not ok:
                value = shown_value(self.__dataclass_fields__[name], getattr(self, name))
                raise ConfigError(name, problem, value=value)
        return self
