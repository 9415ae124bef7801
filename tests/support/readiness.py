"""Watch a gateway's /_readiness in the background: when it was degraded, and for how long."""

from __future__ import annotations

import threading
import time

import requests


class ReadinessWatch:
    """Polls `url`/_readiness every `interval` seconds; `degraded_seconds(since)` sums the time it
    said degraded (or did not answer) after `since` (a `time.monotonic()` value)."""

    def __init__(self, url: str, interval: float = 0.1) -> None:
        self.url = url
        self.interval = interval
        self.samples: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                status = session.get(self.url + "/_readiness", timeout=2).json()["status"]
            except (requests.RequestException, ValueError, KeyError):
                status = "unanswered"
            self.samples.append((time.monotonic(), status))
            self._stop.wait(self.interval)

    def degraded_seconds(self, since: float = 0.0) -> float:
        total = 0.0
        for (at, status), (after, _) in zip(self.samples, self.samples[1:], strict=False):
            if at >= since and status != "ok":
                total += after - at
        return total

    def __enter__(self) -> ReadinessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
