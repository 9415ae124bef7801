"""The records (topic, key, headers, value) and spool frames of a few hundred SDK-shaped requests are
byte-identical to what the gateway produced before its hot path was optimised.

Requests of the five SDK shapes (posthog-js gzip batches to /e/, posthog-node gzip /batch/, posthog-python
/batch/, single events and beacons, /engage, /s replay) with the fields and timestamp spellings that
steer record building, sent over HTTP into the spool with a fixed clock and uuid source. The record
digests were computed with the code before the optimisation; any change to the Kafka output fails here.
The frame digests are those of the spool holding one frame per analytics request (its reader builds the
records, which must still match the record digests).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import random
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import requests
import uuid_utils

from gateway.spool import iter_records
from gateway.spool.segment import list_segments, segment_name
from tests.support.inprocess import InProcessGateway, settings_for

# settings → (records, spool segments)
DIGESTS = {
    (): ("36e5754b655e91560d782e81023391bbdd08178fa39af0277452cd3005e8466b",
         "3505ae67baaf1cbf065e4f0dfae5c3d8b063faeb550fad52a724c78b0d8ed90e"),
    (("historical_rerouting_days", 1),): ("c4a99e61dfd7962ab13d318240873925436e2153d60b3e6f4cc0987adf246a27",
                                         "7087bf10a3582835ca9a03849a7f406b42d8b51873fda12bdde1e46cc6df5b3a"),
}
REQUESTS = 300
TOKEN = "phc_digest_token"
START = datetime(2026, 12, 1, 9, 59, 58, 999_000, tzinfo=UTC)
# Clock steps that land on whole seconds, whole milliseconds and arbitrary microseconds.
CLOCK_STEPS = (timedelta(seconds=1), timedelta(milliseconds=250), timedelta(microseconds=123_457))
TIMESTAMPS = (
    "2026-12-01T09:59:57.123Z",
    "2026-12-01T09:59:57Z",
    "2026-12-01T09:59:57.123456Z",
    "2026-12-01T11:59:57.5+02:00",
    "2026-12-01 09:59:57",
    "1764583197123",
    "Tue, 01 Dec 2026 09:59:57 GMT",
    "not a time",
    "2020-01-01T00:00:00.000Z",
)
EVENT_NAMES = ("$pageview", "$autocapture", "signup", "$exception", "$$heatmap", "$$client_ingestion_warning",
               "$identify", "$groupidentify")


class FixedClock:
    def __init__(self) -> None:
        self.now = START
        self.calls = 0

    def __call__(self) -> datetime:
        self.now += CLOCK_STEPS[self.calls % len(CLOCK_STEPS)]
        self.calls += 1
        return self.now


class Shapes:
    """Deterministic SDK-shaped requests: (method path, headers, body)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def uuid(self) -> str | None:
        roll = self.rng.random()
        value = str(uuid_utils.UUID(int=self.rng.getrandbits(128), version=7))
        if roll < 0.1:
            return None
        if roll < 0.15:
            return value.upper()
        return value

    def distinct_id(self) -> object:
        roll = self.rng.random()
        if roll < 0.05:
            return self.rng.randrange(1, 10**6)
        if roll < 0.08:
            return "user\0" + "x" * self.rng.randrange(0, 300)
        return f"user-{self.rng.randrange(50)}"

    def properties(self) -> dict:
        props: dict = {
            "$lib": self.rng.choice(("web", "posthog-node", "posthog-python")),
            "$current_url": f"https://example.com/p/{self.rng.randrange(20)}?q=\"é\"",
            "$screen_width": 1920,
            "nested": {"a": [1, 2.5, None, True], "ü": "\u2028"},
        }
        roll = self.rng.random()
        if roll < 0.05:
            props["$cookieless_mode"] = True
        elif roll < 0.08:
            props["capture_internal"] = True
        elif roll < 0.11:
            props["$ignore_sent_at"] = True
        elif roll < 0.14:
            props["$clock_skew"] = self.rng.choice((1500, -2500.5))
        return props

    def event(self, *, root_distinct_id: bool) -> dict:
        event: dict = {"uuid": self.uuid(), "event": self.rng.choice(EVENT_NAMES), "properties": self.properties()}
        if root_distinct_id:
            event["distinct_id"] = self.distinct_id()
        else:
            event["properties"]["distinct_id"] = self.distinct_id()
        roll = self.rng.random()
        if roll < 0.7:
            event["timestamp"] = self.rng.choice(TIMESTAMPS)
        elif roll < 0.8:
            event["offset"] = self.rng.randrange(0, 5000)
        if self.rng.random() < 0.1:
            event["$set"] = {"email": "a@example.com"}
            event["$set_once"] = {"first": 1}
        if self.rng.random() < 0.05:
            event["event"] = "$performance_event"
        if self.rng.random() < 0.1:
            event["type"] = "capture"  # unknown fields are dropped
        if event["uuid"] is None and self.rng.random() < 0.5:
            del event["uuid"]
        return event

    def batch(self, size: int, *, root_distinct_id: bool) -> dict:
        document: dict = {
            "api_key": TOKEN,
            "batch": [self.event(root_distinct_id=root_distinct_id) for _ in range(size)],
        }
        if self.rng.random() < 0.8:
            document["sent_at"] = self.rng.choice(TIMESTAMPS[:4])
        if self.rng.random() < 0.1:
            document["historical_migration"] = True
        return document

    def js_gzip(self) -> tuple[str, dict, bytes]:
        document = self.batch(self.rng.randrange(1, 60), root_distinct_id=False)
        for event in document["batch"]:
            event["properties"]["token"] = TOKEN
        return "/e/", {"Content-Type": "text/plain"}, gzip.compress(orjson.dumps(document), mtime=0)

    def node_batch(self) -> tuple[str, dict, bytes]:
        body = gzip.compress(orjson.dumps(self.batch(self.rng.randrange(1, 30), root_distinct_id=True)), mtime=0)
        return "/batch/", {"Content-Type": "application/json", "Content-Encoding": "gzip",
                           "User-Agent": "posthog-node/4.0.0"}, body

    def python_batch(self) -> tuple[str, dict, bytes]:
        body = orjson.dumps(self.batch(self.rng.randrange(1, 100), root_distinct_id=True))
        return "/batch/", {"Content-Type": "application/json", "User-Agent": "posthog-python/3.0.0"}, body

    def single(self) -> tuple[str, dict, bytes]:
        event = self.event(root_distinct_id=self.rng.random() < 0.5)
        event["event"] = event["event"].replace("$performance_event", "$pageview")
        event[self.rng.choice(("token", "$token", "api_key"))] = TOKEN
        path = self.rng.choice(("/e/", "/i/v0/e/", "/capture/", "/track/"))
        if self.rng.random() < 0.3:
            path += f"?_={1764583197000 + self.rng.randrange(10_000)}"
        if self.rng.random() < 0.2:  # posthog-js unload beacon: base64 form
            form = b"data=" + urllib.parse.quote(base64.b64encode(orjson.dumps([event]))).encode()
            return "/e/?compression=base64&beacon=1", {"Content-Type": "application/x-www-form-urlencoded"}, form
        return path, {"Content-Type": "application/json"}, orjson.dumps(event)

    def engage(self) -> tuple[str, dict, bytes]:
        body = {"$set": {"plan": "pro"}, "distinct_id": self.distinct_id(), "token": TOKEN}
        if self.rng.random() < 0.3:
            body["event"] = "$identify"
        return "/engage/", {"Content-Type": "application/json"}, orjson.dumps(body)

    def replay(self) -> tuple[str, dict, bytes]:
        session = f"0192{self.rng.getrandbits(64):016x}"
        events = [
            {
                "uuid": self.uuid(),
                "event": "$snapshot",
                "properties": {
                    "$session_id": session,
                    "$window_id": self.rng.choice((session, None)),
                    "$snapshot_data": [{"type": 3, "data": {"source": 1, "x": self.rng.randrange(900)}}],
                    "distinct_id": self.distinct_id(),
                    "token": TOKEN,
                },
                "timestamp": self.rng.choice(TIMESTAMPS[:4]),
            }
            for _ in range(self.rng.randrange(1, 5))
        ]
        return "/s/", {"Content-Type": "text/plain"}, gzip.compress(orjson.dumps(events), mtime=0)

    def request(self) -> tuple[str, dict, bytes]:
        return self.rng.choice(
            (self.js_gzip, self.node_batch, self.python_batch, self.single, self.single, self.engage, self.replay)
        )()


