"""Event forwarding in reverse-proxy mode: re-batched per client IP and token, timestamps kept,
spooled while the upstream is down or slow and replayed in order, pass-through and mirror modes."""

from __future__ import annotations

import gzip
import logging
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import requests
from prometheus_client import REGISTRY

from gateway.capture.timestamps import compute_timestamp, parse_timestamp
from gateway.spool import iter_records
from tests.support.fake_posthog import FakePostHog
from tests.support.inprocess import InProcessGateway, settings_for
from tests.support.waiting import wait_for

TOKEN = "phc_upstream_a"
OTHER_TOKEN = "phc_upstream_b"


def event(distinct_id: str = "user-1", token: str = TOKEN, **extra: object) -> dict:
    body = {"event": "$pageview", "uuid": str(uuid.uuid4()), "distinct_id": distinct_id,
            "properties": {"token": token}}
    return body | extra


def forwarded(upstream: FakePostHog) -> list[tuple[str, dict, dict]]:
    """(X-Forwarded-For, batch body, event) for every event the upstream accepted (200) on /batch/."""
    out = []
    for request in upstream.requests_to("/batch/", status=200):
        body = request.json()
        out += [(request.headers["X-Forwarded-For"], body, e) for e in body["batch"]]
    return out



def spooled_records() -> float:
    return REGISTRY.get_sample_value("gateway_upstream_spooled_records_total") or 0.0


def start_gateway(tmp_path: Path, upstream: FakePostHog, clock=None, **overrides: object) -> InProcessGateway:
    settings = settings_for(tmp_path, upstream=upstream.url, trusted_proxy_hops=1, fsync="never",
                            upstream_circuit_reset=0.3, **overrides)
    return InProcessGateway(settings, **({"clock": clock} if clock else {})).start()


def post(gateway: InProcessGateway, path: str, body: object, ip: str) -> requests.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(gateway.url + path, data=data, headers={"X-Forwarded-For": ip}, timeout=10)


def test_events_grouped_by_client_ip_and_token(tmp_path: Path) -> None:
    sent = {
        ("198.51.100.1", TOKEN): [event(), event()],
        ("198.51.100.2", TOKEN): [event("user-2")],
        ("198.51.100.1", OTHER_TOKEN): [event(token=OTHER_TOKEN)],
    }
    spooled_before = spooled_records()  # the in-process gateway shares this process's metrics with earlier tests
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream)
        try:
            for (ip, token), events in sent.items():
                if len(events) > 1:
                    assert post(gateway, "/batch/", {"api_key": token, "batch": events}, ip).status_code == 200
                else:
                    assert post(gateway, "/e/", events[0], ip).status_code == 200
        finally:
            gateway.stop()
    # A healthy upstream got every request directly: nothing went through the spool.
    assert spooled_records() == spooled_before
    got: dict[tuple[str, str], list[str]] = {}
    for ip, body, e in forwarded(upstream):
        got.setdefault((ip, body["api_key"]), []).append(e["uuid"])
        assert "sent_at" not in body and "historical_migration" not in body
    assert got == {key: [e["uuid"] for e in events] for key, events in sent.items()}
    for request in upstream.requests_to("/batch/"):
        assert request.headers.getall("X-Forwarded-For") == [request.headers["X-Forwarded-For"]]
        assert request.headers["Content-Encoding"] == "gzip"


def test_timestamps_survive_forwarding_and_late_replay(tmp_path: Path) -> None:
    """PostHog recomputes timestamps with its own `now`; the forwarded event must land at the same time
    whether it is forwarded at once or replayed from the spool hours later."""
    now = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)
    sent_at = "2026-03-01T11:59:50.000Z"  # the client's clock is 10.5 s behind
    events = [
        event(timestamp="2026-03-01T11:59:45.000Z"),  # skew-corrected: now - 5 s
        event(offset=1500),  # now - 1.5 s
        event(timestamp="2026-02-01T00:00:00Z", properties={"token": TOKEN, "$ignore_sent_at": True}),
        event(),  # no time at all: now
    ]
    expected = [now - timedelta(seconds=5), now - timedelta(milliseconds=1500),
                datetime(2026, 2, 1, tzinfo=UTC), now]
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream, clock=lambda: now)
        try:
            body = {"api_key": TOKEN, "sent_at": sent_at, "batch": events}
            assert post(gateway, "/batch/", body, "203.0.113.5").status_code == 200
        finally:
            gateway.stop()
    out = [e for _, _, e in forwarded(upstream)]
    assert [e["uuid"] for e in out] == [e["uuid"] for e in events]
    for upstream_now in (now + timedelta(milliseconds=30), now + timedelta(hours=3)):
        # What PostHog derives from the forwarded request (no batch sent_at is sent).
        derived = [compute_timestamp(e.get("timestamp"), e.get("offset"), None,
                                     e["properties"].get("$ignore_sent_at") is True, upstream_now) for e in out]
        assert derived == expected
    assert all(parse_timestamp(e["timestamp"]) for e in out) and not any("offset" in e for e in out)


