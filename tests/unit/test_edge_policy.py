"""Edge building blocks without HTTP: client IP trust, origin matching, the limiter, config checks, CSP."""

from __future__ import annotations

import threading
from unittest import mock

import limits
import pytest
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from gateway.cli import main
from gateway.edge.client_ip import ClientIpResolver
from gateway.edge.cors import origin_matcher
from gateway.edge.csp import site_directives
from gateway.edge.ratelimit import Rate, SlidingWindow, route_rates
from gateway.edge.setup import Edge, route_methods
from gateway.settings import ConfigError
from tests.support.settings import parse_serve_settings


@pytest.mark.parametrize(
    ("resolver", "peer", "headers", "expected"),
    [
        (ClientIpResolver(), "1.1.1.1", {"X-Forwarded-For": "9.9.9.9"}, "1.1.1.1"),
        (ClientIpResolver(trusted_hops=1), "10.0.0.1", {"X-Forwarded-For": "6.6.6.6, 2.2.2.2"}, "2.2.2.2"),
        (ClientIpResolver(trusted_hops=2), "10.0.0.1", {"X-Forwarded-For": "2.2.2.2, 10.0.0.9"}, "2.2.2.2"),
        (ClientIpResolver(trusted_cidrs=["10.0.0.0/8"]), "10.0.0.1",
         {"X-Forwarded-For": "6.6.6.6, 2.2.2.2, 10.3.3.3"}, "2.2.2.2"),
        (ClientIpResolver(trusted_cidrs=["10.0.0.0/8"]), "3.3.3.3", {"X-Forwarded-For": "2.2.2.2"},
         "3.3.3.3"),
        (ClientIpResolver(trusted_cidrs=["10.0.0.0/8"]), "10.0.0.1", {"X-Forwarded-For": "junk, 10.0.0.2"},
         "10.0.0.2"),
        (ClientIpResolver(trusted_cidrs=["10.0.0.0/8"], header="CF-Connecting-IP"), "10.0.0.1",
         {"CF-Connecting-IP": "2001:db8::1", "X-Forwarded-For": "6.6.6.6"}, "2001:db8::1"),
        (ClientIpResolver(trusted_cidrs=["10.0.0.0/8"], header="CF-Connecting-IP"), "5.5.5.5",
         {"CF-Connecting-IP": "6.6.6.6"}, "5.5.5.5"),
        (ClientIpResolver(trusted_cidrs=["10.0.0.0/8"], header="Fly-Client-IP"), "10.0.0.1",
         {"Fly-Client-IP": "not-an-ip"}, "10.0.0.1"),
    ],
)
def test_client_ip_trust_rules(resolver: ClientIpResolver, peer: str, headers: dict, expected: str) -> None:
    assert resolver.resolve(peer, headers) == expected


def test_origin_matcher() -> None:
    allowed = origin_matcher(["https://app.example.com", "*.example.org", "https://*.secure.net"])
    assert allowed("https://app.example.com") and allowed("HTTPS://APP.EXAMPLE.COM")
    assert not allowed("http://app.example.com")
    assert allowed("http://x.example.org:3000") and not allowed("https://example.org")
    assert allowed("https://a.secure.net") and not allowed("http://a.secure.net")
    assert origin_matcher([]) is None
    with pytest.raises(ValueError):
        origin_matcher(["app.example.com"])


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_sliding_window_decides_like_limits() -> None:
    """Same hits at the same instants: our counter and limits' sliding window counter agree."""
    clock = FakeClock(1_000_000.0)
    ours = SlidingWindow("ip:events", Rate.parse("20/2seconds"), clock=clock)
    theirs = SlidingWindowCounterRateLimiter(MemoryStorage())
    item = limits.parse("20/2seconds")
    decisions = []
    with mock.patch("limits.storage.memory.time.time", clock):
        for step in range(400):
            clock.now += 0.013 * (1 + step % 7)
            decisions.append((ours.hit("k") == 0, theirs.hit(item, "k")))
    assert all(a == b for a, b in decisions), [i for i, (a, b) in enumerate(decisions) if a != b]
    assert 0 < sum(a for a, _ in decisions) < 400


