"""Crash safety of the 200 answer: `gateway serve` (fsync batch, the default) is SIGKILLed while clients
stream single events and small batches; every uuid that was answered 200 must be in the spool exactly once,
both when the crashed spool is read as is and after restarts on the same data dir (which must recover any
torn tail, keep accepting events and never re-emit or lose records).

SIGKILL is a process crash: the kernel keeps written pages, so this proves the gateway only answers after
writing, and that recovery is correct; it does not simulate power loss (that is what fsync is for).
"""

from __future__ import annotations

import gzip
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import requests

from tests.support.processes import GatewayProcess, spool_dump

TOKEN = "phc_crash_safety"
CLIENTS = 6
CRASHES = 2
# Crash once this many events were acknowledged in the cycle (at least MIN_LOAD_SECONDS in, at most MAX_...).
ACKED_PER_CRASH = 500
MIN_LOAD_SECONDS = 1.0
MAX_LOAD_SECONDS = 8.0


@dataclass
class Outcome:
    """What the clients learned: uuids answered 200, uuids sent but not acknowledged, odd answers."""

    acked: list[str] = field(default_factory=list)
    unacked: list[str] = field(default_factory=list)
    bad_answers: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_event(rng: random.Random, worker: int) -> dict:
    padding = "x" * rng.choice([0, 100, 2000, 20000])  # varied frame sizes make torn tails more likely
    return {
        "event": "crash_test",
        "uuid": str(uuid.uuid4()),
        "distinct_id": f"client-{worker}",
        "properties": {"token": TOKEN, "padding": padding},
    }


def stream(url: str, worker: int, outcome: Outcome, stop: threading.Event) -> None:
    """Send until the server goes away (or `stop`); never retry, so nothing may be stored twice."""
    rng = random.Random(worker)
    session = requests.Session()
    while not stop.is_set():
        events = [make_event(rng, worker) for _ in range(rng.choice([1, 1, 2, 5]))]
        uuids = [e["uuid"] for e in events]
        if len(events) == 1:
            request = {"url": url + "/e/", "data": orjson.dumps(events[0]),
                       "headers": {"Content-Type": "application/json"}}
        else:
            body = orjson.dumps({"api_key": TOKEN, "batch": events})
            headers = {"Content-Type": "application/json"}
            if rng.random() < 0.5:
                body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
            request = {"url": url + "/batch/", "data": body, "headers": headers}
        try:
            response = session.post(**request, timeout=10)
        except requests.RequestException:
            with outcome.lock:
                outcome.unacked += uuids
            return
        with outcome.lock:
            if response.status_code == 200:
                outcome.acked += uuids
            else:
                outcome.unacked += uuids
                outcome.bad_answers.append(f"{response.status_code} {response.text[:200]}")


def load_then_crash(gateway: GatewayProcess, outcome: Outcome) -> None:
    stop = threading.Event()
    clients = [
        threading.Thread(target=stream, args=(gateway.url, i, outcome, stop), daemon=True)
        for i in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    started, acked_before = time.monotonic(), len(outcome.acked)
    time.sleep(MIN_LOAD_SECONDS)
    deadline = started + MAX_LOAD_SECONDS
    while len(outcome.acked) - acked_before < ACKED_PER_CRASH and time.monotonic() < deadline:
        time.sleep(0.05)
    gateway.kill()
    for client in clients:
        client.join(15)
    stop.set()
    assert not any(client.is_alive() for client in clients)


def stored_uuids(data_dir: Path) -> Counter[str]:
    records = spool_dump(data_dir)
    assert all(r["value"]["token"] == TOKEN and r["topic"] == "events_plugin_ingestion" for r in records)
    return Counter(r["value"]["uuid"] for r in records)


def assert_acked_exactly_once(stored: Counter[str], outcome: Outcome) -> None:
    duplicates = {u: n for u, n in stored.items() if n > 1}
    assert duplicates == {}, f"{len(duplicates)} uuids stored more than once"
    lost = set(outcome.acked) - stored.keys()
    assert lost == set(), f"{len(lost)} of {len(outcome.acked)} acknowledged events lost"
    # Anything else in the spool must be a request in flight at the crash, never something invented.
    assert stored.keys() - set(outcome.acked) <= set(outcome.unacked)


def test_acknowledged_events_survive_sigkill_exactly_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    outcome = Outcome()
    for crash in range(CRASHES):
        # Six clients on one loopback address: per-IP rate limiting would refuse them.
        gateway = GatewayProcess(data_dir, "--fsync", "batch", "--rate-limit-ip", "off").start()
        acked_before = len(outcome.acked)
        try:
            load_then_crash(gateway, outcome)
        finally:
            gateway.stop()
        assert outcome.bad_answers == []
        acked = len(outcome.acked) - acked_before
        assert acked >= ACKED_PER_CRASH, f"crash {crash}: only {acked} acknowledged"
        # The crashed spool as it lies on disk (no recovery has run yet) ...
        assert_acked_exactly_once(stored_uuids(data_dir), outcome)

    # ... and after a restart, which recovers the tail and must keep accepting events.
    with GatewayProcess(data_dir) as restarted:
        after = [make_event(random.Random(99), 99) for _ in range(20)]
        for event in after:
            response = requests.post(restarted.url + "/e/", data=orjson.dumps(event), timeout=10)
            assert response.status_code == 200, response.text
        outcome.acked += [e["uuid"] for e in after]
        assert restarted.terminate() == 0
    assert_acked_exactly_once(stored_uuids(data_dir), outcome)
