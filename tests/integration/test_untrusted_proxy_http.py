"""Behind a proxy it was not told about (X-Forwarded-For/Forwarded, no trusted proxy), the gateway says so:
one warning naming the flags to set (then at most every WARN_INTERVAL) and a counter per request.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import requests

from tests.support.processes import GatewayProcess

TOKEN = "phc_proxy_token"
WARNING = "no proxy is trusted"


def send(gateway: GatewayProcess, **headers: str) -> None:
    body = {"api_key": TOKEN, "event": "e", "distinct_id": "u", "properties": {}}
    response = requests.post(gateway.url + "/i/v0/e/", json=body, headers=headers, timeout=5)
    assert response.status_code == 200, response.text


def untrusted_forwarded(gateway: GatewayProcess) -> float:
    for line in requests.get(gateway.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("gateway_untrusted_forwarded_requests_total "):
            return float(line.split()[-1])
    raise AssertionError("gateway_untrusted_forwarded_requests_total not exported")


def warnings_in(gateway: GatewayProcess) -> list[str]:
    return [line for line in gateway.log_path.read_text().splitlines() if WARNING in line]


def test_forwarded_headers_without_trusted_proxy_warn_once_and_are_counted(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data") as gateway:
        send(gateway)
        assert untrusted_forwarded(gateway) == 0 and warnings_in(gateway) == []
        for index in range(5):
            send(gateway, **{"X-Forwarded-For": f"203.0.113.{index}"})
        send(gateway, Forwarded="for=198.51.100.7")
        assert untrusted_forwarded(gateway) == 6
        [warning] = warnings_in(gateway)
        assert orjson.loads(warning)["level"].lower() == "warning", warning
        assert "--trusted-proxy-hops" in warning and "--trusted-proxy-cidrs" in warning
        assert "203.0.113" not in warning and "127.0.0.1" not in warning  # client IPs are never logged


def test_trusted_proxy_hops_silences_it(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data", "--trusted-proxy-hops", "1") as gateway:
        for index in range(3):
            send(gateway, **{"X-Forwarded-For": f"203.0.113.{index}"})
        assert untrusted_forwarded(gateway) == 0
        assert warnings_in(gateway) == []
