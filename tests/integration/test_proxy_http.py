"""Reverse-proxy mode over real HTTP: the gateway in front of a fake PostHog on loopback."""

from __future__ import annotations

import gzip
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from gateway.edge.certs import write_dev_cert
from tests.support.fake_posthog import ARRAY_JS, BINARY, FLAGS_V1, FLAGS_V2, GZIP_JS, FakePostHog, etag_of
from tests.support.inprocess import InProcessGateway, settings_for
from tests.support.waiting import wait_for

TOKEN = "phc_proxy_test"


@pytest.fixture
def upstream() -> Iterator[FakePostHog]:
    with FakePostHog() as fake:
        yield fake


def gateway_for(tmp_path: Path, upstream: FakePostHog, **overrides: object) -> InProcessGateway:
    settings = settings_for(tmp_path, upstream=upstream.url, **overrides)
    return InProcessGateway(settings)



def test_header_hygiene_and_byte_exact_path(tmp_path: Path, upstream: FakePostHog) -> None:
    raw = "/decide/?v=3&ip=1&_=1700000000000&x=%2F%20a+b&empty=&dup=1&dup=2"
    with gateway_for(tmp_path, upstream, trusted_proxy_hops=1) as gateway:
        response = requests.post(
            gateway.url + raw,
            data=b'{"token":"phc_x","distinct_id":"d"}',
            headers={
                "Content-Type": "application/json",
                "Cookie": "session=secret; ph_phc_x_posthog=abc",
                "X-Forwarded-For": "198.51.100.9, 203.0.113.7",
                "X-Real-IP": "10.9.9.9",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "must-not-pass",
                "Keep-Alive": "timeout=5",
                "Origin": "https://app.example.com",
                "User-Agent": "test-agent/1",
            },
            timeout=10,
        )
    assert response.status_code == 200
    assert response.json() == FLAGS_V1
    (seen,) = upstream.requests_to("/decide/")
    assert seen.raw_path == raw
    assert seen.headers["Host"] == f"127.0.0.1:{upstream.port}"
    assert seen.headers.getall("X-Forwarded-For") == ["203.0.113.7"]  # one trusted hop: the client
    for name in ("Cookie", "X-Real-IP", "X-Hop", "Keep-Alive"):
        assert name not in seen.headers
    assert seen.headers["User-Agent"] == "test-agent/1"
    assert seen.body == b'{"token":"phc_x","distinct_id":"d"}'
    # Upstream CORS headers and cookies are replaced by the gateway's own.
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Set-Cookie" not in response.headers
    assert response.headers["X-Upstream"] == "fake-posthog"


@pytest.mark.parametrize(("ip_mode", "forwarded"), [("keep", ["203.0.113.7"]), ("truncate", ["203.0.113.0"]),
                                                    ("drop", [])])  # fmt: skip
def test_proxied_requests_carry_the_client_ip_as_ip_mode_allows(
    tmp_path: Path, upstream: FakePostHog, ip_mode: str, forwarded: list[str]
) -> None:
    """`--ip-mode` minimises the client IP PostHog gets with flags, /api and asset requests too (posthog-js
    asks /flags on every page load), not only the one in the event records."""
    with gateway_for(tmp_path, upstream, trusted_proxy_hops=1, ip_mode=ip_mode) as gateway:
        headers = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7", "X-Real-IP": "203.0.113.7"}
        assert requests.post(gateway.url + "/flags/?v=2", data=b"{}", headers=headers, timeout=10).status_code == 200
        assert requests.get(gateway.url + "/static/array.js", headers=headers, timeout=10).status_code == 200
    for seen in upstream.requests_to("/flags/") + upstream.requests_to("/static/array.js"):
        assert seen.headers.getall("X-Forwarded-For", []) == forwarded
        assert "X-Real-IP" not in seen.headers


