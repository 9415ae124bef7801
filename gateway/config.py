"""One typed settings object for `gateway serve`; every field is a flag and a `GATEWAY_<NAME>` env var.

Fields are declared once with their help text; the CLI derives its flags from them, so flags,
env vars and `--help` can never drift apart.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the setting."""


def _size(text: str) -> int:
    """Sizes accept plain bytes or a K/M/G (binary) suffix: 512K, 20M, 4G."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = {"K": 1024, "M": MiB, "G": GiB}.get(text[-1:], 1)
    number = text[:-1] if factor != 1 else text
    return int(float(number) * factor)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


@dataclass(frozen=True, slots=True)
class ServeSettings:
    host: str = field(default="0.0.0.0", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    data_dir: Path = field(
        default=Path("./gateway-data"), metadata={"help": "where the durable spool lives", "parse": Path}
    )
    prefix: tuple[str, ...] = field(
        default=(),
        metadata={"help": "extra mount point for every route, e.g. /ingest (repeatable)", "repeat": True},
    )
    workers: int = field(default=1, metadata={"help": "worker processes sharing the port (SO_REUSEPORT)"})
    fsync: str = field(
        default="batch",
        metadata={
            "help": "spool fsync policy: always | batch (group commit) | never",
            "parse": _choice("always", "batch", "never"),
        },
    )
    fsync_window_ms: float = field(
        default=2.0, metadata={"help": "batch policy: how long one fsync waits to gather appends"}
    )
    spool_max_bytes: int = field(
        default=4 * GiB,
        metadata={"help": "spool size bound per worker; full → 503 + Retry-After", "parse": _size},
    )
    spool_encryption_key_file: Path | None = field(
        default=None,
        metadata={"help": "encrypt the spool at rest (AES-256-GCM) with the keys in this file: ID:KEY lines "
                  "(64 hex or base64 of 32 bytes), newest last; or set GATEWAY_SPOOL_ENCRYPTION_KEYS",
                  "parse": Path},
    )
    event_body_limit: int = field(
        default=2 * MiB, metadata={"help": "body limit of /e /i/v0/e /capture /track /engage", "parse": _size}
    )
    batch_body_limit: int = field(default=20 * MiB, metadata={"help": "body limit of /batch", "parse": _size})
    replay_body_limit: int = field(
        default=25 * MiB, metadata={"help": "body limit of /s (at most 64M)", "parse": _size}
    )
    max_decompressed_bytes: int = field(
        default=64 * MiB, metadata={"help": "limit on a request's decoded payload", "parse": _size}
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
    shutdown_timeout: float = field(
        default=30.0, metadata={"help": "seconds to finish in-flight requests on SIGTERM"}
    )
    # --- edge policy (gateway/edge): routes, tokens, rate limits, CORS, client IP, admin, TLS ---
    routes: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "route families to serve; every other path is 404 (repeatable; default: all of "
            "events, batch, replay, and with --upstream also flags, api, logs, assets)",
            "repeat": True,
        },
    )
    route_methods: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "ROUTE=M1,M2: methods a route family accepts, e.g. replay=POST (repeatable; "
            "default GET,POST,HEAD; OPTIONS is always answered)",
            "repeat": True,
        },
    )
    allow_tokens: tuple[str, ...] = field(
        default=(),
        metadata={"help": "project tokens accepted; others get 403 (repeatable; empty = any)",
                  "repeat": True},
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
            "or off (repeatable; default 200/2seconds = 100/s with bursts of 200, flags 100/2seconds)",
            "repeat": True,
        },
    )
    rate_limit_token: tuple[str, ...] = field(
        default=(),
        metadata={"help": "[ROUTE=]RATE per project token, e.g. 5000/second (repeatable; default off)",
                  "repeat": True},
    )
    rate_limit_storage: str = field(
        default="memory://",
        metadata={"help": "memory:// (per worker) or redis://host:port/db to share limits between replicas"},
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
                  "parse": _size},
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
            "help": "allowed CORS origins: https://app.example.com or *.example.com (repeatable; "
            "empty = mirror any origin, as PostHog does)",
            "repeat": True,
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
            "parse": _choice("", "CF-Connecting-IP", "Fly-Client-IP", "True-Client-IP", "X-Real-IP"),
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
        default=0, metadata={"help": "serve /metrics (and health) on this separate port only (0 = main port)"}
    )
    tls_cert: Path | None = field(
        default=None,
        metadata={"help": "PEM certificate chain: serve HTTPS (TLS 1.2+) directly", "parse": Path},
    )
    tls_key: Path | None = field(
        default=None, metadata={"help": "PEM private key of --tls-cert", "parse": Path}
    )

    # --- operations (gateway/logs.py) ---
    log_level: str = field(
        default="info",
        metadata={"help": "debug | info | warning | error (SIGHUP reloads it)",
                  "parse": _choice("debug", "info", "warning", "error")},
    )
    log_format: str = field(
        default="json", metadata={"help": "json (one object per line) | text", "parse": _choice("json", "text")}
    )

    # Kafka sink (off unless bootstrap servers are given).
    kafka_bootstrap_servers: str = field(
        default="", metadata={"help": "HOST:PORT[,...] of Kafka; empty = spool only (embedded mode)"}
    )
    kafka_security_protocol: str = field(
        default="PLAINTEXT",
        metadata={
            "help": "PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL",
            "parse": _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        },
    )
    kafka_sasl_mechanism: str = field(
        default="PLAIN",
        metadata={
            "help": "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512",
            "parse": _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
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
            "parse": _choice("none", "gzip", "lz4", "zstd", "snappy"),
        },
    )
    kafka_linger_ms: int = field(
        default=5,
        metadata={"help": "how long the producer waits to fill a batch (concurrent requests share batches)"},
    )
    kafka_max_batch_bytes: int = field(
        default=1 * MiB,
        metadata={
            "help": "largest Kafka record batch; a record above it is refused with 413",
            "parse": _size,
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
                  "parse": _choice("keep", "truncate", "drop")},
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
                  "anonymise (no IP, no person properties)", "parse": _choice("ignore", "drop", "anonymise")},
    )
    inject_geoip_disable: bool = field(
        default=False, metadata={"help": "set $geoip_disable: true on every event (no GeoIP enrichment)"}
    )

    # --- reverse-proxy mode (gateway/proxy, gateway/sinks/upstream.py); off unless an upstream is set ---
    upstream: str = field(
        default="",
        metadata={"help": "PostHog API host to proxy flags, /api, logs and events to, e.g. https://eu.i.posthog.com"},
    )
    assets_upstream: str = field(
        default="",
        metadata={"help": "host for /static and /array (default: the cloud assets host of --upstream, else it)"},
    )
    region: str = field(
        default="",
        metadata={"help": "us | eu: PostHog Cloud's API and assets hosts (instead of --upstream)",
                  "parse": _choice("", "us", "eu")},
    )
    upstream_events_mode: str = field(
        default="forward",
        metadata={
            "help": "with an upstream, capture goes: forward (to the upstream only) | mirror (to Kafka/spool "
            "and the upstream) | off (to Kafka/spool only)",
            "parse": _choice("forward", "mirror", "off"),
        },
    )
    upstream_passthrough: bool = field(
        default=False,
        metadata={"help": "forward capture requests byte for byte (body, content type and encoding, query) "
                  "instead of re-batched events; no gateway-side event policy applies"},
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
        metadata={"help": "memory budget of the LRU cache for /static and /array answers (0 = off)", "parse": _size},
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
            ((self.tls_cert is None) == (self.tls_key is None), "tls_cert", "and tls_key go together"),
            (not self.client_ip_header or bool(self.trusted_proxy_cidrs), "client_ip_header",
             "needs trusted_proxy_cidrs (never trust a client-supplied header)"),
            (not (self.region and self.upstream), "region", "and upstream exclude each other"),
            (not self.upstream_passthrough or (bool(self.upstream or self.region)
                                               and self.upstream_events_mode == "forward"),
             "upstream_passthrough", "needs an upstream and --upstream-events-mode forward"),
            (self.upstream_timeout > 0 and self.upstream_flags_timeout > 0, "upstream_timeout", "must be > 0"),
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
             "and flags_personal_api_key_file exclude each other"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigError(f"{name} {problem}")
        from gateway.spool.crypto import SpoolKeyError, load_keyring

        try:
            load_keyring(self.spool_encryption_key_file)
        except SpoolKeyError as exc:
            raise ConfigError(f"spool_encryption_key_file {exc}") from exc
        # Edge settings are checked by building them (imported here: edge.setup imports this module).
        from gateway.app import route_families
        from gateway.edge.setup import Edge
        from gateway.proxy.upstreams import Upstreams

        with _named("upstream"):
            Upstreams.from_settings(self)
        Edge.from_settings(self, route_families(self))
        if self.flags_personal_api_key_file is not None:
            from gateway.edge.setup import read_secret

            try:
                read_secret(self.flags_personal_api_key_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"flags_personal_api_key_file: {exc}") from exc
        from gateway.privacy.policy import PrivacyPolicy

        try:
            PrivacyPolicy.from_settings(self)
        except (ValueError, re.error) as exc:
            raise ConfigError(f"privacy: {exc}") from exc
        return self


@contextlib.contextmanager
def _named(name: str) -> Iterator[None]:
    """Turn a ValueError raised while checking setting `name` into a ConfigError naming it."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def env_name(name: str) -> str:
    return "GATEWAY_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser, settings_class: type = ServeSettings) -> None:
    """Add one flag per settings field; defaults come from the env var, then the field default."""
    for f in fields(settings_class):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (env {env_name(f.name)}; default: %(default)s)"
        if f.metadata.get("repeat"):
            parser.add_argument(flag, action="append", default=None, help=help_text)
        elif isinstance(f.default, bool):  # a bare `--flag` means true; `--flag false` is also accepted
            parser.add_argument(flag, nargs="?", const="true", default=None, help=help_text, metavar="BOOL")
        else:
            parser.add_argument(flag, default=None, help=help_text, metavar=f.name.upper())


