"""The shipped nginx/ config in front of a real gateway subprocess, over HTTP and HTTPS.

The config files are copied as they are; only the documented deployment-specific lines (listen
ports, the upstream address, log and temp paths, the worker user, the CDN trust in real-ip.conf)
are rewritten, each one asserted to exist, so a change to the shipped files cannot silently
detach these tests from them.

Loopback has a whole /8, so clients connect from distinct source addresses (127.0.0.2, …) while
nginx reaches the gateway from 127.0.0.1: a wrong X-Forwarded-For pairing shows up as a wrong `ip`.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import shutil
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.services.base import free_ports
from tests.services.nginx_server import NginxServer, nginx_test
from tests.support.processes import REPO_ROOT, GatewayProcess, spool_dump

NGINX_DIR = REPO_ROOT / "nginx"
TOKEN = "phc_nginx_front"
CDN = "127.0.0.3"  # the address the test's real-ip.conf trusts as a CDN edge
DIRECT = "127.0.0.2"  # a client talking to nginx directly
MiB = 1024 * 1024


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected exactly one {old!r} in the shipped nginx config"
    return text.replace(old, new)


def render_config(dest: Path, *, http_port: int, https_port: int, upstream: str, real_ip: str = "") -> Path:
    """Copy nginx/ to `dest` with the deployment-specific lines set for this machine; returns nginx.conf."""
    shutil.copytree(NGINX_DIR, dest)
    write_certificate(dest / "tls")
    conf = dest / "nginx.conf"
    text = conf.read_text()
    # Tests run as root with a private temp dir that `nginx`/`nobody` workers could not enter.
    text = replace_once(text, "user nginx;", "user root;")
    text = replace_once(text, "listen 80;\n", f"listen 127.0.0.1:{http_port};\n")
    text = replace_once(text, "listen 443 ssl http2;\n", f"listen 127.0.0.1:{https_port} ssl http2;\n")
    text = replace_once(text, "        listen [::]:80;\n", "")
    text = replace_once(text, "        listen [::]:443 ssl http2;\n", "")
    text = replace_once(
        text, "access_log /var/log/nginx/access.log posthog_gateway;",
        f"access_log {dest}/access.log posthog_gateway;\n"
        + "".join(f"    {kind}_temp_path {dest}/tmp-{kind};\n"
                  for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
    )
    conf.write_text(text)
    upstream_conf = dest / "posthog-gateway" / "upstream.conf"
    upstream_conf.write_text(replace_once(upstream_conf.read_text(), "server 127.0.0.1:8000", f"server {upstream}"))
    if real_ip:
        (dest / "posthog-gateway" / "real-ip.conf").write_text(real_ip)
    return conf


def write_certificate(directory: Path) -> None:
    """A self-signed certificate for 127.0.0.1 at the paths nginx.conf names (tls/fullchain.pem, tls/privkey.pem)."""
    directory.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "privkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Front:
    """nginx (HTTP and HTTPS ports) in front of a gateway subprocess."""

    http_port: int
    https_port: int
    cafile: Path
    gateway: GatewayProcess

    @property
    def tls(self) -> ssl.SSLContext:
        return tls_client(self.cafile)

    def connect(self, scheme: str = "http", source: str = DIRECT) -> http.client.HTTPConnection:
        # http.client: no redirect following (a 3xx must show) and a choosable source address.
        if scheme == "https":
            return http.client.HTTPSConnection("127.0.0.1", self.https_port, context=self.tls,
                                               source_address=(source, 0), timeout=30)
        return http.client.HTTPConnection("127.0.0.1", self.http_port, source_address=(source, 0), timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None, *, scheme: str = "http",
                source: str = DIRECT, headers: dict[str, str] | None = None) -> Response:
        conn = self.connect(scheme, source)
        try:
            return send(conn, method, path, body, headers)
        finally:
            conn.close()


def send(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Response:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return Response(resp.status, resp.headers, resp.read())


def tls_client(cafile: Path) -> ssl.SSLContext:
    """A client context that trusts only the test's self-signed certificate."""
    return ssl.create_default_context(cafile=str(cafile))


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    root = tmp_path_factory.mktemp("nginx-front")
    # The gateway's own per-IP limit is off so a 429 here can only come from nginx's limit_req; its
    # body limits are above nginx's so a 413 for /e/ can only come from nginx too.
    gateway = GatewayProcess(
        root / "data", "--trusted-proxy-hops", "1", "--rate-limit-ip", "off",
        "--event-body-limit", "8M", "--replay-body-limit", "64M",
    ).start()
    http_port, https_port = free_ports(2)
    conf = render_config(
        root / "conf", http_port=http_port, https_port=https_port, upstream=f"127.0.0.1:{gateway.port}",
        real_ip=f"set_real_ip_from {CDN};\nreal_ip_header X-Forwarded-For;\nreal_ip_recursive on;\n",
    )
    server = NginxServer(root=root / "prefix", conf=conf, ports=[http_port, https_port])
    server.start()
    try:
        yield Front(http_port, https_port, root / "conf" / "tls" / "fullchain.pem", gateway)
    finally:
        server.stop()
        gateway.stop()


