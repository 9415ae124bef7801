"""Reverse-proxy building blocks without a network: circuit breaker, cache, aliases, upstreams, re-batching."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.capture.events import RecordOptions, RequestContext, analytics_records
from gateway.capture.parse import parse_request
from gateway.edge.aliases import PathAlias, aliased_paths, parse_aliases
from gateway.proxy.cache import Entry, Freshness, ResponseCache, etag_matches
from gateway.settings import ConfigError
from gateway.sinks.upstream import passthrough_record, upstream_posts
from gateway.upstream.circuit import CircuitBreaker, CircuitOpen, State
from gateway.upstream.client import request_headers, response_headers
from gateway.upstream.hosts import Upstreams
from tests.support.settings import parse_serve_settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_circuit_opens_after_consecutive_failures_and_probes_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker("http://u", failures=3, reset_after=5, clock=clock)
    breaker.failure()
    breaker.failure()
    breaker.success()  # not consecutive: stays closed
    for _ in range(3):
        breaker.check()
        breaker.failure()
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpen) as refused:
        breaker.check()
    assert refused.value.retry_after == 5
    clock.now += 5
    breaker.check()  # the probe
    assert breaker.state is State.HALF_OPEN
    with pytest.raises(CircuitOpen):
        breaker.check()  # only one probe at a time
    breaker.failure()
    assert breaker.state is State.OPEN
    clock.now += 5
    breaker.check()
    breaker.success()
    assert breaker.state is State.CLOSED
    breaker.check()


def entry(body: bytes, cache_control: str, stored_at: float = 100.0, etag: str | None = '"a"') -> Entry:
    headers = CIMultiDict({"Cache-Control": cache_control})
    if etag:
        headers["ETag"] = etag
    freshness = Freshness.of(headers)
    assert freshness is not None
    return Entry(headers, body, stored_at, freshness)


def test_freshness_follows_cache_control() -> None:
    assert Freshness.of({"Cache-Control": "private, max-age=60"}) is None
    assert Freshness.of({"Cache-Control": "no-store"}) is None
    assert Freshness.of({"Cache-Control": "public, max-age=60, s-maxage=120"}).max_age == 120
    assert Freshness.of({"Cache-Control": "max-age=60, no-cache"}).max_age == 0
    stale = entry(b"x", "max-age=10, stale-while-revalidate=20, stale-if-error=100")
    assert stale.fresh(109) and not stale.fresh(110)
    assert stale.revalidate_in_background(129) and not stale.revalidate_in_background(130)
    assert stale.usable_on_error(209) and not stale.usable_on_error(210)
    refreshed = stale.refreshed({"Cache-Control": "max-age=99", "ETag": '"b"'}, now=300)
    assert refreshed.fresh(398) and refreshed.etag == '"b"' and refreshed.body == b"x"


def test_cache_is_lru_within_its_byte_budget() -> None:
    cache = ResponseCache(budget=4000)
    for name in ("a", "b", "c"):
        cache.put((name, "gzip"), entry(b"x" * 900, "max-age=60"))
    cache.get(("a", "gzip"))  # a is now the most recently used
    cache.put(("d", "gzip"), entry(b"x" * 900, "max-age=60"))
    cache.put(("e", "gzip"), entry(b"x" * 900, "max-age=60"))
    assert cache.get(("b", "gzip")) is None and cache.get(("a", "gzip")) is not None
    assert cache.used <= 4000
    cache.put(("huge", "gzip"), entry(b"x" * 2000, "max-age=60"))  # over a quarter of the budget
    assert cache.get(("huge", "gzip")) is None


def test_etag_matching_is_weak() -> None:
    assert etag_matches('W/"a", "b"', '"a"')
    assert etag_matches("*", '"a"')
    assert not etag_matches('"b"', '"a"') and not etag_matches('"a"', None)


def test_header_hygiene() -> None:
    incoming = CIMultiDictProxy(CIMultiDict([
        ("Host", "gateway.example"), ("Cookie", "a=1"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
        ("TE", "trailers"), ("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=1.2.3.4"),
        ("Content-Type", "text/plain"), ("Authorization", "Bearer phs_x"), ("Accept-Encoding", "gzip"),
    ]))
    assert dict(request_headers(incoming, "203.0.113.9")) == {
        "Content-Type": "text/plain", "Authorization": "Bearer phs_x", "Accept-Encoding": "gzip",
        "X-Forwarded-For": "203.0.113.9",
    }
    upstream = CIMultiDictProxy(CIMultiDict([
        ("Content-Type", "application/json"), ("Content-Length", "10"), ("Content-Encoding", "gzip"),
        ("Access-Control-Allow-Origin", "*"), ("Set-Cookie", "x=1"), ("Transfer-Encoding", "chunked"),
        ("ETag", '"e"'),
    ]))
    assert dict(response_headers(upstream)) == {
        "Content-Type": "application/json", "Content-Encoding": "gzip", "ETag": '"e"'}


def test_path_aliases() -> None:
    aliases = parse_aliases(["/k7q=/e", "/x9=/static"])
    assert [path for path, _ in aliased_paths("/e/", aliases)] == ["/k7q/"]
    assert [path for path, _ in aliased_paths("/static/{tail:.+}", aliases)] == ["/x9/{tail:.+}"]
    assert list(aliased_paths("/engage", aliases)) == []  # whole path segments only
    assert PathAlias("/k7q", "/e").rewrite("/k7q/?ver=1&x=%20") == "/e/?ver=1&x=%20"
    for bad in (["/k7q"], ["k=/e"], ["/k/=/e"], ["/e=/e"], ["/a=/e", "/a=/s"]):
        with pytest.raises(ValueError):
            parse_aliases(bad)


@pytest.mark.parametrize("argv", [
    ["--path-alias", "/fz=/flags"],                            # no upstream: no flags route to serve
    ["--path-alias", "/k=/flag"],                              # a typo
    ["--path-alias", "/k=/_readiness"],                        # probes take no aliases
    ["--prefix", "/ingest", "--path-alias", "/ingest/k=/ingest/flags"],
    ["--path-alias", "/e=/batch"],                             # the real /e route would shadow the alias
    ["--upstream", "http://ph:8000", "--routes", "events", "--routes", "batch", "--path-alias", "/fz=/flags"],
])
def test_a_path_alias_that_could_serve_nothing_is_a_config_error(argv: list[str]) -> None:
    """An alias no request would ever reach (its target not served, or its path taken) fails at start:
    silently ignored, an SDK following it would get 404 and its events would be lost."""
    with pytest.raises(ConfigError, match="path_alias"):
        parse_serve_settings(argv)


def test_path_aliases_of_served_routes_are_accepted() -> None:
    parse_serve_settings(["--upstream", "http://ph:8000", "--prefix", "/ingest", "--path-alias", "/k7q=/i/v0/e",
                          "--path-alias", "/ingest/k=/ingest/e", "--path-alias", "/a9=/static",
                          "--path-alias", "/cfg=/array", "--path-alias", "/fz=/ingest/flags"])


@pytest.mark.parametrize("privacy", [["--ip-mode", "drop"], ["--mask-emails"], ["--property-denylist", "email"],
                                     ["--dnt", "drop"], ["--inject-geoip-disable"]])
def test_privacy_rules_with_passthrough_are_a_config_error(privacy: list[str]) -> None:
    """Pass-through forwards requests unparsed with the client's IP: privacy rules could not apply, and an
    operator relying on them would send PostHog what they meant to remove."""
    with pytest.raises(ConfigError, match="upstream_passthrough"):
        parse_serve_settings(["--upstream", "http://ph:8000", "--upstream-passthrough", *privacy])
    parse_serve_settings(["--upstream", "http://ph:8000", *privacy])  # re-batched forwarding applies them


def test_upstream_hosts_from_settings() -> None:
    eu = Upstreams.from_settings(parse_serve_settings(["--region", "eu"]))
    assert (str(eu.api), str(eu.assets)) == ("https://eu.i.posthog.com", "https://eu-assets.i.posthog.com")
    us = Upstreams.from_settings(parse_serve_settings(["--upstream", "https://us.i.posthog.com/"]))
    assert str(us.assets) == "https://us-assets.i.posthog.com"
    own = Upstreams.from_settings(parse_serve_settings(["--upstream", "http://posthog.internal:8000"]))
    assert own.assets == own.api
    assert not Upstreams.from_settings(parse_serve_settings([])).enabled
    for argv in (["--upstream", "ftp://x"], ["--region", "us", "--upstream", "https://x"],
                 ["--upstream-passthrough"], ["--region", "ap"], ["--path-alias", "nope"],
                 ["--routes", "flags"]):
        with pytest.raises(ConfigError):
            parse_serve_settings(argv)


def records(body: dict, ip: str, now: datetime, upstream: bool = False, **options: object) -> list:
    parsed = parse_request(orjson.dumps(body), engage=False, query_sent_at=None)
    return analytics_records(parsed, RequestContext(client_ip=ip, now=now), RecordOptions(upstream=upstream, **options))


@pytest.mark.parametrize("upstream", [False, True], ids=["kafka-records", "upstream-records"])
def test_rebatching_groups_by_token_ip_and_historical_in_order(upstream: bool) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def batch(token: str, *names: str, historical: bool = False) -> dict:
        events = [{"event": n, "distinct_id": "d", "uuid": f"00000000-0000-4000-8000-00000000000{i}"}
                  for i, n in enumerate(names)]
        return {"api_key": token, "batch": events, "historical_migration": historical}

    rs = (records(batch("phc_a", "a1", "a2"), "1.1.1.1", now, upstream)
          + records(batch("phc_b", "b1"), "1.1.1.1", now, upstream)
          + records(batch("phc_a", "a3"), "2.2.2.2", now, upstream)
          + records(batch("phc_a", "a4"), "1.1.1.1", now, upstream)
          + records(batch("phc_a", "h1", historical=True), "1.1.1.1", now, upstream))
    posts = upstream_posts(rs)
    summary = [(p.path, p.client_ip, orjson.loads(gzip.decompress(p.body))) for p in posts]
    assert [(path, ip, body["api_key"], [e["event"] for e in body["batch"]], body.get("historical_migration"))
            for path, ip, body in summary] == [
        ("/batch/", "1.1.1.1", "phc_a", ["a1", "a2", "a4"], None),
        ("/batch/", "1.1.1.1", "phc_b", ["b1"], None),
        ("/batch/", "2.2.2.2", "phc_a", ["a3"], None),
        ("/batch/", "1.1.1.1", "phc_a", ["h1"], True),
    ]


UPSTREAM_SHAPES = [
    {"api_key": "phc_\"q\\", "sent_at": "2025-12-31T23:59:00Z", "batch": [
        {"event": "$pageview", "distinct_id": "d\u00e9", "properties": {"$current_url": "/x", "n": 1.5e300},
         "timestamp": "2025-12-31T23:58:30.123Z", "uuid": "00000000-0000-4000-8000-000000000001"},
        {"event": "offset", "distinct_id": 7, "properties": {"capture_internal": True}, "offset": 1500,
         "$set": {"a": [1, None]}, "uuid": "00000000-0000-4000-8000-000000000002"},
        {"event": "old", "properties": {"distinct_id": "p"}, "timestamp": "2020-01-01T00:00:00Z",
         "uuid": "00000000-0000-4000-8000-000000000003"},
        {"event": "$exception", "distinct_id": "d", "properties": {"$cookieless_mode": True},
         "uuid": "00000000-0000-4000-8000-000000000004"},
    ]},
    {"api_key": "phc_h", "historical_migration": True, "batch": [
        {"event": "h", "distinct_id": "d", "properties": {}, "uuid": "00000000-0000-4000-8000-000000000005"},
        {"event": "$$heatmap", "distinct_id": "d", "uuid": "00000000-0000-4000-8000-000000000006"},
    ]},
]


@pytest.mark.parametrize("body", UPSTREAM_SHAPES)
def test_upstream_records_give_the_bodies_kafka_records_give(body: dict) -> None:
    """Forward mode encodes each event once; the upstream must get exactly what decoding Kafka records gave."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    options = {"historical_rerouting_after": timedelta(days=365)}
    kafka, upstream = (upstream_posts(records(body, "1.2.3.4", now, shape, **options)) for shape in (False, True))
    assert len(upstream) > 1  # the shapes above need several requests (historical, internal IP)
    assert [(p.path, p.client_ip, p.events, gzip.decompress(p.body)) for p in upstream] == [
        (p.path, p.client_ip, p.events, gzip.decompress(p.body)) for p in kafka
    ]


