"""Structured logs: one JSON object per line (or text), a request id per request, rate-limited repeats.

Every record carries `ts`, `level`, `logger`, `msg`, the current `request_id` (inside a request) and
the fields passed with `extra=`. Nothing logs event contents or client IPs: refusals are logged by
route, status and error code only. A token bucket per message key (logger, level, template and an
optional `rate_key` extra) caps each kind of record, so a flood of bad requests or a failing
dependency cannot fill the disk; the next record let through reports how many were suppressed.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import uuid_utils

from gateway.metrics.logs import LOG_RECORDS_SUPPRESSED

REQUEST_ID_HEADER = "X-Request-Id"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "text")
# An incoming id is echoed only if it is short and made of URL-safe characters (no header/log injection).
_SANE_ID = re.compile(r"[\w.:+/=-]{1,128}", re.ASCII)
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "rate_key", "request_id"}

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD]
        rid = request_id.get()
        if rid is not None:
            fields.insert(0, f"request_id={rid}")
        return " ".join([line, *fields]) if fields else line


class RateLimitFilter(logging.Filter):
    """Token bucket per message key: `burst` records at once, then one every `1/rate` seconds."""

    MAX_KEYS = 4096

    def __init__(self, burst: float = 10, rate: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self.buckets: dict[tuple[Any, ...], list[float]] = {}  # key → [tokens, updated, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.msg, getattr(record, "rate_key", None))
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.MAX_KEYS:
                self.buckets.clear()
            bucket = self.buckets[key] = [self.burst, now, 0]
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if bucket[0] < 1:
            bucket[2] += 1
            LOG_RECORDS_SUPPRESSED.labels(record.levelname.lower()).inc()
            return False
        bucket[0] -= 1
        if bucket[2]:
            record.suppressed = int(bucket[2])
            bucket[2] = 0
        return True


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Send every logger's records to `stream` (stderr) as JSON lines or text, rate-limited."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RateLimitFilter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def incoming_or_new_id(value: str | None) -> str:
    return value if value is not None and _SANE_ID.fullmatch(value) else uuid_utils.uuid4().hex
