"""Signals on a real `gateway serve`: SIGHUP reloads policy live, SIGTERM drains in-flight requests."""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import time
import uuid
from pathlib import Path

import orjson
import pytest
import requests

from gateway.edge.certs import write_dev_cert
from tests.support.processes import GatewayProcess, spool_dump

OLD_ORIGIN = "https://old.example.com"
NEW_ORIGIN = "https://new.example.com"


def event_body() -> bytes:
    return orjson.dumps({"event": "e", "distinct_id": "d", "uuid": str(uuid.uuid4()), "api_key": "phc_life"})


def write_config(path: Path, origin: str, rate: str) -> None:
    path.write_text(f'cors_origins = ["{origin}"]\nrate_limit_ip = ["events={rate}"]\n')


def post_on(conn: http.client.HTTPConnection, origin: str) -> http.client.HTTPResponse:
    conn.request("POST", "/e/", body=event_body(), headers={"Origin": origin, "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_sighup_reloads_rate_limit_and_cors_on_open_connections(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    write_config(config, OLD_ORIGIN, "3/minute")
    with GatewayProcess(tmp_path / "data", "--config", str(config)) as gateway:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
        statuses = [post_on(conn, NEW_ORIGIN).status for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        assert post_on(conn, NEW_ORIGIN).getheader("Access-Control-Allow-Origin") is None

        write_config(config, NEW_ORIGIN, "1000/minute")
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in gateway.log())
        # The same keep-alive connection carries on, under the new policy.
        response = post_on(conn, NEW_ORIGIN)
        assert response.status == 200 and response.getheader("Access-Control-Allow-Origin") == NEW_ORIGIN
        assert post_on(conn, OLD_ORIGIN).getheader("Access-Control-Allow-Origin") is None

        config.write_text('cors_origins = ["no-scheme.example.com"]\n')  # invalid: running config stays
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reload failed" in gateway.log())
        assert post_on(conn, NEW_ORIGIN).getheader("Access-Control-Allow-Origin") == NEW_ORIGIN
        conn.close()
        assert gateway.process.poll() is None
    reloaded = [orjson.loads(line) for line in gateway.log().splitlines() if "configuration reloaded" in line]
    assert set(reloaded[0]["applied"]) == {"cors_origins", "rate_limit_ip"}


def test_sighup_reaches_every_worker(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    write_config(config, OLD_ORIGIN, "1000/minute")
    with GatewayProcess(tmp_path / "data", "--config", str(config), "--workers", "2") as gateway:
        write_config(config, NEW_ORIGIN, "1000/minute")
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: gateway.log().count("configuration reloaded") == 2)
        for _ in range(20):  # new connections, spread over both workers
            response = requests.post(gateway.url + "/e/", data=event_body(), timeout=5,
                                     headers={"Origin": NEW_ORIGIN, "Connection": "close"})
            assert response.headers.get("Access-Control-Allow-Origin") == NEW_ORIGIN


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_completes_a_trickling_request_and_exits_0(tmp_path: Path, workers: int) -> None:
    with GatewayProcess(tmp_path / "data", "--workers", str(workers)) as gateway:
        body = event_body()
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        sock.sendall(b"POST /e/ HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        pieces = [body[i:i + 10] for i in range(0, len(body), 10)]
        sock.sendall(b"%x\r\n%s\r\n" % (len(pieces[0]), pieces[0]))
        time.sleep(0.3)  # the handler is now reading the body
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):  # no longer listening
            socket.create_connection(("127.0.0.1", gateway.port), timeout=2).close()
        for piece in pieces[1:]:  # trickles in for ~1 s after SIGTERM
            time.sleep(1.0 / len(pieces))
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        response = sock.recv(65536)
        sock.close()
        assert response.startswith(b"HTTP/1.1 200"), response
        assert b"\r\nConnection: close\r\n" in response
        assert gateway.process.wait(30) == 0
    stored = [record["data"]["uuid"] for record in spool_dump(tmp_path / "data")]
    assert stored == [orjson.loads(body)["uuid"]]


def test_sighup_reloads_the_tls_certificate_for_new_connections_only(tmp_path: Path) -> None:
    live, old_dir, new_dir = tmp_path / "live", tmp_path / "old", tmp_path / "new"
    for directory in (live, old_dir, new_dir):
        directory.mkdir()
    old_cert, old_key = write_dev_cert(old_dir, ["127.0.0.1"])
    new_cert, new_key = write_dev_cert(new_dir, ["127.0.0.1"])
    cert, key = live / "cert.pem", live / "key.pem"
    cert.write_bytes(old_cert.read_bytes())
    key.write_bytes(old_key.read_bytes())
    with GatewayProcess(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key)) as gateway:
        kept = http.client.HTTPSConnection("127.0.0.1", gateway.port, timeout=5,
                                           context=ssl.create_default_context(cafile=str(old_cert)))
        assert post_on(kept, OLD_ORIGIN).status == 200

        cert.write_bytes(new_cert.read_bytes())  # renewed in place
        key.write_bytes(new_key.read_bytes())
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificate reloaded" in gateway.log())

        fresh = requests.post(gateway.url + "/e/", data=event_body(), verify=str(new_cert), timeout=5)
        assert fresh.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(gateway.url + "/e/", data=event_body(), verify=str(old_cert), timeout=5)
        assert post_on(kept, OLD_ORIGIN).status == 200  # the open connection was not dropped
        kept.close()