@pytest.mark.parametrize("outage", ["stopped", "status_503", "slow"])
def test_outage_spools_then_replays_everything(tmp_path: Path, outage: str) -> None:
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream, upstream_ack_timeout_ms=300, upstream_timeout=2.0)
        try:
            sent: list[str] = []
            sent_from: dict[str, list[str]] = {}

            def send(count: int) -> None:
                for i in range(count):
                    e, ip = event(f"user-{i % 3}"), f"198.51.100.{i % 4}"
                    sent.append(e["uuid"])
                    sent_from.setdefault(ip, []).append(e["uuid"])
                    started = time.perf_counter()
                    response = post(gateway, "/e/", e, ip)
                    assert response.status_code == 200, response.text
                    assert time.perf_counter() - started < 1.5

            send(10)
            if outage == "stopped":
                upstream.stop()
            elif outage == "status_503":
                upstream.status_override = 503
            else:
                upstream.delay = 1.0
            send(25)
            readiness = requests.get(gateway.url + "/_readiness", timeout=5).json()
            assert readiness["status"] == "degraded" and "upstream" in readiness["detail"]
            if outage == "stopped":
                upstream.start()
            upstream.status_override, upstream.delay = None, 0.0
            wait_for(lambda: set(sent) <= {e["uuid"] for _, _, e in forwarded(upstream)})
            wait_for(lambda: requests.get(gateway.url + "/_readiness", timeout=5).json()["status"] == "ok")
            metrics = requests.get(gateway.url + "/metrics", timeout=5).text
        finally:
            gateway.stop()
    counts = Counter(e["uuid"] for _, _, e in forwarded(upstream))
    if outage == "slow":  # a timed-out request may still have landed: at least once
        assert set(counts) == set(sent)
    else:  # refused or unanswered requests stored nothing: exactly once
        assert counts == Counter(sent)
    # Per client IP, events arrive in the order they were accepted.
    by_ip: dict[str, list[str]] = {}
    for ip, _, e in forwarded(upstream):
        if e["uuid"] not in by_ip.setdefault(ip, []):
            by_ip[ip].append(e["uuid"])
    assert by_ip == sent_from
    assert "gateway_upstream_spooling 0.0" in metrics
    # Forward mode spools each event as the upstream takes it (encoded once, never decoded on replay).
    spooled = list(iter_records(tmp_path / "upstream-spool" / "worker-0"))
    assert spooled and {r.topic for r in spooled} == {"upstream-event"}
    assert {orjson.loads(r.value)["uuid"] for r in spooled} <= set(sent)