@pytest.fixture
def fixed_uuid7(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = iter(range(1, 1 << 30))
    monkeypatch.setattr(uuid_utils, "uuid7", lambda: uuid_utils.UUID(int=(0x0192 << 112) | next(counter)))


@pytest.mark.parametrize("overrides", list(DIGESTS), ids=["defaults", "historical-rerouting"])
def test_records_and_spool_frames_are_unchanged(
    tmp_path: Path, fixed_uuid7: None, overrides: tuple[tuple[str, object], ...]
) -> None:
    shapes = Shapes(seed=14)
    statuses = []
    settings = settings_for(tmp_path, **dict(overrides))
    with InProcessGateway(settings, clock=FixedClock()) as gateway, requests.Session() as http:
        for _ in range(REQUESTS):
            path, headers, body = shapes.request()
            statuses.append(http.post(gateway.url + path, headers=headers, data=body, timeout=10).status_code)
    spool = gateway.sink.spool.directory
    records = list(iter_records(spool))
    digest = hashlib.sha256()
    for record in records:
        digest.update(orjson.dumps([record.topic, record.key and record.key.hex(),
                                    [[name, value.hex()] for name, value in record.headers], record.value.hex()]))
    frames = hashlib.sha256()
    for segment in list_segments(spool):
        frames.update((spool / segment_name(segment)).read_bytes())
    assert statuses.count(200) + statuses.count(204) == REQUESTS, sorted(set(statuses))
    assert len(records) > 3000
    assert (digest.hexdigest(), frames.hexdigest()) == DIGESTS[overrides]
