"""Capture routes over real HTTP into the real spool: decodings, shapes, responses and every error path."""

from __future__ import annotations

import base64
import gzip
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import lzstring
import orjson
import pytest
import requests

from gateway.spool import iter_records
from tests.support.inprocess import InProcessGateway, settings_for

TOKEN = "phc_test_token"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("capture"),
        prefix=("/ingest",),
        event_body_limit=64 * 1024,
        max_decompressed_bytes=1024 * 1024,
        fsync="never",
    )
    with InProcessGateway(settings) as running:
        yield running


def stored(gateway: InProcessGateway) -> dict[str, dict]:
    """uuid → {"record": Record, "value": parsed value} of everything in the spool so far."""
    out = {}
    for record in iter_records(gateway.sink.spool.directory):
        value = orjson.loads(record.value)
        out[value["uuid"]] = {"record": record, "value": value, "data": orjson.loads(value["data"])}
    return out


def event(name: str = "$pageview", **extra: object) -> dict:
    body = {"event": name, "uuid": str(uuid.uuid4()), "distinct_id": "user-1", "properties": {"token": TOKEN}}
    body.update(extra)
    return body


def post(gateway: InProcessGateway, path: str, body: bytes, **headers: str) -> requests.Response:
    return requests.post(gateway.url + path, data=body, headers=headers, timeout=10)


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["error"]


# --- accepted encodings and shapes -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/e", "/e/", "/i/v0/e", "/i/v0/e/", "/capture/", "/track", "/ingest/e/"])
def test_single_json_event_on_every_event_route(gateway: InProcessGateway, path: str) -> None:
    sent = event()
    response = post(gateway, path, orjson.dumps(sent), **{"Content-Type": "application/json"})
    assert response.status_code == 200 and response.json() == {"status": "Ok"}
    got = stored(gateway)[sent["uuid"]]
    assert got["record"].topic == "events_plugin_ingestion"
    assert got["record"].key == f"{TOKEN}:user-1".encode()
    assert got["value"]["token"] == TOKEN and got["data"]["event"] == "$pageview"


def test_no_redirects_and_no_trailing_slash_difference(gateway: InProcessGateway) -> None:
    response = requests.post(gateway.url + "/batch", json={"api_key": TOKEN, "batch": [event()]},
                             allow_redirects=False, timeout=10)
    assert response.status_code == 200


def test_gzip_text_plain_batch_like_posthog_js(gateway: InProcessGateway) -> None:
    events = [event(), event("$autocapture")]
    body = gzip.compress(orjson.dumps({"api_key": TOKEN, "batch": events, "sent_at": "2026-01-01T00:00:00Z"}))
    assert post(gateway, "/e/", body, **{"Content-Type": "text/plain"}).status_code == 200
    got = stored(gateway)
    assert all(e["uuid"] in got for e in events)
    assert got[events[0]["uuid"]]["value"]["sent_at"] == "2026-01-01T00:00:00Z"


def test_content_encoding_gzip_batch_like_posthog_node(gateway: InProcessGateway) -> None:
    sent = event()
    body = gzip.compress(orjson.dumps({"api_key": TOKEN, "batch": [sent]}))
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    assert post(gateway, "/batch/", body, **headers).status_code == 200
    assert sent["uuid"] in stored(gateway)


