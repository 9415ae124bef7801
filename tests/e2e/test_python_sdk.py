"""The real `posthog` PyPI SDK against a real `gateway serve` process: every event it puts on the wire
(captures with properties and groups, `$set`, `$set_once`, `$create_alias`, `$groupidentify`), with gzip
on and off, ends up in the spool exactly once with the token, distinct_id, uuid, topic and payload it sent.

The SDK's HTTP traffic is observed at the `requests` transport so the test also proves which encoding was
actually exercised and that every request was answered 200 (the SDK would otherwise retry or drop silently).
"""

from __future__ import annotations

import gzip as gzip_module
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests.adapters
from posthog import Posthog

from tests.support.processes import GatewayProcess, spool_dump

MAIN_TOPIC = "events_plugin_ingestion"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path_factory.mktemp("python-sdk") / "data") as running:
        yield running


@dataclass
class Wire:
    """What the SDK sent, seen at the transport: one entry per HTTP request."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    seen = Wire()
    original = requests.adapters.HTTPAdapter.send

    def send(self: requests.adapters.HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any) -> Any:
        response = original(self, request, **kwargs)
        body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
        with seen.lock:
            seen.requests.append({
                "method": request.method,
                "url": request.url,
                "encoding": request.headers.get("Content-Encoding"),
                "user_agent": request.headers.get("User-Agent", ""),
                "body": body,
                "status": response.status_code,
                "response": response.content,
            })
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return seen


@dataclass
class Expected:
    event: str
    distinct_id: str
    properties: dict[str, Any] = field(default_factory=dict)
    root: dict[str, Any] = field(default_factory=dict)  # top-level fields of the raw event, e.g. $set
    timestamp: datetime | None = None


def drive_sdk(client: Posthog, tag: str) -> dict[str, Expected]:
    """Call every SDK entry point a server app uses; returns uuid → what must arrive."""
    expected: dict[str, Expected] = {}

    def remember(sent_uuid: str | None, item: Expected) -> None:
        assert sent_uuid is not None, f"the SDK refused {item.event}"
        assert sent_uuid not in expected
        expected[sent_uuid] = item

    past = datetime(2024, 2, 29, 12, 30, 15, tzinfo=UTC)
    for i in range(300):
        distinct_id = f"{tag}-user-{i % 37}" if i % 5 else f"{tag}-ünïcødé-{i % 7}"
        properties = {"index": i, "plan": ["free", "pro"][i % 2], "nested": {"list": [1, "two", None]}}
        kwargs: dict[str, Any] = {"distinct_id": distinct_id, "properties": properties}
        if i % 4 == 0:
            kwargs["uuid"] = str(uuid.uuid4())  # caller-chosen uuid must be kept as is
        if i % 6 == 0:
            kwargs["groups"] = {"company": f"{tag}-company-{i % 3}"}
        if i % 50 == 0:
            kwargs["timestamp"] = past
        item = Expected(f"{tag}_event_{i % 3}", distinct_id, properties, timestamp=kwargs.get("timestamp"))
        if "groups" in kwargs:
            item.properties = {**properties, "$groups": kwargs["groups"]}
        sent = client.capture(item.event, **kwargs)
        if "uuid" in kwargs:
            assert sent == kwargs["uuid"]
        remember(sent, item)

    for i in range(40):
        distinct_id = f"{tag}-user-{i}"
        person = {"email": f"u{i}@example.com", "age": i}
        remember(client.set(distinct_id=distinct_id, properties=person),
                 Expected("$set", distinct_id, root={"$set": person}))
    for i in range(10):
        distinct_id = f"{tag}-user-{i}"
        remember(client.set_once(distinct_id=distinct_id, properties={"first_seen": i}),
                 Expected("$set_once", distinct_id, root={"$set_once": {"first_seen": i}}))
    for i in range(20):
        previous, new = f"{tag}-anon-{i}", f"{tag}-user-{i}"
        remember(client.alias(previous_id=previous, distinct_id=new),
                 Expected("$create_alias", previous, {"distinct_id": previous, "alias": new}))
    for i in range(20):
        group = {"$group_type": "company", "$group_key": f"{tag}-company-{i}",
                 "$group_set": {"name": f"Company {i}", "employees": i * 10}}
        remember(client.group_identify("company", f"{tag}-company-{i}", group["$group_set"],
                                       distinct_id=f"{tag}-user-{i}"),
                 Expected("$groupidentify", f"{tag}-user-{i}", group))
    return expected


@pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
def test_every_sdk_event_lands_in_the_spool_exactly_once(
    gateway: GatewayProcess, wire: Wire, use_gzip: bool
) -> None:
    token = f"phc_python_{'gzip' if use_gzip else 'plain'}_{uuid.uuid4().hex[:8]}"
    errors: list[Any] = []
    client = Posthog(
        token, host=gateway.url, gzip=use_gzip, flush_at=64, flush_interval=0.1,
        max_retries=0,  # a failed request must show up as an error, not be papered over by a retry
        on_error=lambda error, batch: errors.append((error, len(batch))),
    )
    expected = drive_sdk(client, tag="py")
    client.shutdown()

    assert errors == []
    assert len(wire.requests) >= len(expected) // 64, "the SDK did not batch as configured"
    for sent in wire.requests:
        assert sent["method"] == "POST" and sent["url"] == gateway.url + "/batch/"
        assert sent["status"] == 200 and orjson.loads(sent["response"]) == {"status": "Ok"}
        assert sent["user_agent"].startswith("posthog-python/")
        assert (sent["encoding"] == "gzip") is use_gzip
        assert sent["body"].startswith(b"\x1f\x8b" if use_gzip else b"{")
    wire_uuids = [
        event["uuid"]
        for sent in wire.requests
        for event in orjson.loads(gzip_module.decompress(sent["body"]) if use_gzip else sent["body"])["batch"]
    ]
    assert sorted(wire_uuids) == sorted(expected)

    records = [r for r in spool_dump(gateway.data_dir) if r["value"]["token"] == token]
    stored_uuids = [r["value"]["uuid"] for r in records]
    assert len(stored_uuids) == len(set(stored_uuids)), "duplicates in the spool"
    assert set(stored_uuids) == set(expected)
    for record in records:
        check_record(record, token, expected[record["value"]["uuid"]])


def check_record(record: dict[str, Any], token: str, want: Expected) -> None:
    value, data, headers = record["value"], record["data"], record["headers"]
    assert record["topic"] == MAIN_TOPIC
    assert record["key"] == f"{token}:{want.distinct_id}"
    assert value["distinct_id"] == want.distinct_id and data["distinct_id"] == want.distinct_id
    assert value["event"] == want.event and data["event"] == want.event
    assert value["uuid"] == data["uuid"]
    assert headers["token"] == token and headers["distinct_id"] == want.distinct_id
    assert headers["event"] == want.event and headers["uuid"] == value["uuid"]
    assert value["ip"] == "127.0.0.1"
    properties = data["properties"]
    assert properties["$lib"] == "posthog-python" and properties["$geoip_disable"] is True
    for name, wanted in want.properties.items():
        assert properties[name] == wanted, name
    for name, wanted in want.root.items():
        assert data[name] == wanted, name
    if want.timestamp is not None:
        # Capture corrects client clock skew (timestamp - sent_at + now); locally that is well under 5 s.
        stored = datetime.fromisoformat(value["timestamp"])
        assert abs((stored - want.timestamp).total_seconds()) < 5
    elif "sent_at" in value:
        assert abs((datetime.fromisoformat(value["timestamp"]) - datetime.now(UTC)).total_seconds()) < 60


def test_sdk_survives_gateway_restart_between_flushes(tmp_path: Path, wire: Wire) -> None:
    """A graceful restart on the same address and data dir (a deploy) while a long-lived client keeps its
    keep-alive pool: the spool keeps what was accepted before and appends what arrives after."""
    data_dir = tmp_path / "data"
    token = f"phc_python_restart_{uuid.uuid4().hex[:8]}"
    errors: list[Any] = []
    first = GatewayProcess(data_dir).start()
    client = Posthog(token, host=first.url, flush_at=10, flush_interval=0.1, max_retries=3,
                     on_error=lambda error, batch: errors.append(error))
    before = [client.capture("before", distinct_id="d1") for _ in range(10)]
    client.flush()
    assert first.terminate() == 0
    second = GatewayProcess(data_dir)
    second.port, second.url = first.port, first.url  # same address, as after a deploy
    second.start()
    try:
        after = [client.capture("after", distinct_id="d1") for _ in range(10)]
        client.shutdown()
    finally:
        second.stop()
    assert errors == []
    stored = [r["value"]["uuid"] for r in spool_dump(data_dir) if r["value"]["token"] == token]
    assert sorted(stored) == sorted(before + after)


def test_historical_migration_client_goes_to_the_historical_topic(gateway: GatewayProcess) -> None:
    """`historical_migration=True` (backfills) puts the flag in the batch body; capture routes those events
    to the historical topic so they don't delay live ingestion."""
    token = f"phc_python_historical_{uuid.uuid4().hex[:8]}"
    client = Posthog(token, host=gateway.url, historical_migration=True, flush_at=10, max_retries=0)
    sent = [client.capture("backfilled", distinct_id="d1", timestamp=datetime(2021, 1, 1, tzinfo=UTC))
            for _ in range(10)]
    client.shutdown()
    records = [r for r in spool_dump(gateway.data_dir) if r["value"]["token"] == token]
    assert sorted(r["value"]["uuid"] for r in records) == sorted(sent)
    for record in records:
        assert record["topic"] == "events_plugin_ingestion_historical"
        assert record["value"]["historical_migration"] is True
        assert record["headers"]["historical_migration"] == "true"