def test_spooled_kafka_records_and_upstream_records_share_a_batch_in_order() -> None:
    """A spool written by an older gateway (Kafka records) replays next to the new upstream records."""
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def body(*names: str) -> dict:
        return {"api_key": "phc_a", "batch": [{"event": n, "distinct_id": "d", "properties": {}} for n in names]}

    rs = records(body("k1"), "1.1.1.1", now) + records(body("u1", "u2"), "1.1.1.1", now, True)
    rs += records(body("k2"), "1.1.1.1", now)
    (post,) = upstream_posts(rs)
    assert [e["event"] for e in orjson.loads(gzip.decompress(post.body))["batch"]] == ["k1", "u1", "u2", "k2"]


def test_passthrough_record_round_trip() -> None:
    headers = CIMultiDict({"Content-Type": "text/plain", "Content-Encoding": "gzip", "Cookie": "x"})
    record = passthrough_record("/e/?compression=gzip-js", headers, "9.9.9.9", b"\x1f\x8b\x08body")
    (post,) = upstream_posts([record])
    assert (post.path, post.client_ip, post.body) == ("/e/?compression=gzip-js", "9.9.9.9", b"\x1f\x8b\x08body")
    assert dict(post.headers) == {"content-type": "text/plain", "content-encoding": "gzip"}
