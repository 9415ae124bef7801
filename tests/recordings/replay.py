"""Realistic posthog-js replay traffic for the recordings tests: rrweb events and `/s/` bodies."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.support.processes import REPO_ROOT, gateway_env

TOKEN = "phc_recordings_test"


def rrweb_session(start_ms: int, clicks: int = 2, keys: int = 3, moves: int = 4, padding: int = 0) -> list[dict]:
    """Meta + full snapshot, then clicks, key presses, mouse moves and one console warning, 100 ms apart;
    `padding` bytes more in every event's data (the player ignores the extra key)."""
    events: list[dict[str, Any]] = [
        {"type": 4, "data": {"href": "https://shop.example/cart", "width": 1280, "height": 720},
         "timestamp": start_ms},
        {"type": 2, "data": {"node": {"type": 0, "childNodes": [], "id": 1},
                             "initialOffset": {"left": 0, "top": 0}}, "timestamp": start_ms + 1},
    ]
    moment = start_ms + 1
    for kind, count in (("click", clicks), ("key", keys), ("move", moves)):
        for _ in range(count):
            moment += 100
            data = {"click": {"source": 2, "type": 2, "id": 5, "x": 10, "y": 20},
                    "key": {"source": 5, "text": "***", "isChecked": False, "id": 7},
                    "move": {"source": 1, "positions": [{"x": 1, "y": 2, "id": 5, "timeOffset": 0}]}}[kind]
            events.append({"type": 3, "data": data, "timestamp": moment})
    events.append({"type": 6, "data": {"plugin": "rrweb/console@1", "payload": {"level": "warn", "payload": ["x"]}},
                   "timestamp": moment + 1})
    if padding:
        for event in events:
            event["data"]["pad"] = "x" * padding
    return events


def post_snapshots(gateway_url: str, session_id: str, distinct_id: str, events: list[dict],
                   per_request: int = 3, window_id: str = "window-1") -> None:
    """Send `events` to `/s/` as posthog-js does: `$snapshot` events, `per_request` rrweb events each."""
    for start in range(0, len(events), per_request):
        body = {"api_key": TOKEN, "batch": [{
            "event": "$snapshot",
            "properties": {"$snapshot_data": events[start:start + per_request], "$session_id": session_id,
                           "$window_id": window_id, "distinct_id": distinct_id, "$lib": "web"},
        }]}
        response = requests.post(f"{gateway_url}/s/", json=body, timeout=10)
        assert response.status_code == 200, response.text


def now_ms() -> int:
    return int(time.time() * 1000)


def sink_process(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """`gateway recordings sink` in embedded mode on `data_dir` (chdb inside it), logging next to it."""
    log = open(data_dir.parent / "recordings-sink.log", "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "recordings", "sink", "--data-dir", str(data_dir),
         "--clickhouse", f"chdb://{data_dir}/chdb", "--log-format", "text", *args],
        stdout=log, stderr=subprocess.STDOUT, env=gateway_env(), cwd=REPO_ROOT)
