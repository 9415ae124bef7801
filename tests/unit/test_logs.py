"""Structured logs: JSON lines with request ids, no IPs or event contents, rate-limited repeats."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
import requests

from gateway.core.readiness import Readiness
from gateway.core.record import Record
from gateway.logs import RateLimitFilter, configure_logging, request_id
from tests.support.inprocess import InProcessGateway, settings_for

SECRET_PROPERTY = "do-not-log-this-property-value"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The root logger configured as `gateway serve` does, into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    yield stream
    root.handlers[:], root.level = saved[0], saved[1]


def parsed(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_request_id_and_extra_fields(log_lines: io.StringIO) -> None:
    token = request_id.set("req-123")
    try:
        logging.getLogger("gateway.test").warning("spool %s is slow", "worker-0", extra={"lag_bytes": 42})
    finally:
        request_id.reset(token)
    logging.getLogger("gateway.test").info("outside a request")
    inside, outside = parsed(log_lines)
    assert inside["level"] == "warning" and inside["logger"] == "gateway.test"
    assert inside["msg"] == "spool worker-0 is slow" and inside["lag_bytes"] == 42
    assert inside["request_id"] == "req-123" and inside["ts"].endswith("+00:00")
    assert "request_id" not in outside


def test_rate_limit_filter_caps_each_key_and_reports_suppressed() -> None:
    now = [0.0]
    limit = RateLimitFilter(burst=3, rate=1.0, clock=lambda: now[0])

    def record(msg: str, code: str = "") -> logging.LogRecord:
        rec = logging.makeLogRecord({"name": "x", "levelno": logging.ERROR, "levelname": "ERROR", "msg": msg})
        rec.rate_key = code
        return rec

    assert [limit.filter(record("boom")) for _ in range(5)] == [True, True, True, False, False]
    assert limit.filter(record("other")) is True  # another key has its own bucket
    assert limit.filter(record("boom", code="b")) is True
    now[0] = 1.0
    allowed = record("boom")
    assert limit.filter(allowed) is True and allowed.suppressed == 2


class BrokenSink:
    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def deliver(self, records: Sequence[Record]) -> None:
        raise RuntimeError("bug in the sink")

    def readiness(self) -> Readiness:
        return Readiness(True, False, "broken")


def event() -> bytes:
    return orjson.dumps({"event": "e", "distinct_id": "d", "uuid": str(uuid.uuid4()), "api_key": "phc_x",
                         "properties": {"secret": SECRET_PROPERTY}})


def test_requests_get_ids_and_refusal_floods_are_capped(tmp_path: Path, log_lines: io.StringIO) -> None:
    with InProcessGateway(settings_for(tmp_path, rate_limit_ip=("off",))) as gateway:
        ok = requests.post(gateway.url + "/e/", data=event(), headers={"X-Request-Id": "abc-123"}, timeout=5)
        assert ok.headers["X-Request-Id"] == "abc-123"
        injected = requests.post(gateway.url + "/e/", data=event(), headers={"X-Request-Id": "a b\tc"}, timeout=5)
        assert injected.headers["X-Request-Id"] != "a b\tc" and len(injected.headers["X-Request-Id"]) == 32
        refused_ids = set()
        for _ in range(200):
            bad = requests.post(gateway.url + "/e/", data=b'{"event": "e", "properties": {"secret": "'
                                + SECRET_PROPERTY.encode() + b'"}}', timeout=5)
            assert bad.status_code == 401
            refused_ids.add(bad.headers["X-Request-Id"])
        assert len(refused_ids) == 200
    text = log_lines.getvalue()
    assert SECRET_PROPERTY not in text and "127.0.0.1" not in text
    refusals = [line for line in parsed(log_lines) if line["msg"] == "request refused"]
    assert 1 <= len(refusals) <= 11, "a flood of bad requests must not flood the log"
    assert {line["code"] for line in refusals} == {"ingest_key_required"}
    assert all(line["request_id"] in refused_ids and line["status"] == 401 for line in refusals)


def test_unhandled_error_is_a_logged_500_with_the_request_id(tmp_path: Path, log_lines: io.StringIO) -> None:
    with InProcessGateway(settings_for(tmp_path), sink=BrokenSink()) as gateway:
        response = requests.post(gateway.url + "/e/", data=event(), headers={"X-Request-Id": "r-500"}, timeout=5)
    assert response.status_code == 500 and response.headers["X-Request-Id"] == "r-500"
    assert response.json()["code"] == "internal_error"
    (error,) = [line for line in parsed(log_lines) if line["level"] == "error"]
    assert error["request_id"] == "r-500" and error["route"] == "events" and "bug in the sink" in error["exc"]
    assert SECRET_PROPERTY not in log_lines.getvalue()