@pytest.mark.parametrize("outage", ["stopped", "status_503"])
def test_upstream_down_at_start_is_reported_and_spooled(
    tmp_path: Path, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream answering 5xx at start is as unhealthy as one not answering: the start warning says so,
    readiness is degraded and events are spooled, until the replayer finds it healthy."""
    with FakePostHog() as upstream:
        if outage == "stopped":
            upstream.stop()
        else:
            upstream.status_override = 503
        with caplog.at_level(logging.WARNING, logger="gateway"):
            gateway = start_gateway(tmp_path, upstream, upstream_ack_timeout_ms=300, upstream_retries=0)
        try:
            readiness = requests.get(gateway.url + "/_readiness", timeout=5).json()
            assert readiness["status"] == "degraded" and "upstream" in readiness["detail"], readiness
            e = event()
            assert post(gateway, "/e/", e, "198.51.100.1").status_code == 200
            if outage == "stopped":
                upstream.start()
            upstream.status_override = None
            wait_for(lambda: [e["uuid"]] == [f["uuid"] for _, _, f in forwarded(upstream)])
            wait_for(lambda: requests.get(gateway.url + "/_readiness", timeout=5).json()["status"] == "ok")
        finally:
            gateway.stop()
    assert [r for r in caplog.records if "upstream unavailable at start" in r.getMessage()]


def test_upstream_refusal_is_the_clients_answer(tmp_path: Path) -> None:
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream)
        try:
            upstream.status_override = 400
            refused = post(gateway, "/e/", event(), "198.51.100.1")
            readiness = requests.get(gateway.url + "/_readiness", timeout=5).json()
        finally:
            gateway.stop()
    assert refused.status_code == 400 and refused.json()["code"] == "upstream_rejected"
    assert readiness["status"] == "ok"  # a refused payload is not an outage: nothing was spooled


def test_replay_snapshots_forwarded_to_s(tmp_path: Path) -> None:
    items = [{"type": 2, "data": {"x": 1}, "timestamp": 1}, {"type": 3, "data": {"y": 2}, "timestamp": 2}]
    snapshot = [{"event": "$snapshot", "uuid": str(uuid.uuid4()), "distinct_id": "u",
                 "properties": {"token": TOKEN, "$session_id": "sess-1", "$window_id": "win-1",
                                "$snapshot_data": items}}]
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream)
        try:
            assert post(gateway, "/s/", snapshot, "198.51.100.7").status_code == 200
        finally:
            gateway.stop()
    (request,) = upstream.requests_to("/s/")
    body = request.json()
    assert request.headers["X-Forwarded-For"] == "198.51.100.7" and body["api_key"] == TOKEN
    (sent,) = body["batch"]
    assert sent["event"] == "$snapshot" and sent["uuid"] == snapshot[0]["uuid"]
    assert sent["properties"]["$snapshot_data"] == items
    assert sent["properties"]["$session_id"] == "sess-1" and sent["properties"]["$window_id"] == "win-1"


def test_passthrough_is_byte_exact_and_durable(tmp_path: Path) -> None:
    body = gzip.compress(orjson.dumps([event(), event()]))
    raw = "/e/?compression=gzip-js&ver=1.200.0&_=1700000000000"
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream, upstream_passthrough=True)
        try:
            headers = {"Content-Type": "text/plain", "X-Forwarded-For": "198.51.100.3", "User-Agent": "ua/1"}
            assert requests.post(gateway.url + raw, data=body, headers=headers, timeout=10).status_code == 200
            upstream.stop()
            assert requests.post(gateway.url + raw, data=body, headers=headers, timeout=10).status_code == 200
            upstream.start()
            wait_for(lambda: len(upstream.requests_to("/e/")) == 2)
        finally:
            gateway.stop()
    for request in upstream.requests_to("/e/"):
        assert request.raw_path == raw and request.body == body
        assert request.headers["Content-Type"] == "text/plain" and request.headers["User-Agent"] == "ua/1"
        assert request.headers["X-Forwarded-For"] == "198.51.100.3"
        assert "Content-Encoding" not in request.headers


def test_mirror_mode_writes_both(tmp_path: Path) -> None:
    sent = event()
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream, upstream_events_mode="mirror")
        try:
            assert post(gateway, "/e/", sent, "198.51.100.1").status_code == 200
        finally:
            gateway.stop()
    local = [orjson.loads(r.value)["uuid"] for r in iter_records(tmp_path / "spool" / "worker-0")]
    assert local == [sent["uuid"]]
    assert [e["uuid"] for _, _, e in forwarded(upstream)] == [sent["uuid"]]


def test_encrypted_upstream_spool_replays_everything(tmp_path: Path) -> None:
    keys = tmp_path / "spool.keys"
    keys.write_text(f"k1:{bytes(range(32)).hex()}\n")
    marker = "enc-marker-31f4"
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream, upstream_ack_timeout_ms=300, upstream_timeout=2.0,
                                spool_encryption_key_file=keys)
        try:
            upstream.stop()
            sent = [event(marker) for _ in range(5)]
            for e in sent:
                assert post(gateway, "/e/", e, "198.51.100.9").status_code == 200
            spool = tmp_path / "upstream-spool" / "worker-0"
            on_disk = b"".join(p.read_bytes() for p in spool.glob("*.seg"))
            assert on_disk and marker.encode() not in on_disk  # spooled, sealed
            upstream.start()
            wait_for(lambda: {e["uuid"] for e in sent} <= {e["uuid"] for _, _, e in forwarded(upstream)})
        finally:
            gateway.stop()
    assert [e["uuid"] for _, _, e in forwarded(upstream)] == [e["uuid"] for e in sent]


def test_as_received_forwards_unchanged_requests_as_sent_and_spools_fixed_timestamps(tmp_path: Path) -> None:
    """`--upstream-forward-as-received`: a valid request the edge leaves unchanged goes as received (body,
    content headers, path+query, one X-Forwarded-For); while the upstream is away its events are spooled
    as upstream records with the fixed timestamps, and replayed as /batch/ like in plain forward mode."""
    now = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)
    first = [event(timestamp="2026-03-01T11:59:45.000Z"), event(offset=1500)]
    second = [event(timestamp="2026-03-01T11:59:45.000Z"), event(offset=1500)]
    raw = "/e/?compression=gzip-js&ver=1.200.0"

    def body_of(events: list[dict]) -> bytes:
        return gzip.compress(orjson.dumps({"api_key": TOKEN, "sent_at": "2026-03-01T11:59:50.000Z",
                                           "batch": events}))

    headers = {"Content-Type": "text/plain", "X-Forwarded-For": "198.51.100.3", "User-Agent": "ua/1"}
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream, clock=lambda: now, upstream_forward_as_received=True)
        try:
            sent = body_of(first)
            assert requests.post(gateway.url + raw, data=sent, headers=headers, timeout=10).status_code == 200
            upstream.stop()
            assert requests.post(gateway.url + raw, data=body_of(second), headers=headers,
                                 timeout=10).status_code == 200
            upstream.start()
            wait_for(lambda: len(forwarded(upstream)) == 2)
        finally:
            gateway.stop()
    (request,) = upstream.requests_to("/e/")  # sent directly: the spool only ever holds upstream records
    assert request.raw_path == raw and request.body == sent
    assert request.headers["Content-Type"] == "text/plain" and request.headers["User-Agent"] == "ua/1"
    assert request.headers.getall("X-Forwarded-For") == ["198.51.100.3"]
    replayed = forwarded(upstream)
    assert [e["uuid"] for _, _, e in replayed] == [e["uuid"] for e in second]
    assert {ip for ip, _, _ in replayed} == {"198.51.100.3"} and "sent_at" not in replayed[0][1]
    assert [parse_timestamp(e["timestamp"]) for _, _, e in replayed] == [
        now - timedelta(seconds=5), now - timedelta(milliseconds=1500)]
    assert not any("offset" in e for _, _, e in replayed)


@pytest.mark.parametrize("change", ["dropped_distinct_id", "missing_uuid", "check_event"])
def test_as_received_re_encodes_what_the_edge_changed(tmp_path: Path, change: str) -> None:
    """A request the edge changes (an event dropped by policy, a uuid given, a check event removed) is
    re-batched with the fixed timestamps, never forwarded as received."""
    kept = event("user-1")
    other = {"dropped_distinct_id": event("blocked"), "check_event": event(event="$gateway_check"),
             "missing_uuid": {k: v for k, v in event("user-2").items() if k != "uuid"}}[change]
    overrides: dict[str, object] = {"upstream_forward_as_received": True}
    if change == "dropped_distinct_id":
        overrides["drop_events"] = (f"{TOKEN}:blocked",)
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream, **overrides)
        try:
            body = {"api_key": TOKEN, "sent_at": "2026-03-01T11:59:50.000Z", "batch": [kept, other]}
            assert post(gateway, "/batch/", body, "198.51.100.4").status_code == 200
            invalid = {"api_key": TOKEN, "batch": [event(distinct_id="")]}
            assert post(gateway, "/batch/", invalid, "198.51.100.4").status_code == 400
        finally:
            gateway.stop()
    assert len(upstream.requests_to("/batch/")) == 1
    out = forwarded(upstream)
    assert out[0][2]["uuid"] == kept["uuid"] and "sent_at" not in out[0][1]
    assert len(out) == (2 if change == "missing_uuid" else 1)


@pytest.mark.parametrize("forwarding", ["upstream_forward_as_received", "upstream_passthrough"])
def test_as_received_strips_a_prefix_from_the_upstream_path(tmp_path: Path, forwarding: str) -> None:
    body = {"api_key": TOKEN, "batch": [event(), event("user-2")]}
    with FakePostHog() as upstream:
        gateway = start_gateway(tmp_path, upstream, prefix=("/ingest",), **{forwarding: True})
        try:
            assert post(gateway, "/ingest/i/v0/e/?ver=1", body, "198.51.100.5").status_code == 200
        finally:
            gateway.stop()
    (request,) = [r for r in upstream.received if r.method == "POST"]
    assert request.raw_path == "/i/v0/e/?ver=1" and request.body == orjson.dumps(body)


def test_upstream_credentials_reach_every_upstream_request(tmp_path: Path) -> None:
    """`--upstream https://user:pass@posthog.internal` (PostHog behind an authenticating proxy): the event
    posts carry the same Basic credentials as flags and the start-up ping, or the proxy refuses the events
    (a final 4xx) while flags work."""
    with FakePostHog() as upstream:
        gateway = InProcessGateway(settings_for(
            tmp_path, upstream=upstream.url.replace("http://", "http://gw:s3cret%21@"), fsync="never")).start()
        try:
            assert post(gateway, "/e/", event(), "198.51.100.1").status_code == 200
            snapshot = event(properties={"token": TOKEN, "$session_id": "s1", "$window_id": "w",
                                         "$snapshot_data": [{"type": 2, "data": {}, "timestamp": 1}]})
            assert post(gateway, "/s/", {**snapshot, "event": "$snapshot"}, "198.51.100.1").status_code == 200
            assert requests.post(gateway.url + "/flags/?v=2", data=b"{}", timeout=10).status_code == 200
        finally:
            gateway.stop()
    expected = "Basic Z3c6czNjcmV0IQ=="  # gw:s3cret!
    seen = {r.path: r.headers.get("Authorization") for r in upstream.received if r.method == "POST"}
    assert seen == {"/batch/": expected, "/s/": expected, "/flags/": expected}