def event(name: str, **properties: Any) -> dict[str, Any]:
    return {"event": name, "uuid": str(uuid.uuid4()), "distinct_id": "u1",
            "properties": {"token": TOKEN, **properties}}


def stored(front: Front) -> dict[str, dict[str, Any]]:
    """Spooled records by event uuid."""
    return {record["value"]["uuid"]: record for record in spool_dump(front.gateway.data_dir)}


def test_shipped_config_passes_nginx_t(tmp_path: Path) -> None:
    http_port, https_port = free_ports(2)
    conf = render_config(tmp_path / "conf", http_port=http_port, https_port=https_port, upstream="127.0.0.1:9")
    assert "syntax is ok" in nginx_test(conf, tmp_path / "prefix")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_client_ip_is_the_peer_of_nginx_not_a_forged_header(front: Front, scheme: str) -> None:
    sent = event("direct")
    resp = front.request("POST", "/e/", orjson.dumps(sent), scheme=scheme,
                         headers={"X-Forwarded-For": "6.6.6.6", "Content-Type": "application/json"})
    assert resp.status == 200, resp.body
    # The gateway's socket peer is nginx (127.0.0.1); the client connected from DIRECT.
    assert stored(front)[sent["uuid"]]["value"]["ip"] == DIRECT


def test_client_ip_behind_a_trusted_cdn_is_the_cdns_client(front: Front) -> None:
    sent = event("via-cdn")
    # The CDN appended the client it saw (198.51.100.7) to a chain the client forged (6.6.6.6).
    resp = front.request("POST", "/e/", orjson.dumps(sent), scheme="https", source=CDN,
                         headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.7"})
    assert resp.status == 200, resp.body
    assert stored(front)[sent["uuid"]]["value"]["ip"] == "198.51.100.7"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_versions(front: Front, version: ssl.TLSVersion) -> None:
    pinned = tls_client(front.cafile)
    pinned.minimum_version = pinned.maximum_version = version
    conn = http.client.HTTPSConnection("127.0.0.1", front.https_port, context=pinned, timeout=10)
    try:
        resp = send(conn, "GET", "/_liveness")
        assert resp.status == 200 and resp.json() == {"status": "ok"}
        assert conn.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/e", "/e/", "/i/v0/e", "/i/v0/e/", "/batch", "/batch/", "/capture", "/track/"])
def test_trailing_slash_and_none_both_reach_the_gateway(front: Front, path: str) -> None:
    sent = event(f"slash {path}")
    resp = front.request("POST", path, orjson.dumps({"api_key": TOKEN, "batch": [sent]}))
    assert resp.status == 200, (resp.status, resp.headers.get("Location"), resp.body)
    assert sent["uuid"] in stored(front)


@pytest.mark.parametrize("path", ["/s", "/s/"])
def test_replay_with_and_without_slash(front: Front, path: str) -> None:
    snap = event("$snapshot", **{"$session_id": "s-slash", "$window_id": "w", "$snapshot_data": [{"type": 2}]})
    resp = front.request("POST", path, orjson.dumps([snap]))
    assert resp.status == 200, resp.body


def test_query_string_reaches_the_gateway_byte_for_byte(front: Front) -> None:
    sent = event("from-query", note="~+/= äö")
    # Standard base64 with '+' '/' '=' percent-encoded, as posthog-js's GET fallback sends it.
    data = base64.b64encode(orjson.dumps(sent)).decode()
    encoded = data.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    resp = front.request("GET", f"/e/?data={encoded}&ip=1&_={int(time.time() * 1000)}&ver=1.200.0")
    assert resp.status == 200, resp.body
    assert stored(front)[sent["uuid"]]["data"]["properties"]["note"] == "~+/= äö"


def test_event_route_body_over_2m_is_413_from_nginx_with_cors(front: Front) -> None:
    big = orjson.dumps([event("big", blob="x" * (3 * MiB))])
    resp = front.request("POST", "/e/", big, headers={"Origin": "https://app.example.com"})
    assert resp.status == 413
    assert resp.json()["code"] == "payload_too_large"
    # Readable cross-origin, so posthog-js drops it instead of retrying a request that cannot pass.
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    # The same 3 MB goes through /batch, whose limit is 20 MB: limits are per route, not global.
    batch = orjson.dumps({"api_key": TOKEN, "batch": [event("big-batch", blob="x" * (3 * MiB))]})
    assert front.request("POST", "/batch/", batch).status == 200


def test_batch_over_20m_is_413(front: Front) -> None:
    huge = b"[" + b" " * (21 * MiB) + b"]"
    assert front.request("POST", "/batch/", huge).status == 413


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_large_replay_body_streams_through(front: Front, scheme: str) -> None:
    # 30 MB: over the event and batch limits and over the gateway's 25M default (it runs with 64M).
    snap = event("$snapshot", **{"$session_id": f"s-big-{scheme}", "$window_id": "w",
                                 "$snapshot_data": [{"type": 2, "data": "r" * (30 * MiB)}]})
    body = orjson.dumps([snap])
    assert len(body) > 30 * MiB
    resp = front.request("POST", "/s/", body, scheme=scheme)
    assert resp.status == 200, resp.body


def gateway_in_flight(front: Front) -> float:
    """The gateway's in-flight gauge, read from it directly (nginx hides /metrics)."""
    conn = http.client.HTTPConnection("127.0.0.1", front.gateway.port, timeout=10)
    try:
        text = send(conn, "GET", "/metrics").body.decode()
    finally:
        conn.close()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("gateway_in_flight_requests "))