def test_flags_get_and_post_pass_through(tmp_path: Path, upstream: FakePostHog) -> None:
    gzipped = gzip.compress(b'{"token":"phc_x","distinct_id":"d"}')
    with gateway_for(tmp_path, upstream) as gateway:
        post = requests.post(gateway.url + "/flags/?v=2&config=true", data=gzipped,
                             headers={"Content-Type": "text/plain"}, timeout=10)
        get = requests.get(gateway.url + "/flags?v=2", timeout=10)
        definitions = requests.get(gateway.url + "/flags/definitions?token=phc_x&send_cohorts",
                                   headers={"Authorization": "Bearer phs_secret"}, timeout=10)
        surveys = requests.get(gateway.url + "/api/surveys/?token=phc_x", timeout=10)
        options = requests.options(gateway.url + "/flags/?v=2", headers={
            "Origin": "https://a.example", "Access-Control-Request-Method": "POST"}, timeout=10)
        unknown = requests.get(gateway.url + "/api/projects/1/persons/", timeout=10)
    assert post.json() == FLAGS_V2 and get.json() == FLAGS_V2
    assert upstream.requests_to("/flags/")[0].body == gzipped  # bytes as sent, no re-encoding
    assert upstream.requests_to("/flags/")[0].raw_path == "/flags/?v=2&config=true"
    assert upstream.requests_to("/flags")[0].method == "GET"
    assert definitions.json()["path"] == "/flags/definitions?token=phc_x&send_cohorts"
    assert upstream.requests_to("/flags/definitions")[0].headers["Authorization"] == "Bearer phs_secret"
    assert surveys.json()["path"] == "/api/surveys/?token=phc_x"
    assert options.status_code == 200 and not [r for r in upstream.received if r.method == "OPTIONS"]
    assert unknown.status_code == 404  # only the allowlisted /api routes are proxied