def test_sliding_window_retry_after_and_threads() -> None:
    window = SlidingWindow("ip:events", Rate.parse("1000/hour"))
    allowed = []

    def worker() -> None:
        allowed.append(sum(window.hit("shared") == 0 for _ in range(500)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 1000
    assert 1 <= window.hit("shared") <= 3600


def test_route_rates() -> None:
    rates = route_rates(["events=10/second", "replay=off"], ["events", "batch", "replay"],
                        {"events": "1/second", "batch": "5/minute", "replay": "1/second"})
    assert rates == {"events": Rate(10, 1.0), "batch": Rate(5, 60.0)}
    assert route_rates(["3/second"], ["a", "b"], {}) == {"a": Rate(3, 1.0), "b": Rate(3, 1.0)}
    with pytest.raises(ValueError, match="unknown route"):
        route_rates(["flagz=1/second"], ["events"], {})


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--trusted-proxy-cidrs", "10.0.0.0/33"], "trusted_proxy_cidrs"),
        (["--client-ip-header", "CF-Connecting-IP"], "client_ip_header"),
        (["--rate-limit-ip", "events=lots"], "rate_limit_ip"),
        (["--rate-limit-token", "nope=1/second"], "rate_limit_token"),
        # Only capture requests are read for their token: a per-token flags limit would never apply.
        (["--upstream", "http://ph:8000", "--rate-limit-token", "flags=1/second"], "rate_limit_token"),
        (["--rate-limit-storage", "memcached://x"], "rate_limit_storage"),
        (["--cors-origins", "example.com"], "cors_origins"),
        (["--route-methods", "events"], "route_methods"),
        (["--admin-token-file", "/nonexistent/token"], "admin_token_file"),
        (["--tls-cert", "/nonexistent/cert.pem"], "tls_cert"),
        (["--max-in-flight", "-1"], "max_in_flight"),
    ],
)
def test_bad_edge_settings_name_the_setting(argv: list[str], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        parse_serve_settings(argv)


def test_edge_settings_from_env() -> None:
    settings = parse_serve_settings([], environ={
        "GATEWAY_DROP_EVENTS": "phc_a,phc_b:user", "GATEWAY_CORS_ORIGINS": "*.example.com",
        "GATEWAY_MAX_IN_FLIGHT": "64"})
    assert settings.drop_events == ("phc_a", "phc_b:user")
    assert settings.cors_origins == ("*.example.com",) and settings.max_in_flight == 64


def test_a_token_rate_for_every_route_limits_the_capture_routes() -> None:
    settings = parse_serve_settings(["--upstream", "http://ph:8000", "--rate-limit-token", "5/second"])
    edge = Edge.from_settings(settings, ["events", "batch", "replay", "flags", "api", "logs", "assets"])
    assert sorted(edge.rate_limits.by_token) == ["batch", "events", "replay"]


def test_route_methods_from_env_keep_their_commas() -> None:
    """The env var's commas split `ROUTE=M1,M2` too: `replay=POST,GET,events=POST` is two routes' methods,
    as the flag given twice is."""
    settings = parse_serve_settings([], environ={"GATEWAY_ROUTE_METHODS": "replay=POST,GET,events=POST"})
    edge = Edge.from_settings(settings, ["events", "batch", "replay"])
    assert edge.methods == {"replay": {"POST", "GET"}, "events": {"POST"}, "batch": {"GET", "POST", "HEAD"}}
    assert edge.methods == Edge.from_settings(
        parse_serve_settings(["--route-methods", "replay=POST,GET", "--route-methods", "events=POST"]),
        ["events", "batch", "replay"]).methods
    with pytest.raises(ValueError, match="invalid route methods"):
        route_methods(["GET", "replay=POST"], ["replay"])


def test_env_lists_take_spaces_after_commas() -> None:
    """`GATEWAY_ALLOW_TOKENS="phc_a, phc_b"` means phc_b, not " phc_b" (whose events would all get 403)."""
    settings = parse_serve_settings([], environ={
        "GATEWAY_ALLOW_TOKENS": "phc_a, phc_b", "GATEWAY_DROP_EVENTS": "phc_c , phc_d:user",
        "GATEWAY_PREFIX": "/ingest, /t"})
    assert settings.allow_tokens == ("phc_a", "phc_b") and settings.drop_events == ("phc_c", "phc_d:user")
    assert settings.prefix == ("/ingest", "/t")


def test_csp_directives_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert site_directives("https://gw.example.com/", replay=False) == {
        "script-src": ["https://gw.example.com"], "connect-src": ["https://gw.example.com"]}
    assert main(["csp", "--origin", "https://gw.example.com:8443"]) == 0
    assert capsys.readouterr().out.strip() == (
        "script-src https://gw.example.com:8443; connect-src https://gw.example.com:8443; "
        "worker-src https://gw.example.com:8443 blob:"
    )
    assert main(["csp", "--origin", "https://gw.example.com/path"]) == 2
