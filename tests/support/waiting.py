"""Polling for a condition in tests, with a deadline and a clear failure."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout:g}s")


def wait_until_not_degraded(url: str, timeout: float = 90) -> None:
    """Until /_readiness says ok: the sink is back in direct mode with its own spool replayed."""
    wait_for(lambda: requests.get(url + "/_readiness", timeout=5).json()["status"] == "ok", timeout,
             "readiness ok (spool drained)")
