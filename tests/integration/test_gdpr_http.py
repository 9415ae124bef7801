"""GDPR requests over real HTTP (`gateway serve --gdpr-clickhouse …`) against ClickHouse 18.16 and chdb:
export, delete with its status, the admin access rule, audit entries, bad requests, spooled records."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson
import pytest
import requests

from tests.integration.test_gdpr_clickhouse import ALICE, BOB, TOKEN_A, seed, seed_in_subprocess
from tests.support.processes import GatewayProcess

ALICE_PHONE = "alice-phone"  # no rows: a second distinct id of the same person


@pytest.fixture(params=["clickhouse-18.16", "chdb"])
def gdpr_target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    table = f"gdpr_http_{os.getpid()}_{request.param.replace('.', '').replace('-', '')}"
    if request.param == "chdb":
        dsn = f"chdb://{tmp_path / 'chdb'}"
        seed_in_subprocess(dsn, table)
    else:
        dsn = request.getfixturevalue("clickhouse_http_url")
        asyncio.run(seed(dsn, table))
    return dsn, table


def audit_entries(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def wait_finished(url: str, status_url: str, **kwargs: object) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = requests.get(url + status_url, timeout=10, **kwargs).json()
        if state["state"] != "running":
            return state
        time.sleep(0.2)
    raise AssertionError(f"GDPR request still running: {state}")


def test_export_and_delete_over_http(gdpr_target: tuple[str, str], tmp_path: Path) -> None:
    dsn, table = gdpr_target
    audit = tmp_path / "audit.jsonl"
    with GatewayProcess(tmp_path / "data", "--gdpr-clickhouse", dsn, "--gdpr-table", table,
                        "--gdpr-audit-log", str(audit)) as gateway:
        person = {"distinct_ids": [ALICE, ALICE_PHONE], "token": TOKEN_A}
        exported = requests.post(gateway.url + "/gdpr/export", json=person, timeout=30)
        assert exported.status_code == 200 and exported.headers["Content-Type"] == "application/x-ndjson"
        rows = [orjson.loads(line) for line in exported.content.splitlines()]
        assert len(rows) == 4 and {(r["distinct_id"], r["token"]) for r in rows} == {(ALICE, TOKEN_A)}
        assert rows[0]["properties"]["$current_url"].startswith("https://example.com/")

        unknown = requests.post(gateway.url + "/gdpr/export", json={"distinct_ids": ["nobody"]}, timeout=30)
        assert (unknown.status_code, unknown.content) == (200, b"")

        for bad in (b"{", b'{"distinct_ids": []}', b'{"distinct_ids": "alice"}', b'{"ids": ["a"]}', b"[1]"):
            refused = requests.post(gateway.url + "/gdpr/delete", data=bad, timeout=10)
            assert refused.status_code == 400
            assert refused.json()["code"] == "invalid_gdpr_request" and refused.json()["status"] == 400
        assert requests.get(gateway.url + "/gdpr/requests/not-an-id", timeout=10).status_code == 400
        assert requests.get(gateway.url + "/gdpr/requests/" + "0" * 32, timeout=10).json()["code"] == "not_found"

        accepted = requests.post(gateway.url + "/gdpr/delete", json=person, timeout=30)
        assert accepted.status_code == 202
        state = wait_finished(gateway.url, accepted.json()["status_url"])
        assert state["state"] == "done", state
        assert state["result"]["clickhouse"] == {"deleted": 4, "remaining": 0}
        assert state["result"]["spools"]["pending"] == {}
        assert requests.post(gateway.url + "/gdpr/export", json=person, timeout=30).content == b""
        bob = requests.post(gateway.url + "/gdpr/export", json={"distinct_ids": [BOB]}, timeout=30)
        assert len(bob.content.splitlines()) == 3  # nobody else's rows were touched

    entries = audit_entries(audit)
    assert [e["action"] for e in entries] == ["export", "export", "purge-spool", "delete", "export", "export"]
    assert {e["operator"] for e in entries} == {"http:127.0.0.1"}
    assert entries[0]["rows"] == 4 and entries[1]["rows"] == 0
    deletion = entries[3]
    assert (deletion["status"], deletion["rows"], deletion["remaining"]) == ("ok", 4, 0)
    assert len(deletion["subjects"]) == 2 and ALICE not in audit.read_text()  # pseudonymous, as in the CLI


def test_gdpr_endpoints_follow_the_admin_access_rule(clickhouse_http_url: str, tmp_path: Path) -> None:
    table = f"gdpr_http_access_{os.getpid()}"
    asyncio.run(seed(clickhouse_http_url, table))
    audit = tmp_path / "audit.jsonl"
    token = tmp_path / "admin.token"
    token.write_text("s3cret\n")
    admin_port = str(GatewayProcess(tmp_path).port)  # a free port
    with GatewayProcess(tmp_path / "data", "--gdpr-clickhouse", clickhouse_http_url, "--gdpr-table", table,
                        "--gdpr-audit-log", str(audit), "--admin-allow-cidrs", "10.255.0.0/16",
                        "--admin-token-file", str(token), "--admin-port", admin_port) as gateway:
        admin = f"http://127.0.0.1:{admin_port}"
        person = {"distinct_ids": [ALICE]}
        public = requests.post(gateway.url + "/gdpr/export", json=person, timeout=10)
        assert public.status_code == 404  # never on the public capture port when an admin port is set
        for path in ("/gdpr/export", "/gdpr/delete"):
            refused = requests.post(admin + path, json=person, timeout=10)
            assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
        wrong = requests.post(admin + "/gdpr/delete", json=person, headers={"Authorization": "Bearer nope"},
                              timeout=10)
        assert wrong.status_code == 403
        allowed = requests.post(admin + "/gdpr/export", json=person, headers={"Authorization": "Bearer s3cret"},
                                timeout=30)
        assert allowed.status_code == 200 and len(allowed.content.splitlines()) == 5
    entries = audit_entries(audit)
    assert [(e["action"], e["status"]) for e in entries] == [
        ("export", "forbidden"), ("delete", "forbidden"), ("delete", "forbidden"), ("export", "ok")]
    assert entries[0]["subjects"] == [] and entries[0]["operator"] == "http:127.0.0.1"


def test_without_a_target_the_endpoints_answer_501(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data") as gateway:
        for method, path in (("POST", "/gdpr/export"), ("POST", "/gdpr/delete"), ("GET", "/gdpr/requests/x")):
            answer = requests.request(method, gateway.url + path, json={"distinct_ids": [ALICE]}, timeout=10)
            assert answer.status_code == 501
            assert answer.json() == {"status": 501, "code": "gdpr_not_configured",
                                     "error": "GDPR requests over HTTP are off: start the gateway with "
                                              "--gdpr-clickhouse"}


def test_delete_reports_spooled_records_then_purges_them(clickhouse_http_url: str, tmp_path: Path) -> None:
    table = f"gdpr_http_spool_{os.getpid()}"
    asyncio.run(seed(clickhouse_http_url, table))
    data = tmp_path / "data"
    args = ("--gdpr-clickhouse", clickhouse_http_url, "--gdpr-table", table,
            "--gdpr-audit-log", str(tmp_path / "audit.jsonl"))
    person = {"distinct_ids": [ALICE], "token": TOKEN_A}
    with GatewayProcess(data, *args) as gateway:  # embedded mode: captured events stay in the spool
        for n in range(3):
            event = {"event": "e", "distinct_id": ALICE if n < 2 else BOB, "properties": {"token": TOKEN_A}}
            assert requests.post(gateway.url + "/e/", json=event, timeout=10).status_code == 200
        accepted = requests.post(gateway.url + "/gdpr/delete", json=person, timeout=30).json()
        state = wait_finished(gateway.url, accepted["status_url"])
        assert state["state"] == "incomplete"  # the answer says what is still pending, and where
        assert state["result"]["clickhouse"]["remaining"] == 0
        assert state["result"]["spools"]["pending"] == {
            "main/worker-0": {"records": 2, "reason": "in the segment a running gateway appends to"}}
    with GatewayProcess(data, *args) as gateway:  # the restart sealed that segment: now it is purged
        accepted = requests.post(gateway.url + "/gdpr/delete", json=person, timeout=30).json()
        state = wait_finished(gateway.url, accepted["status_url"])
        assert state["state"] == "done", state
        assert state["result"]["spools"]["removed"] == 2 and state["result"]["spools"]["pending"] == {}
