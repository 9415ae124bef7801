"""Metrics of the log pipeline (gateway/logs.py), exported by every process that logs through it."""

from __future__ import annotations

from prometheus_client import Counter

LOG_RECORDS_SUPPRESSED = Counter(
    "gateway_log_records_suppressed", "Log records dropped by the per-message rate limit", ["level"]
)