def test_base64_form_beacon_answers_204(gateway: InProcessGateway) -> None:
    sent = event("$pageleave")
    form = b"data=" + quote(base64.b64encode(orjson.dumps([sent])).decode()).encode()
    response = post(gateway, "/e/?compression=base64&beacon=1", form,
                    **{"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 204 and response.content == b""
    assert sent["uuid"] in stored(gateway)


def test_get_with_data_query(gateway: InProcessGateway) -> None:
    sent = event()
    data = base64.b64encode(orjson.dumps(sent)).decode()
    assert requests.get(gateway.url + "/e/", params={"data": data}, timeout=10).status_code == 200
    assert sent["uuid"] in stored(gateway)


def test_lz64_form(gateway: InProcessGateway) -> None:
    sent = event()
    form = "data=" + quote(lzstring.LZString().compressToBase64(orjson.dumps([sent]).decode()))
    response = post(gateway, "/e/?compression=lz64", form.encode(),
                    **{"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    assert sent["uuid"] in stored(gateway)


@pytest.mark.parametrize("path", ["/e/", "/ingest/e/", "/ingest/capture/"])
def test_legacy_double_base64_is_unwrapped_under_the_prefix_too(gateway: InProcessGateway, path: str) -> None:
    """Legacy routes unwrap a second base64 layer; under `--prefix /ingest` they are the same routes."""
    sent = event()
    assert post(gateway, path, base64.b64encode(base64.b64encode(orjson.dumps(sent)))).status_code == 200
    assert sent["uuid"] in stored(gateway)


def test_engage_without_event_becomes_identify(gateway: InProcessGateway) -> None:
    sent = {"$token": TOKEN, "$distinct_id": "u9", "uuid": str(uuid.uuid4()), "$set": {"plan": "pro"}}
    assert post(gateway, "/engage/", orjson.dumps(sent)).status_code == 200
    got = stored(gateway)[sent["uuid"]]
    assert got["data"] == {"token": TOKEN, "distinct_id": "u9", "uuid": sent["uuid"], "event": "$identify",
                           "properties": {}, "$set": {"plan": "pro"}}


def test_missing_uuid_gets_a_uuid7(gateway: InProcessGateway) -> None:
    sent = event(distinct_id="no-uuid-user")
    del sent["uuid"]
    assert post(gateway, "/e/", orjson.dumps(sent)).status_code == 200
    value = next(v["value"] for v in stored(gateway).values() if v["value"]["distinct_id"] == "no-uuid-user")
    assert uuid.UUID(value["uuid"]).version == 7


def test_numeric_distinct_id_and_routing_by_event_type(gateway: InProcessGateway) -> None:
    events = [event(distinct_id=42), event("$exception"), event("$$heatmap"),
              event("$$client_ingestion_warning"), event("$performance_event")]
    assert post(gateway, "/e/", orjson.dumps(events)).status_code == 200
    got = stored(gateway)
    assert got[events[0]["uuid"]]["value"]["distinct_id"] == "42"
    assert got[events[1]["uuid"]]["record"].topic == "error_tracking_events"
    assert got[events[2]["uuid"]]["record"].topic == "heatmaps_ingestion"
    assert got[events[3]["uuid"]]["record"].topic == "ingestion-clientwarnings-main-1"
    assert events[4]["uuid"] not in got


def test_only_performance_events_is_ok_and_stores_nothing(gateway: InProcessGateway) -> None:
    sent = event("$performance_event")
    assert post(gateway, "/e/", orjson.dumps([sent])).status_code == 200
    assert sent["uuid"] not in stored(gateway)


def test_cookieless_key_uses_ip(gateway: InProcessGateway) -> None:
    sent = event()
    sent["properties"]["$cookieless_mode"] = True
    assert post(gateway, "/e/", orjson.dumps(sent)).status_code == 200
    got = stored(gateway)[sent["uuid"]]
    assert got["record"].key == f"{TOKEN}:127.0.0.1".encode()
    assert got["value"]["is_cookieless_mode"] is True


def test_replay_one_record_per_request_keyed_by_session(gateway: InProcessGateway) -> None:
    snapshots = [
        {"event": "$snapshot", "uuid": str(uuid.uuid4()), "distinct_id": "u1",
         "properties": {"token": TOKEN, "$session_id": "s-1", "$window_id": "w-1",
                        "$snapshot_data": [{"type": 2, "data": {"n": i}}]}}
        for i in range(3)
    ]
    body = gzip.compress(orjson.dumps(snapshots))
    assert post(gateway, "/s/", body, **{"Content-Type": "text/plain"}).status_code == 200
    got = stored(gateway)[snapshots[0]["uuid"]]
    assert got["record"].topic == "session_recording_snapshot_item_events"
    assert got["record"].key == b"s-1"
    assert got["data"]["event"] == "$snapshot_items"
    props = got["data"]["properties"]
    assert props["$snapshot_items"] == [{"type": 2, "data": {"n": i}} for i in range(3)]
    assert props["$window_id"] == "w-1" and props["$snapshot_source"] == "web" and props["distinct_id"] == "u1"


def test_cors_preflight_and_mirrored_origin(gateway: InProcessGateway) -> None:
    preflight = requests.options(gateway.url + "/e/", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,baggage"}, timeout=10)
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    assert preflight.headers["Access-Control-Allow-Headers"] == "content-type,baggage"
    response = requests.post(gateway.url + "/e/", data=orjson.dumps(event()),
                             headers={"Origin": "https://app.example.com"}, timeout=10)
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"


# --- error paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "request_parsing_error"),
        (b"", 400, "empty_payload"),
        (b"[]", 400, "empty_batch"),
        (orjson.dumps({"api_key": TOKEN, "batch": []}), 400, "empty_batch"),
        (orjson.dumps([{"event": "x", "distinct_id": "d"}]), 401, "ingest_key_required"),
        (orjson.dumps([{"event": "x", "distinct_id": "d", "token": "phx_personal"}]), 403, "ingest_key_unknown"),
        (orjson.dumps([{"event": "x", "distinct_id": "d", "token": "a"},
                       {"event": "x", "distinct_id": "d", "token": "b"}]), 400, "unroutable_events"),
        (orjson.dumps([{"event": "x", "token": TOKEN}]), 400, "missing_distinct_id"),
        (orjson.dumps([{"event": "", "distinct_id": "d", "token": TOKEN}]), 400, "missing_event_name"),
        (orjson.dumps({"distinct_id": "d", "token": TOKEN}), 400, "request_hydration_error"),
        (orjson.dumps([{"event": 5, "distinct_id": "d", "token": TOKEN}]), 400, "request_parsing_error"),
        (orjson.dumps([{"event": "x", "distinct_id": "d", "token": TOKEN, "uuid": "nope"}]), 400,
         "request_parsing_error"),
        (orjson.dumps([{"event": "x", "distinct_id": "d", "token": TOKEN, "properties": []}]), 400,
         "request_parsing_error"),
        (orjson.dumps([{"event": "x", "distinct_id": "d", "token": TOKEN,
                        "properties": {"$cookieless_mode": "yes"}}]), 400, "invalid_cookieless_mode"),
        (b"\x1f\x8b\x08\x00garbage", 400, "request_decoding_error"),
        (b'"just a string"', 400, "request_parsing_error"),
    ],
)
def test_bad_input_gets_posthog_error_shape(gateway: InProcessGateway, body: bytes, status: int, code: str) -> None:
    assert_error(post(gateway, "/e/", body), status, code)


def test_replay_errors(gateway: InProcessGateway) -> None:
    base = {"event": "$snapshot", "distinct_id": "u", "properties": {"token": TOKEN}}
    assert_error(post(gateway, "/s/", orjson.dumps([base])), 400, "missing_session_id")
    bad_session = dict(base, properties={"token": TOKEN, "$session_id": "../etc", "$snapshot_data": []})
    assert_error(post(gateway, "/s/", orjson.dumps([bad_session])), 400, "invalid_session_id")
    no_data = dict(base, properties={"token": TOKEN, "$session_id": "s1"})
    assert_error(post(gateway, "/s/", orjson.dumps([no_data])), 400, "missing_snapshot_data")


def test_oversized_body_is_413(gateway: InProcessGateway) -> None:
    big = orjson.dumps([event(properties={"token": TOKEN, "blob": "x" * 100_000})])
    assert_error(post(gateway, "/e/", big), 413, "payload_too_large")


def test_oversized_chunked_body_is_413(gateway: InProcessGateway) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 4096

    response = requests.post(gateway.url + "/e/", data=chunks(), timeout=10)
    assert_error(response, 413, "payload_too_large")


def test_gzip_bomb_is_413(gateway: InProcessGateway) -> None:
    bomb = gzip.compress(b"[" + b" " * (50 * 1024 * 1024) + b"]", compresslevel=9)
    assert len(bomb) < 64 * 1024
    assert_error(post(gateway, "/e/", bomb), 413, "payload_too_large")


def test_unsupported_method_is_405(gateway: InProcessGateway) -> None:
    assert_error(requests.put(gateway.url + "/e/", data=b"{}", timeout=10), 405, "method_not_allowed")


def test_server_stays_healthy_after_bad_input(gateway: InProcessGateway) -> None:
    for body in (b"\x00" * 1000, b"[" * 10000, b"data=%%%"):
        assert post(gateway, "/e/", body).status_code in (400, 413)
    assert requests.get(gateway.url + "/_liveness", timeout=5).status_code == 200
    sent = event()
    assert post(gateway, "/e/", orjson.dumps(sent)).status_code == 200


def test_errors_are_counted_in_metrics(gateway: InProcessGateway) -> None:
    post(gateway, "/e/", b"{not json")
    text = requests.get(gateway.url + "/metrics", timeout=5).text
    line = next(line for line in text.splitlines()
                if line.startswith('capture_request_errors_total{code="request_parsing_error"}'))
    assert float(line.split()[-1]) >= 1


@pytest.mark.parametrize("base", ["", "/ingest"])
def test_health_endpoints(gateway: InProcessGateway, base: str) -> None:
    """Probes are served under every mount point too (`gateway check https://host/ingest` reads them there)."""
    assert requests.get(gateway.url + base + "/_liveness", timeout=5).json() == {"status": "ok"}
    ready = requests.get(gateway.url + base + "/_readiness", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_spool_is_per_worker_directory(gateway: InProcessGateway) -> None:
    assert gateway.sink.spool.directory == Path(gateway.settings.data_dir) / "spool" / "worker-0"
