"""Fields both `gateway serve` and `gateway sink` have: one definition each, so a shared
`GATEWAY_*` name always means the same thing to both commands."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any

from gateway.settings.fields import choice

LOG_LEVELS = ("debug", "info", "warning", "error")
REPLAY_TOPIC = "session_recording_snapshot_item_events"  # gateway serve's --topic-replay default


def log_level(help_text: str = "debug | info | warning | error, any case") -> Any:
    return field(default="info", metadata={"help": help_text, "parse": choice(*LOG_LEVELS, fold_case=True)})


def log_format() -> Any:
    return field(default="json", metadata={"help": "json (one object per line) | text",
                                           "parse": choice("json", "text", fold_case=True)})


def spool_encryption_key_file(help_text: str) -> Any:
    return field(default=None, metadata={
        "help": help_text + " (ID:KEY lines, 64 hex or base64 of 32 bytes, newest last; "
        "or set GATEWAY_SPOOL_ENCRYPTION_KEYS)", "parse": Path})


def data_dir(help_text: str) -> Any:
    return field(default=Path("./gateway-data"), metadata={"help": help_text, "parse": Path})


def kafka_bootstrap_servers(default: str, help_text: str) -> Any:
    return field(default=default, metadata={"help": "HOST:PORT[,...] of Kafka: " + help_text})


def shutdown_timeout(default: float, help_text: str) -> Any:
    return field(default=default, metadata={"help": "seconds, on SIGTERM, to " + help_text})
