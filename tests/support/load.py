"""Steady client load for durability tests: threads posting events, remembering what was answered 200."""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import requests

TOKEN = "phc_load_test"


def event(distinct_id: str) -> dict:
    return {"event": "load", "uuid": str(uuid.uuid4()), "distinct_id": distinct_id, "properties": {"token": TOKEN}}


class Load:
    """Client threads posting single events and small batches; remembers every uuid answered 200, and per
    distinct_id in the order they were acknowledged (a client sends its next request once the previous one
    is answered, and the distinct_ids of two clients differ)."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.acked: set[str] = set()
        self.acked_by_key: dict[str, list[str]] = {}
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, client: int) -> None:
        session = requests.Session()
        n = 0
        while not self._stop.is_set():
            n += 1
            # Two requests in a row per distinct_id (7 per client): a key's next event often follows the
            # previous one at once, which per-key order checks need.
            events = [event(f"user-{client}-{n // 2 % 7}") for _ in range(1 if n % 3 else 5)]
            body = orjson.dumps(events[0] if len(events) == 1 else {"api_key": TOKEN, "batch": events})
            try:
                status = session.post(self.url + ("/e/" if len(events) == 1 else "/batch/"), data=body,
                                      timeout=30).status_code
            except requests.RequestException:
                status = 0
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 200:
                    self.acked.update(e["uuid"] for e in events)
                    self.acked_by_key.setdefault(events[0]["distinct_id"], []).extend(e["uuid"] for e in events)
            time.sleep(0.01)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