def test_compressed_response_reaches_client_decodable(tmp_path: Path, upstream: FakePostHog) -> None:
    with gateway_for(tmp_path, upstream, proxy_cache_bytes=0) as gateway:
        response = requests.get(gateway.url + "/static/gz.js", headers={"Accept-Encoding": "gzip"},
                                stream=True, timeout=10)
        raw = response.raw.read(decode_content=False)
        plain = requests.get(gateway.url + "/static/gz.js", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert response.headers["Content-Encoding"] == "gzip"
    assert int(response.headers["Content-Length"]) == len(raw)
    assert gzip.decompress(raw) == GZIP_JS
    assert "Content-Encoding" not in plain.headers and plain.content == GZIP_JS
    assert int(plain.headers["Content-Length"]) == len(GZIP_JS)


def test_cached_assets_vary_by_encoding_and_origin(tmp_path: Path, upstream: FakePostHog) -> None:
    """A CDN in front of the gateway keys its copies by `Vary`: the upstream's `Accept-Encoding` must survive
    the gateway's CORS headers (else gzip bytes reach a client that cannot read them), and `Origin` must be
    listed whether or not the request had one (else a copy without CORS headers breaks a crossorigin load)."""
    with gateway_for(tmp_path, upstream) as gateway:
        answers = [requests.get(gateway.url + "/static/gz.js", headers={"Accept-Encoding": "gzip", **origin},
                                timeout=10) for origin in ({}, {"Origin": "https://app.example.com"}, {})]
    for answer in answers:
        assert answer.status_code == 200 and answer.headers["Content-Encoding"] == "gzip"
        assert sorted(v.strip() for v in answer.headers["Vary"].split(",")) == ["Accept-Encoding", "Origin"], \
            answer.headers
    assert [a.headers["X-Cache"] for a in answers] == ["MISS", "HIT", "HIT"]
    assert answers[1].headers["Access-Control-Allow-Origin"] == "https://app.example.com"


def test_no_redirects_reach_sdks(tmp_path: Path, upstream: FakePostHog) -> None:
    upstream.redirect_flags = True
    with gateway_for(tmp_path, upstream) as gateway:
        flags = requests.post(gateway.url + "/flags", data=b"{}", allow_redirects=False, timeout=10)
        asset = requests.get(gateway.url + "/static/moved.js", allow_redirects=False, timeout=10)
    assert flags.status_code == 502 and flags.json()["code"] == "upstream_error"
    assert asset.status_code == 200 and asset.content == ARRAY_JS  # followed by the gateway


def test_static_bytes_identical_cached_and_conditional(tmp_path: Path, upstream: FakePostHog) -> None:
    with gateway_for(tmp_path, upstream) as gateway:
        first = requests.get(gateway.url + "/static/blob.bin", timeout=10)
        second = requests.get(gateway.url + "/static/blob.bin", timeout=10)
        script = requests.get(gateway.url + "/static/array.js", timeout=10)
        conditional = requests.get(gateway.url + "/static/array.js",
                                   headers={"If-None-Match": etag_of(ARRAY_JS)}, timeout=10)
        config = requests.get(gateway.url + f"/array/{TOKEN}/config", timeout=10)
    assert first.content == BINARY and second.content == BINARY
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert len(upstream.requests_to("/static/blob.bin")) == 1
    assert script.content == ARRAY_JS and script.headers["ETag"] == etag_of(ARRAY_JS)
    assert conditional.status_code == 304 and conditional.content == b""
    assert len(upstream.requests_to("/static/array.js")) == 1
    assert orjson.loads(config.content)["token"] == TOKEN
    assert upstream.requests_to(f"/array/{TOKEN}/config")  # remote config goes to the assets host


@pytest.mark.parametrize("cache_bytes", [0, 4 * 1024 * 1024])
@pytest.mark.parametrize("path", ["/static/array.js", f"/array/{TOKEN}/config"])
def test_head_on_an_asset_carries_the_get_headers_without_a_body(
    tmp_path: Path, upstream: FakePostHog, cache_bytes: int, path: str
) -> None:
    """A HEAD answers the headers a GET would (Content-Length, Content-Type, ETag), with no body: loaders and
    CDNs check an asset's size and validators this way, cached or not."""
    with gateway_for(tmp_path, upstream, proxy_cache_bytes=cache_bytes) as gateway:
        heads = [requests.head(gateway.url + path, timeout=10)]
        get = requests.get(gateway.url + path, timeout=10)
        heads.append(requests.head(gateway.url + path, timeout=10))
    assert get.status_code == 200 and int(get.headers["Content-Length"]) == len(get.content) > 0
    for head in heads:
        assert head.status_code == 200 and head.content == b""
        for name in ("Content-Length", "Content-Type", "ETag", "Cache-Control"):
            assert head.headers.get(name) == get.headers[name], (name, head.headers, get.headers)


def test_stale_asset_served_when_upstream_down(tmp_path: Path, upstream: FakePostHog) -> None:
    upstream.asset_max_age = 1
    with gateway_for(tmp_path, upstream, upstream_retries=0) as gateway:
        assert requests.get(gateway.url + "/static/array.js", timeout=10).content == ARRAY_JS
        upstream.stop()
        time.sleep(1.2)
        stale = requests.get(gateway.url + "/static/array.js", timeout=10)
        missing = requests.get(gateway.url + "/static/other.js", timeout=10)
    assert stale.status_code == 200 and stale.content == ARRAY_JS and stale.headers["X-Cache"] == "STALE"
    assert missing.status_code == 502


def test_revalidation_uses_etag(tmp_path: Path, upstream: FakePostHog) -> None:
    upstream.asset_max_age = 0
    with gateway_for(tmp_path, upstream) as gateway:
        requests.get(gateway.url + "/static/array.js", timeout=10)
        again = requests.get(gateway.url + "/static/array.js", timeout=10)
    assert again.content == ARRAY_JS and again.headers["X-Cache"] == "REVALIDATED"
    assert upstream.requests_to("/static/array.js")[1].headers["If-None-Match"] == etag_of(ARRAY_JS)


def test_circuit_breaker_fails_fast(tmp_path: Path, upstream: FakePostHog) -> None:
    upstream.delay = 2.0
    with gateway_for(tmp_path, upstream, upstream_flags_timeout=0.3, upstream_circuit_failures=2,
                     upstream_circuit_reset=30.0, upstream_retries=0) as gateway:
        statuses = [requests.post(gateway.url + "/flags/?v=2", data=b"{}", timeout=10).status_code for _ in range(2)]
        started = time.perf_counter()
        refused = requests.post(gateway.url + "/flags/?v=2", data=b"{}", timeout=10)
        elapsed = time.perf_counter() - started
        metrics = requests.get(gateway.url + "/metrics", timeout=10).text
    assert statuses == [504, 504]
    assert refused.status_code == 503 and refused.json()["code"] == "upstream_unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    assert elapsed < 0.2
    assert len(upstream.requests_to("/flags/")) == 2
    assert f'gateway_upstream_circuit_state{{upstream="http://127.0.0.1:{upstream.port}"}} 1.0' in metrics


def test_path_aliases(tmp_path: Path, upstream: FakePostHog) -> None:
    aliases = ("/k7q=/e", "/fx=/flags", "/ax=/static")
    with gateway_for(tmp_path, upstream, path_alias=aliases) as gateway:
        event = {"event": "e", "distinct_id": "d", "uuid": str(uuid.uuid4()), "properties": {"token": TOKEN}}
        capture = requests.post(gateway.url + "/k7q/?ver=1", data=orjson.dumps(event), timeout=10)
        flags = requests.post(gateway.url + "/fx/?v=2", data=b"{}", timeout=10)
        asset = requests.get(gateway.url + "/ax/array.js", timeout=10)
        real = requests.get(gateway.url + "/static/array.js", timeout=10)
    assert capture.status_code == 200
    assert [e["uuid"] for e in upstream.requests_to("/batch/")[0].json()["batch"]] == [event["uuid"]]
    assert flags.json() == FLAGS_V2 and upstream.requests_to("/flags/")[0].raw_path == "/flags/?v=2"
    assert asset.content == ARRAY_JS and real.headers["X-Cache"] == "HIT"  # one cache entry, one real path


def test_prefixed_requests_reach_the_upstream_without_the_prefix(tmp_path: Path, upstream: FakePostHog) -> None:
    """A gateway mounted under `--prefix /ingest` (the app's proxy does not strip it) still asks PostHog
    for PostHog's paths: `/ingest/flags/` is PostHog's `/flags/`, an alias under the prefix too."""
    with gateway_for(tmp_path, upstream, prefix=("/ingest",), path_alias=("/ingest/fx=/ingest/flags",)) as gateway:
        flags = requests.post(gateway.url + "/ingest/flags/?v=2&config=true", data=b"{}", timeout=10)
        aliased = requests.post(gateway.url + "/ingest/fx/?v=2", data=b"{}", timeout=10)
        asset = requests.get(gateway.url + "/ingest/static/array.js", timeout=10)
        cached = requests.get(gateway.url + "/static/array.js", timeout=10)
        surveys = requests.get(gateway.url + "/ingest/api/surveys/?token=phc_x", timeout=10)
    assert flags.json() == FLAGS_V2 and aliased.json() == FLAGS_V2
    assert [seen.raw_path for seen in upstream.requests_to("/flags/")] == ["/flags/?v=2&config=true", "/flags/?v=2"]
    assert asset.content == ARRAY_JS and cached.headers["X-Cache"] == "HIT"  # one upstream resource, one entry
    assert surveys.status_code == 200
    assert upstream.requests_to("/api/surveys/")[0].raw_path == "/api/surveys/?token=phc_x"
    assert not [seen for seen in upstream.received if seen.raw_path.startswith("/ingest")]


def test_posthog_python_sdk_gets_flags_through_gateway(tmp_path: Path, upstream: FakePostHog) -> None:
    from posthog import Posthog

    with gateway_for(tmp_path, upstream) as gateway:
        client = Posthog(TOKEN, host=gateway.url, disable_geoip=True)
        try:
            with pytest.warns(DeprecationWarning):
                assert client.get_feature_flag("beta", "user-1") == "variant-a"
            assert client.evaluate_flags("user-1").get_flag("beta") == "variant-a"
        finally:
            client.shutdown()
        # The SDK's `$feature_flag_called` event went to the gateway's /batch/ and on to the upstream.
        wait_for(lambda: upstream.requests_to("/batch/"))
    flag_requests = upstream.requests_to("/flags/")
    assert [r.raw_path for r in flag_requests] == ["/flags/?v=4", "/flags/?v=4"]
    assert flag_requests[0].json()["distinct_id"] == "user-1"
    events = [e for r in upstream.requests_to("/batch/") for e in r.json()["batch"]]
    assert {e["event"] for e in events} == {"$feature_flag_called"}
    assert events[0]["properties"]["$feature_flag_response"] == "variant-a"


def test_upstream_tls_error_gives_bounded_errors_and_spools_events(tmp_path: Path) -> None:
    """An upstream whose certificate is not trusted: proxied routes fail fast in PostHog's error shape,
    capture is still answered 200 (spooled) and readiness says degraded."""
    cert, key = write_dev_cert(tmp_path / "untrusted-cert")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with FakePostHog(ssl_context=context) as untrusted, gateway_for(tmp_path / "gw", untrusted) as gateway:
        started = time.monotonic()
        flags = requests.post(gateway.url + "/flags/?v=2", json={"token": TOKEN, "distinct_id": "u"}, timeout=15)
        assert flags.status_code in (502, 503) and flags.json()["code"]
        assert time.monotonic() - started < 5
        assert not untrusted.received  # the TLS handshake failed: nothing reached the upstream
        event = {"event": "e", "distinct_id": "u", "uuid": str(uuid.uuid4()), "properties": {"token": TOKEN}}
        assert requests.post(gateway.url + "/e/", data=orjson.dumps(event), timeout=15).status_code == 200
        assert requests.get(gateway.url + "/_readiness", timeout=5).json()["status"] == "degraded"


def test_slow_upstream_flags_time_out_within_the_flags_timeout(tmp_path: Path) -> None:
    with FakePostHog(delay=5) as slow, gateway_for(tmp_path, slow, upstream_flags_timeout=0.5) as gateway:
        started = time.monotonic()
        response = requests.post(gateway.url + "/flags/?v=2", json={"token": TOKEN, "distinct_id": "u"}, timeout=15)
        elapsed = time.monotonic() - started
    assert response.status_code == 504 and response.json()["code"] == "upstream_timeout"
    assert elapsed < 3
