"""PostHog's Django-compatibility dump replayed over HTTP; the spool must hold the exact Kafka messages.

Comparison rules: ../shared/conformance/README.md. We also emit the newer capture fields `event` and
`timestamp`; they are checked against the protocol's timestamp rules (clock-skew correction by
sent_at, or now - offset), computed independently here.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
import requests

from gateway.spool import iter_records
from tests.support.inprocess import InProcessGateway, settings_for

DUMP = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "requests_dump.jsonl"
NODE_EXTRAS = ("type", "library", "library_version")


def load_cases() -> list[dict]:
    return [orjson.loads(line) for line in DUMP.read_text().splitlines() if line and not line.startswith("#")]


def parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def expected_timestamp(data: dict, sent_at: datetime | None, now: datetime) -> datetime:
    if "offset" in data:
        return now - timedelta(milliseconds=data["offset"])
    if "timestamp" in data:
        ts = parse_instant(data["timestamp"])
        return now + (ts - sent_at) if sent_at else ts
    return now


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list]:
    cases = load_cases()
    data_dir = tmp_path_factory.mktemp("conformance")
    clock = {"now": None}
    gateway = InProcessGateway(settings_for(data_dir, trusted_proxy_hops=1), clock=lambda: clock["now"])
    with gateway:
        for case in cases:
            clock["now"] = parse_instant(case["now"])
            headers = {"Content-Type": case["content_type"], "X-Forwarded-For": case["ip"]}
            if case["content_encoding"]:
                headers["Content-Encoding"] = case["content_encoding"]
            response = requests.post(gateway.url + case["path"], data=base64.b64decode(case["body"]),
                                     headers=headers, timeout=10)
            assert response.status_code == 200, (case["path"], response.text)
            assert response.json() == {"status": "Ok"}
    return cases, list(iter_records(gateway.sink.spool.directory))


def test_every_request_accepted_and_every_event_recorded(replayed: tuple[list[dict], list]) -> None:
    cases, records = replayed
    assert len(cases) == 16
    assert len(records) == sum(len(case["output"]) for case in cases) == 88


def test_records_match_django_output(replayed: tuple[list[dict], list]) -> None:
    cases, records = replayed
    position = 0
    for case in cases:
        now = parse_instant(case["now"])
        for expected in case["output"]:
            record = records[position]
            position += 1
            value = orjson.loads(record.value)
            expected = dict(expected)
            expected.pop("site_url")
            expected_data = orjson.loads(expected.pop("data"))
            for extra in NODE_EXTRAS:
                expected_data.pop(extra, None)
            assert orjson.loads(value.pop("data")) == expected_data

            expected_sent_at = expected.pop("sent_at")
            sent_at = parse_instant(expected_sent_at) if expected_sent_at else None
            if sent_at is None:
                assert "sent_at" not in value
            else:
                assert parse_instant(value.pop("sent_at")) == sent_at

            # Newer capture fields, computed by the protocol rules.
            assert value.pop("event") == expected_data["event"]
            assert parse_instant(value.pop("timestamp")) == expected_timestamp(expected_data, sent_at, now)
            historical = case.get("historical_migration", False)
            assert value.pop("historical_migration", False) is historical
            assert value == expected  # uuid, distinct_id, ip, now, token: exact, nothing extra

            topic = "events_plugin_ingestion_historical" if historical else "events_plugin_ingestion"
            assert record.topic == topic
            assert record.key == f"{expected['token']}:{expected['distinct_id']}".encode()
            headers = dict(record.headers)
            assert headers["uuid"] == expected["uuid"].encode()
            assert headers["token"] == expected["token"].encode()
            assert headers["distinct_id"] == expected["distinct_id"].encode()
            assert headers["event"] == expected_data["event"].encode()
            assert headers["now"] == expected["now"].encode()
            ts_ms = int(expected_timestamp(expected_data, sent_at, now).timestamp() * 1000)
            assert abs(int(headers["timestamp"]) - ts_ms) <= 1
    assert position == len(records)
