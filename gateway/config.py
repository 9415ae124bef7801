"""One typed settings object for `gateway serve`; every field is a flag and a `GATEWAY_<NAME>` env var.

Fields are declared once with their help text; the CLI derives its flags from them, so flags,
env vars and `--help` can never drift apart.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
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
    kafka_linger_ms: float = field(
        default=0.0,
        metadata={"help": "extra wait to gather concurrent requests into one produce (0 = one loop turn)"},
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
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigError(f"{name} {problem}")
        return self


def env_name(name: str) -> str:
    return "GATEWAY_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser, settings_class: type = ServeSettings) -> None:
    """Add one flag per settings field; defaults come from the env var, then the field default."""
    for f in fields(settings_class):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (env {env_name(f.name)}; default: %(default)s)"
        if f.metadata.get("repeat"):
            parser.add_argument(flag, action="append", default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text, metavar=f.name.upper())


def settings_from_args(
    args: argparse.Namespace, settings_class: type = ServeSettings, environ: dict[str, str] | None = None
) -> Any:
    """Flags win over env vars, which win over defaults. Raises ConfigError naming the bad setting."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(settings_class):
        raw: Any = getattr(args, f.name, None)
        if raw is None and env_name(f.name) in environ:
            env_value = environ[env_name(f.name)]
            raw = [v for v in env_value.split(",") if v] if f.metadata.get("repeat") else env_value
        if raw is None:
            continue
        values[f.name] = _convert(f, raw)
    return settings_class(**values).validate()


def _convert(f: Any, raw: Any) -> Any:
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
