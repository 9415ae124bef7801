"""Signals on a real `gateway serve`: SIGHUP reloads policy and TLS live, SIGTERM drains in-flight requests,
SIGUSR2 makes every worker log its stacks."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import requests

from gateway.edge.certs import write_dev_cert
from tests.support.processes import GatewayProcess, free_port, spool_dump

OLD_ORIGIN = "https://old.example.com"
NEW_ORIGIN = "https://new.example.com"


def event_body() -> bytes:
    return orjson.dumps({"event": "e", "distinct_id": "d", "uuid": str(uuid.uuid4()), "api_key": "phc_life"})


def write_config(path: Path, origin: str, rate: str) -> None:
    path.write_text(f'cors_origins = ["{origin}"]\nrate_limit_ip = ["events={rate}"]\n')


def post_on(
    conn: http.client.HTTPConnection, origin: str, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    headers = {"Origin": origin, "Content-Type": "application/json", **(headers or {})}
    conn.request("POST", "/e/", body=event_body(), headers=headers)
    response = conn.getresponse()
    response.read()
    return response


def wait_for(condition, timeout: float = 10.0, log: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met in time; log tail:\n{log()[-4000:]}"
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
def test_sigusr2_logs_the_stacks_of_every_worker_which_serve_on(tmp_path: Path, workers: int) -> None:
    with GatewayProcess(tmp_path / "data", "--workers", str(workers), "--log-format", "text") as gateway:
        wait_for(lambda: "gateway serving on" in gateway.log(), log=gateway.log)  # every worker serves
        gateway.process.send_signal(signal.SIGUSR2)  # with several workers: passed on by the supervisor
        def log() -> str:  # whole: each dump is a few KB
            return gateway.log_path.read_text(errors="replace")

        wait_for(lambda: log().count("stack dump on SIGUSR2:\ntask ") == workers, log=log)
        assert log().count("in serve_until_signalled") == workers and "thread MainThread" in log()
        for _ in range(5):
            response = requests.post(gateway.url + "/e/", data=event_body(), timeout=5, headers={"Connection": "close"})
            assert response.status_code == 200
        assert gateway.process.poll() is None


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


class ConnectWatch:
    """Opens TCP connections to a port in a loop (on a thread) and counts the refused ones."""

    def __init__(self, port: int) -> None:
        self.port, self.attempts, self.refused = port, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.attempts += 1
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            except ConnectionRefusedError:
                self.refused += 1
            time.sleep(0.002)

    def __enter__(self) -> ConnectWatch:
        self._thread.start()
        self.wait_attempts(5)
        return self

    def wait_attempts(self, count: int) -> None:
        wait_for(lambda: self.attempts >= count)

    def __exit__(self, *exc: object) -> None:
        self.wait_attempts(self.attempts + 5)  # some after the change too
        self._stop.set()
        self._thread.join(10)


def test_sighup_switches_tls_on_and_off_with_redis_shared_limits(tmp_path: Path, redis_url: str) -> None:
    cert, key = write_dev_cert(tmp_path / "certs", ["127.0.0.1"])
    config = tmp_path / "gateway.toml"
    config.write_text("")
    client = {"X-Forwarded-For": f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.9"}  # fresh in Redis
    shared = ("--rate-limit-storage", redis_url, "--rate-limit-sync-interval", "0.05",
              "--rate-limit-ip", "events=10/hour", "--trusted-proxy-cidrs", "127.0.0.1/32")
    admin_port = free_port()
    with GatewayProcess(tmp_path / "data", "--config", str(config), "--workers", "2", "--admin-port", str(admin_port),
                        *shared) as gateway:
        assert requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).status_code == 200
        https_url = f"https://127.0.0.1:{gateway.port}/e/"
        kept = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
        assert post_on(kept, OLD_ORIGIN, client).status == 200

        config.write_text(f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
        with ConnectWatch(gateway.port) as watch:
            gateway.process.send_signal(signal.SIGHUP)
            # main and admin port, by both workers (each rebuilds its components first: slow under load)
            wait_for(lambda: gateway.log().count("TLS switched on") == 4, 30, gateway.log)
        assert watch.refused == 0
        statuses = [requests.post(https_url, data=event_body(), headers=client, verify=str(cert), timeout=5).status_code
                    for _ in range(4)]
        assert statuses == [200] * 4
        response = requests.get(f"https://127.0.0.1:{gateway.port}/_readiness", verify=str(cert), timeout=5)
        assert response.headers.get("Strict-Transport-Security")  # the edge knows it serves TLS now
        assert requests.get(f"https://127.0.0.1:{admin_port}/metrics", verify=str(cert), timeout=5).status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):  # a new plain connection is not served
            requests.post(gateway.url + "/e/", data=event_body(), timeout=5)
        assert post_on(kept, OLD_ORIGIN, client).status == 200  # the open plain connection was not dropped
        kept.close()
        reloaded = [orjson.loads(line) for line in gateway.log().splitlines() if "configuration reloaded" in line]
        assert {"tls_cert", "tls_key"} <= set(reloaded[0]["applied"]) and reloaded[0]["needs_restart"] == []

        # The limit is still shared through Redis: a second gateway learns this client's 6 requests.
        with GatewayProcess(tmp_path / "data2", *shared, name="second") as second:
            time.sleep(0.3)  # a few sync intervals
            seen = []
            for _ in range(6):
                seen.append(requests.post(second.url + "/e/", data=event_body(), headers=client, timeout=5).status_code)
                time.sleep(0.15)
        assert seen == [200] * 4 + [429] * 2

        # A worker restarted after a crash serves what the SIGHUP applied, not the settings of the start.
        pid = gateway.process.pid
        os.kill(int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0]), signal.SIGKILL)
        wait_for(lambda: "serving again" in gateway.log(), 30)
        for _ in range(10):  # new connections, spread over both workers
            response = requests.get(f"https://127.0.0.1:{gateway.port}/_readiness", verify=str(cert), timeout=5,
                                    headers={"Connection": "close"})
            assert response.status_code == 200

        config.write_text("")
        with ConnectWatch(gateway.port) as watch:
            gateway.process.send_signal(signal.SIGHUP)
            wait_for(lambda: gateway.log().count("TLS switched off") == 4, 30, gateway.log)
        assert watch.refused == 0
        response = requests.get(gateway.url + "/_readiness", timeout=5)
        assert response.status_code == 200 and "Strict-Transport-Security" not in response.headers
        assert requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).status_code == 200
        assert gateway.terminate() == 0