def settings_from_args(
    args: argparse.Namespace,
    settings_class: type = ServeSettings,
    environ: dict[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> Any:
    """Flags win over env vars, which win over `base` (the config file), then defaults.

    Raises ConfigError naming the bad setting.
    """
    return settings_class(**merged_values(args, settings_class, environ, base)).validate()


def merged_values(
    args: argparse.Namespace,
    settings_class: type = ServeSettings,
    environ: dict[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The explicitly set field values (flags over env over `base`), converted but not validated."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = dict(base or {})
    for f in fields(settings_class):
        raw: Any = getattr(args, f.name, None)
        if raw is None and env_name(f.name) in environ:
            env_value = environ[env_name(f.name)]
            separator = f.metadata.get("separator", ",")
            raw = [v for v in env_value.split(separator) if v] if f.metadata.get("repeat") else env_value
        if raw is None:
            continue
        values[f.name] = convert(f, raw)
    return values


def convert(f: Any, raw: Any) -> Any:
    """A field's value from its text (or list of texts, for repeatable fields)."""
    if f.metadata.get("repeat"):
        return tuple(raw)
    parse = f.metadata.get("parse") or _type_parser(f)
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{f.name}: invalid value {raw!r}: {exc}") from exc


def _type_parser(f: Any) -> Callable[[str], Any]:
    default = f.default if f.default is not MISSING else None
    if isinstance(default, bool):
        return lambda text: text.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def parse_serve_settings(argv: Sequence[str], environ: dict[str, str] | None = None) -> ServeSettings:
    """Convenience for tests: settings from a flag list and an env mapping."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)), environ=environ or {})
