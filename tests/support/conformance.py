"""PostHog's Django-compatibility dump: replay it over HTTP and compare records by its rules.

The dump is PostHog's, not ours, so it is not in the repository: it is read from
$GATEWAY_CONFORMANCE_DUMP, else from ../shared/conformance/requests_dump.jsonl beside the repository
(rules: the README.md next to it). Without it the tests that need it skip with one line, unless
$GATEWAY_REQUIRE_SHARED=1 (set by .ci/run), which makes that a failure (see tests/conftest.py).
We also emit the newer capture fields `event` and `timestamp`; they are checked against the
protocol's timestamp rules (clock-skew correction by sent_at, or now - offset), computed
independently here.
"""

from __future__ import annotations

import base64
import os
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
import requests

from gateway.core.record import Record

DUMP_ENV = "GATEWAY_CONFORMANCE_DUMP"
REQUIRE_SHARED_ENV = "GATEWAY_REQUIRE_SHARED"
DEFAULT_DUMP = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "requests_dump.jsonl"
NODE_EXTRAS = ("type", "library", "library_version")
MAIN_TOPIC = "events_plugin_ingestion"
HISTORICAL_TOPIC = "events_plugin_ingestion_historical"


def require_shared() -> bool:
    """True under .ci/run: data from ../shared must be there, a skip for want of it is a failure."""
    return os.environ.get(REQUIRE_SHARED_ENV, "") not in ("", "0")


def dump_path() -> Path:
    """The dump's path; skips the test when there is none (fails when it was asked for and is missing)."""
    configured = os.environ.get(DUMP_ENV)
    if configured:
        path = Path(configured)
        if not path.is_file():
            pytest.fail(f"${DUMP_ENV} is {configured}, which is not a file", pytrace=False)
        return path
    if DEFAULT_DUMP.is_file():
        return DEFAULT_DUMP
    reason = f"PostHog's conformance dump not found: set ${DUMP_ENV} or put it at {DEFAULT_DUMP}"
    if require_shared():
        pytest.fail(f"{reason} (required: ${REQUIRE_SHARED_ENV} is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def conformance_cases() -> list[dict]:
    """The dump's cases; session-scoped so a missing dump skips before any service is started."""
    text = dump_path().read_text()
    return [orjson.loads(line) for line in text.splitlines() if line and not line.startswith("#")]


def replay(cases: list[dict], url: str, clock: dict) -> None:
    """POST every case as recorded, with the frozen clock set to its `now`; each must get 200 Ok."""
    for case in cases:
        clock["now"] = datetime.fromisoformat(case["now"])
        headers = {"Content-Type": case["content_type"], "X-Forwarded-For": case["ip"]}
        if case["content_encoding"]:
            headers["Content-Encoding"] = case["content_encoding"]
        response = requests.post(url + case["path"], data=base64.b64decode(case["body"]), headers=headers, timeout=10)
        assert response.status_code == 200, (case["path"], response.text)
        assert response.json() == {"status": "Ok"}


def expected_records(cases: list[dict]) -> list[tuple[dict, dict]]:
    """(case, expected message) pairs in the order capture must produce them."""
    return [(case, expected) for case in cases for expected in case["output"]]


def _expected_timestamp(data: dict, sent_at: datetime | None, now: datetime) -> datetime:
    if "offset" in data:
        return now - timedelta(milliseconds=data["offset"])
    if "timestamp" in data:
        ts = datetime.fromisoformat(data["timestamp"])
        return now + (ts - sent_at) if sent_at else ts
    return now


def assert_record_matches(
    record: Record, case: dict, expected: dict, topics: tuple[str, str] = (MAIN_TOPIC, HISTORICAL_TOPIC)
) -> None:
    """Value, key, headers and topic (main, historical) of one record against the dump's Django message."""
    now = datetime.fromisoformat(case["now"])
    value = orjson.loads(record.value)
    expected = dict(expected)
    expected.pop("site_url")
    expected_data = orjson.loads(expected.pop("data"))
    for extra in NODE_EXTRAS:
        expected_data.pop(extra, None)
    assert orjson.loads(value.pop("data")) == expected_data

    expected_sent_at = expected.pop("sent_at")
    sent_at = datetime.fromisoformat(expected_sent_at) if expected_sent_at else None
    if sent_at is None:
        assert "sent_at" not in value
    else:
        assert datetime.fromisoformat(value.pop("sent_at")) == sent_at

    timestamp = _expected_timestamp(expected_data, sent_at, now)
    assert value.pop("event") == expected_data["event"]
    assert datetime.fromisoformat(value.pop("timestamp")) == timestamp
    historical = case.get("historical_migration", False)
    assert value.pop("historical_migration", False) is historical
    assert value == expected  # uuid, distinct_id, ip, now, token: exact, nothing extra

    assert record.topic == (topics[1] if historical else topics[0])
    assert record.key == f"{expected['token']}:{expected['distinct_id']}".encode()
    headers = dict(record.headers)
    assert headers["uuid"] == expected["uuid"].encode()
    assert headers["token"] == expected["token"].encode()
    assert headers["distinct_id"] == expected["distinct_id"].encode()
    assert headers["event"] == expected_data["event"].encode()
    assert headers["now"] == expected["now"].encode()
    assert abs(int(headers["timestamp"]) - int(timestamp.timestamp() * 1000)) <= 1
    assert ("historical_migration" in headers) is historical