def wait_idle(front: Front, timeout: float = 10.0) -> None:
    """Until the gateway handles no request (an aborted upload is noticed only on its next read)."""
    deadline = time.monotonic() + timeout
    while gateway_in_flight(front) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway_in_flight(front) == 0


def in_flight_while_uploading(front: Front, path: str, watch: float) -> float:
    """Highest gateway in-flight count seen within `watch` seconds of a half-sent body to `path`."""
    wait_idle(front)
    with socket.create_connection(("127.0.0.1", front.http_port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {10 * MiB}\r\n\r\n".encode())
        sock.sendall(b"x" * MiB)
        deadline, seen = time.monotonic() + watch, 0.0
        while time.monotonic() < deadline and not seen:
            seen = max(seen, gateway_in_flight(front))
            time.sleep(0.05)
    wait_idle(front)
    return seen


def test_replay_bodies_stream_to_the_gateway_others_are_buffered(front: Front) -> None:
    # proxy_request_buffering off on /s/: the gateway is already handling the request mid-upload.
    assert in_flight_while_uploading(front, "/s/", watch=5.0) >= 1
    # /batch is buffered by nginx: the gateway sees nothing of a slow upload until it is complete.
    assert in_flight_while_uploading(front, "/batch/", watch=1.5) == 0


def test_health_passes_through_and_metrics_do_not(front: Front) -> None:
    assert front.request("GET", "/_liveness").json() == {"status": "ok"}
    ready = front.request("GET", "/_readiness", scheme="https")
    assert ready.status == 200 and ready.json()["ready"] is True
    assert front.request("GET", "/metrics").status == 404


def test_limit_req_answers_429_after_the_burst(front: Front) -> None:
    # Its own source address: the zone is per client IP, and other tests must not share this one's.
    conn = front.connect("http", source="127.0.0.9")
    body = orjson.dumps([event("flood")])
    responses: list[Response] = []
    try:
        # Until refused: the burst of 200 runs out once requests come faster than the 100 r/s refill.
        while len(responses) < 3000 and (not responses or responses[-1].status != 429):
            responses.append(send(conn, "POST", "/e/", body))
    finally:
        conn.close()
    statuses = [r.status for r in responses]
    # burst=200 nodelay: the first 201 pass at once, none is delayed or refused.
    assert all(status == 200 for status in statuses[:200]), statuses[:200]
    assert statuses[-1] == 429 and set(statuses) <= {200, 429}
    limited = responses[-1]
    assert limited.headers["Retry-After"] == "1"
    assert limited.json()["code"] == "rate_limited"
    # Another client is unaffected.
    assert front.request("POST", "/e/", body, source="127.0.0.10").status == 200


def test_unreachable_gateway_is_503_with_retry_after(tmp_path: Path) -> None:
    http_port, https_port, closed = free_ports(3)
    conf = render_config(tmp_path / "conf", http_port=http_port, https_port=https_port,
                         upstream=f"127.0.0.1:{closed}")
    server = NginxServer(root=tmp_path / "prefix", conf=conf, ports=[http_port, https_port])
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        resp = send(conn, "POST", "/e/", b"[]", {"Origin": "https://app.example.com"})
        conn.close()
    finally:
        server.stop()
    # 503 + Retry-After, readable cross-origin: every PostHog SDK retries it.
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert resp.headers["Access-Control-Expose-Headers"] == "Retry-After"
    assert resp.json()["code"] == "unavailable"
