"""Edge policy over real HTTP: routes, tokens, rate limits, overload, timeouts, CORS, headers, admin, TLS."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import socket
import ssl
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.edge.setup import Edge
from gateway.reload import Reloader
from gateway.settings import ServeSettings
from gateway.spool import iter_records
from tests.support.inprocess import InProcessGateway, free_port, settings_for

TOKEN = "phc_edge_token"
TRUST_LOOPBACK = {"trusted_proxy_cidrs": ("127.0.0.1/32",)}


def event(token: str = TOKEN, distinct_id: str = "user-1") -> dict:
    return {"event": "$pageview", "uuid": str(uuid.uuid4()), "distinct_id": distinct_id,
            "properties": {"token": token}}


def post(gateway: InProcessGateway, body: object, path: str = "/e/", **headers: str) -> requests.Response:
    return requests.post(gateway.url + path, data=orjson.dumps(body), headers=headers, timeout=10)


def from_ip(ip: str) -> dict[str, str]:
    """Headers a trusted loopback proxy would add for client `ip`."""
    return {"X-Forwarded-For": ip}


def stored_uuids(gateway: InProcessGateway) -> set[str]:
    return {orjson.loads(r.value)["uuid"] for r in iter_records(gateway.sink.spool.directory)}


def metric(gateway: InProcessGateway, prefix: str, **headers: str) -> float:
    text = requests.get(gateway.url + "/metrics", headers=headers, timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["error"]


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    """`start(**settings)` → a running gateway in its own directory; all stopped at teardown."""
    running: list[InProcessGateway] = []

    def start_gateway(**overrides: object) -> InProcessGateway:
        overrides.setdefault("fsync", "never")
        gateway = InProcessGateway(settings_for(tmp_path / f"gw{len(running)}", **overrides)).start()
        running.append(gateway)
        return gateway

    yield start_gateway
    for gateway in running:
        gateway.stop()


# --- routes, methods, tokens ------------------------------------------------------------------


def test_only_configured_routes_exist(start) -> None:
    gateway = start(routes=("events",), route_methods=("events=POST",))
    assert post(gateway, event()).status_code == 200
    assert_error(post(gateway, {"api_key": TOKEN, "batch": [event()]}, "/batch/"), 404, "not_found")
    assert_error(requests.get(gateway.url + "/admin/../etc", timeout=5), 404, "not_found")
    assert_error(requests.get(gateway.url + "/e/", timeout=5), 405, "method_not_allowed")
    assert_error(requests.delete(gateway.url + "/e/", timeout=5), 405, "method_not_allowed")


@pytest.mark.parametrize("path", ["/e/", "/e", "/i/v0/e/", "/batch", "/s/"])
def test_options_answered_locally_on_every_route(start, path: str) -> None:
    gateway = start(route_methods=("replay=POST",))
    response = requests.options(gateway.url + path, headers={"Origin": "https://a.example"}, timeout=5)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://a.example"


def test_preflight_advertises_the_methods_each_route_accepts(start) -> None:
    """`--route-methods` is what the preflight's Access-Control-Allow-Methods says: a POST-only route does not
    advertise GET, a route given PUT advertises it (a browser sends a non-safelisted method only if listed)."""
    gateway = start(route_methods=("events=POST", "replay=POST,PUT,OPTIONS"))
    expected = {"/e/": "POST, OPTIONS", "/s/": "POST, PUT, OPTIONS", "/batch/": "GET, HEAD, POST, OPTIONS"}
    for path, methods in expected.items():
        preflight = requests.options(gateway.url + path, timeout=5, headers={
            "Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Methods"] == methods, path
    assert_error(requests.get(gateway.url + "/e/", timeout=5), 405, "method_not_allowed")


def test_token_allowlist(start) -> None:
    gateway = start(allow_tokens=(TOKEN, "phc_other"))
    assert post(gateway, event()).status_code == 200
    other = {"api_key": "phc_other", "batch": [event("phc_other")]}
    assert post(gateway, other, "/batch/").status_code == 200
    assert_error(post(gateway, event("phc_stranger")), 403, "ingest_key_unknown")
    assert_error(post(gateway, {"event": "x", "distinct_id": "d"}), 401, "ingest_key_required")


def test_drop_list_answers_200_stores_nothing_and_counts(start) -> None:
    gateway = start(drop_events=("phc_dropped", f"{TOKEN}:bot-7"))
    before = metric(gateway, 'capture_events_dropped_total{cause="token_dropper"}')
    whole_token = [event("phc_dropped"), event("phc_dropped")]
    assert post(gateway, whole_token).status_code == 200
    kept, dropped = event(distinct_id="person"), event(distinct_id="bot-7")
    assert post(gateway, [kept, dropped]).status_code == 200
    assert post(gateway, dropped).status_code == 200
    stored = stored_uuids(gateway)
    assert kept["uuid"] in stored
    assert not stored & {e["uuid"] for e in [*whole_token, dropped]}
    assert metric(gateway, 'capture_events_dropped_total{cause="token_dropper"}') - before == 4


# --- rate limits and overload ------------------------------------------------------------------


def test_ip_rate_limit_429_after_burst_other_ip_unaffected(start) -> None:
    gateway = start(rate_limit_ip=("events=5/minute",), **TRUST_LOOPBACK)
    statuses = [post(gateway, event(), **from_ip("203.0.113.1")).status_code for _ in range(5)]
    assert statuses == [200] * 5
    limited = post(gateway, event(), **from_ip("203.0.113.1"), Origin="https://site.example")
    assert_error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["Access-Control-Expose-Headers"] == "Retry-After"
    assert post(gateway, event(), **from_ip("203.0.113.2")).status_code == 200
    # Other route families have their own (default) limit.
    assert post(gateway, {"api_key": TOKEN, "batch": [event()]}, "/batch/", **from_ip("203.0.113.1")).ok


def test_per_token_rate_limit(start) -> None:
    gateway = start(rate_limit_ip=("off",), rate_limit_token=("events=3/minute",))
    assert [post(gateway, event()).status_code for _ in range(3)] == [200] * 3
    limited = post(gateway, event())
    assert_error(limited, 429, "rate_limited")
    assert "Retry-After" in limited.headers
    assert post(gateway, event("phc_other")).status_code == 200
    assert metric(gateway, 'gateway_rate_limited_total{by="token",route="events"}') >= 1


def test_memory_limiter_exact_under_concurrent_load(start) -> None:
    """Hundreds of concurrent requests over 8 IPs: exactly the limit passes per IP, nothing errors."""
    gateway = start(rate_limit_ip=("events=40/hour",), **TRUST_LOOPBACK)
    body = orjson.dumps(event())

    async def hammer() -> list[tuple[str, int]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            async def one(ip: str) -> tuple[str, int]:
                async with session.post(gateway.url + "/e/", data=body, headers=from_ip(ip)) as response:
                    return ip, response.status

            ips = [f"198.51.100.{i % 8}" for i in range(8 * 60)]
            return await asyncio.gather(*(one(ip) for ip in ips))

    results = asyncio.run(hammer())
    assert {status for _, status in results} <= {200, 429}
    for i in range(8):
        assert sum(1 for ip, status in results if ip == f"198.51.100.{i}" and status == 200) == 40


def test_redis_limiter_is_shared_by_two_gateways(start, redis_url: str) -> None:
    shared = {"rate_limit_storage": redis_url, "rate_limit_sync_interval": 0.05,
              "rate_limit_ip": ("events=10/hour",), **TRUST_LOOPBACK}
    first, second = start(**shared), start(**shared)
    client = from_ip(f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7")
    assert [post(first, event(), **client).status_code for _ in range(6)] == [200] * 6
    time.sleep(0.3)  # a few sync intervals
    statuses = []
    for _ in range(6):
        statuses.append(post(second, event(), **client).status_code)
        # The second gateway learns the cluster count of a client within one sync of seeing it.
        time.sleep(0.15)
    assert statuses == [200] * 4 + [429] * 2


def test_redis_down_fails_open_and_is_counted(start) -> None:
    gateway = start(rate_limit_storage=f"redis://127.0.0.1:{free_port()}/0", rate_limit_sync_interval=0.05,
                    rate_limit_ip=("events=3/hour",), **TRUST_LOOPBACK)
    before = metric(gateway, "gateway_rate_limit_sync_errors_total")
    assert [post(gateway, event(), **from_ip("192.0.2.9")).status_code for _ in range(3)] == [200] * 3
    time.sleep(0.3)
    assert metric(gateway, "gateway_rate_limit_sync_errors_total") > before
    # Local limits still hold while the shared storage is away.
    assert post(gateway, event(), **from_ip("192.0.2.9")).status_code == 429
    assert post(gateway, event(), **from_ip("192.0.2.10")).status_code == 200


def stalled_request(gateway: InProcessGateway, path: str = "/e/") -> socket.socket:
    """A request whose body never completes (headers promise 100 bytes, 10 arrive)."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode() + b"[" * 10)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (aiohttp then lingers up to 10 s discarding the rest of the body)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < content_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_stalled_body_gets_408_and_close(start) -> None:
    gateway = start(body_read_timeout=0.3)
    sock = stalled_request(gateway)
    started = time.monotonic()
    answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"Connection: close" in answer
    assert b'"code":"body_read_timeout"' in answer
    assert 0.25 < time.monotonic() - started < 5


def test_overload_503_with_retry_after(start) -> None:
    gateway = start(max_in_flight=2, body_read_timeout=1)
    stalled = [stalled_request(gateway) for _ in range(2)]
    deadline = time.monotonic() + 5
    while metric(gateway, "gateway_in_flight_requests") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    response = post(gateway, event(), Origin="https://site.example")
    assert_error(response, 503, "overloaded")
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"
    assert requests.get(gateway.url + "/_liveness", timeout=5).status_code == 200  # probes are not bounded
    for sock in stalled:
        assert read_response(sock).startswith(b"HTTP/1.1 408")
    assert post(gateway, event()).status_code == 200


# --- CORS and headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://eu.example.org", True),
        ("http://a.b.example.org:8080", True),
        ("https://example.org", False),
        ("https://app.example.com.evil.net", False),
        ("https://evil.net", False),
    ],
)
def test_cors_origin_allowlist(start, origin: str, allowed: bool) -> None:
    gateway = start(cors_origins=("https://app.example.com", "*.example.org"))
    preflight = requests.options(gateway.url + "/e/", timeout=5, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,baggage"})
    response = post(gateway, event(), Origin=origin)
    assert response.status_code == 200
    if allowed:
        for answer in (preflight, response):
            assert answer.headers["Access-Control-Allow-Origin"] == origin
            assert answer.headers["Access-Control-Allow-Credentials"] == "true"
            assert answer.headers["Vary"] == "Origin"
        assert preflight.headers["Access-Control-Allow-Headers"] == "content-type,baggage"
        assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"
    else:
        for answer in (preflight, response):
            assert not [h for h in answer.headers if h.lower().startswith("access-control-")]


def test_preflight_does_not_echo_junk_headers(start) -> None:
    gateway = start()
    response = requests.options(gateway.url + "/e/", timeout=5, headers={
        "Origin": "https://a.example", "Access-Control-Request-Headers": "x-ok, <script>"})
    assert "Access-Control-Allow-Headers" not in response.headers


def test_security_headers_without_tls(start) -> None:
    gateway = start(content_security_policy="default-src 'none'")
    for response in (post(gateway, event()), requests.get(gateway.url + "/nope", timeout=5),
                     requests.post(gateway.url + "/e/", data=b"{bad", timeout=5)):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Content-Security-Policy"] == "default-src 'none'"
        assert "Strict-Transport-Security" not in response.headers


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_serving_with_hsts(start, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    gateway = start(tls_cert=cert, tls_key=key)
    assert gateway.url.startswith("https://")
    response = requests.post(gateway.url + "/e/", data=orjson.dumps(event()), verify=str(cert), timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "Ok"}
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(gateway.url.replace("https", "http") + "/_liveness", timeout=5)


# --- management endpoints ----------------------------------------------------------------------


def test_management_needs_allowed_cidr_or_bearer_token(start, tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("s3cret\n")
    gateway = start(admin_allow_cidrs=("10.0.0.0/8",), admin_token_file=tmp_path / "admin-token",
                    **TRUST_LOOPBACK)
    assert_error(requests.get(gateway.url + "/metrics", timeout=5), 403, "forbidden")
    wrong = requests.get(gateway.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 403
    spoofed = requests.get(gateway.url + "/metrics", timeout=5,
                           headers={"X-Forwarded-For": "10.0.0.1, 203.0.113.50"})
    assert spoofed.status_code == 403  # the client left of an untrusted hop is not believed
    assert requests.get(gateway.url + "/metrics", headers={"Authorization": "Bearer s3cret"}, timeout=5).ok
    assert requests.get(gateway.url + "/metrics", headers=from_ip("10.1.2.3"), timeout=5).ok
    assert requests.get(gateway.url + "/_liveness", timeout=5).ok  # probes stay open


def test_management_on_separate_listener(start) -> None:
    admin_port = free_port()
    gateway = start(admin_port=admin_port)
    assert_error(requests.get(gateway.url + "/metrics", timeout=5), 404, "not_found")
    response = requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5)
    assert response.status_code == 200 and "gateway_http_requests_total" in response.text
    # Health stays where load balancers and the k8s probes look for it: the main port (as `--help` says).
    assert requests.get(gateway.url + "/_readiness", timeout=5).status_code == 200
    assert requests.get(f"http://127.0.0.1:{admin_port}/_readiness", timeout=5).status_code == 404
    assert "health probes stay on the main port" in " ".join(
        ServeSettings.__dataclass_fields__["admin_port"].metadata["help"].split())


def tls_client(cert: Path, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion, ciphers: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1/TLSv1_1, on purpose
    context.set_ciphers(ciphers or "DEFAULT:@SECLEVEL=0")  # let the client offer what the server must refuse
    context.minimum_version, context.maximum_version = minimum, maximum
    return context


def handshake(gateway: InProcessGateway, context: ssl.SSLContext) -> str:
    """The negotiated protocol version, or raises ssl.SSLError."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.version() or ""


def test_tls_only_1_2_and_1_3_with_aead_ciphers(start, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    gateway = start(tls_cert=cert, tls_key=key)
    v = ssl.TLSVersion
    assert handshake(gateway, tls_client(cert, v.TLSv1_3, v.TLSv1_3)) == "TLSv1.3"
    assert handshake(gateway, tls_client(cert, v.TLSv1_2, v.TLSv1_2)) == "TLSv1.2"
    # A TLS 1.0/1.1 client: the server hangs up on its hello (asyncio's TLS closes without flushing the
    # alert). A client-side refusal would fail before connecting (NO_PROTOCOLS_AVAILABLE) instead.
    with pytest.raises(ssl.SSLError, match=r"UNEXPECTED_EOF|ALERT_PROTOCOL_VERSION"):
        handshake(gateway, tls_client(cert, v.TLSv1, v.TLSv1_1))
    with pytest.raises((ssl.SSLError, ConnectionError)):  # TLS 1.2 offering only CBC suites: no shared cipher
        handshake(gateway, tls_client(cert, v.TLSv1_2, v.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256:@SECLEVEL=0"))


def https_connection(gateway: InProcessGateway, cert: Path) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(cert))
    return http.client.HTTPSConnection("127.0.0.1", gateway.port, context=context, timeout=5)


def post_on(conn: http.client.HTTPSConnection) -> int:
    conn.request("POST", "/e/", body=orjson.dumps(event()), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def test_cert_reload_serves_new_connections_and_keeps_open_ones(start, tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "live").mkdir()
    old_cert, _ = self_signed(tmp_path / "old")
    cert, key = self_signed(tmp_path / "live")
    cert.write_bytes(old_cert.read_bytes())
    key.write_bytes((tmp_path / "old" / "key.pem").read_bytes())
    gateway = start(tls_cert=cert, tls_key=key)
    kept = https_connection(gateway, old_cert)
    assert post_on(kept) == 200

    (tmp_path / "new").mkdir()
    new_cert, new_key = self_signed(tmp_path / "new")
    cert.write_bytes(new_cert.read_bytes())  # renewed in place, same file names
    key.write_bytes(new_key.read_bytes())
    reloader = Reloader(gateway.settings, lambda: Edge.from_settings(gateway.settings, gateway.edge.methods),
                        gateway.edge)

    async def sighup() -> bool:  # what the SIGHUP handler runs, on the gateway's loop
        return reloader.reload()

    assert asyncio.run_coroutine_threadsafe(sighup(), gateway._loop).result(5)
    fresh = https_connection(gateway, new_cert)
    assert post_on(fresh) == 200
    assert post_on(kept) == 200  # the open keep-alive connection carries on with the old certificate
    assert kept.sock is not None
    assert kept.sock.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(old_cert.read_text())
    with pytest.raises(ssl.SSLCertVerificationError):  # new connections no longer get the old one
        post_on(https_connection(gateway, old_cert))

    cert.write_text("not a certificate")  # a broken renewal: refused, the running certificate stays
    assert not asyncio.run_coroutine_threadsafe(sighup(), gateway._loop).result(5)
    assert post_on(https_connection(gateway, new_cert)) == 200
    kept.close()
    fresh.close()


# --- request head limits -----------------------------------------------------------------------


def raw_exchange(gateway: InProcessGateway, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head)
        return read_response(sock)


def test_oversized_request_head_is_refused(start) -> None:
    gateway = start(max_header_bytes=1024, max_headers=16)
    ok = raw_exchange(gateway, b"GET /_liveness HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"a" * 900 + b"\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")
    for head in (
        b"GET /_liveness HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"a" * 2000 + b"\r\n\r\n",  # one long field
        b"GET /_liveness?" + b"q" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # long request line
        b"GET /_liveness HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(40)) + b"\r\n",
    ):
        answer = raw_exchange(gateway, head)
        assert answer.split(b" ", 2)[1] == b"400", answer[:200]  # aiohttp answers HTTP/1.0 400 and closes
    assert requests.get(gateway.url + "/_liveness", timeout=5).status_code == 200


def test_slow_request_head_is_cut_off(start) -> None:
    gateway = start(idle_timeout=0.5)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /e/ HTTP/1.1\r\nHost: x\r\n")
        closed = False
        while time.monotonic() - started < 5:  # dribbling more header bytes does not reset the timer
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                if sock.recv(1024, socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
        assert closed and 0.4 < time.monotonic() - started < 3
    assert requests.get(gateway.url + "/_liveness", timeout=5).status_code == 200
