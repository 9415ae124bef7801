"""GDPR erasure reaches the upstream spool: a person's events queued for a down upstream PostHog are
purged by `gateway gdpr purge-spool`, in every spool of the data dir, and nobody else's are touched.

A real `gateway serve` in mirror mode (local spool and upstream) whose `--upstream` is a closed port,
so every event waits in both `spool/worker-0` and `upstream-spool/worker-0`.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import orjson
import requests

from tests.support.inprocess import free_port
from tests.support.processes import REPO_ROOT, GatewayProcess, gateway_env, spool_dump

TOKEN = "phc_gdpr_upstream"
VICTIM = "victim@example.com"
PEOPLE = (VICTIM, "alice", "bob")


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          env=gateway_env(), cwd=REPO_ROOT, timeout=60)  # fmt: skip


def people_in(data_dir: Path, kind: str) -> Counter[str]:
    return Counter(record["value"]["distinct_id"] for record in spool_dump(data_dir, kind=kind))


def test_purge_spool_erases_a_person_queued_for_a_down_upstream(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the upstream is down
    batch = [{"event": "e", "distinct_id": person, "uuid": str(uuid.uuid4()), "properties": {}}
             for person in PEOPLE * 4]
    with GatewayProcess(data_dir, "--upstream", closed, "--upstream-events-mode", "mirror",
                        "--upstream-ack-timeout-ms", "200", "--rate-limit-ip", "off") as gateway:
        for event in batch:
            response = requests.post(gateway.url + "/batch/", json={"api_key": TOKEN, "batch": [event]}, timeout=10)
            assert response.status_code == 200
    assert people_in(data_dir, "upstream") == {person: 4 for person in PEOPLE}  # queued for the upstream
    assert people_in(data_dir, "main") == {person: 4 for person in PEOPLE}

    result = gateway_cli("gdpr", "purge-spool", "--distinct-id", VICTIM, "--data-dir", str(data_dir),
                         "--audit-log", str(tmp_path / "audit.jsonl"))
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stderr.splitlines()[-1])["removed"] == 8

    everywhere = gateway_cli("spool", "dump", "--data-dir", str(data_dir))
    assert everywhere.returncode == 0 and VICTIM not in everywhere.stdout
    assert people_in(data_dir, "upstream") == {"alice": 4, "bob": 4}
    assert people_in(data_dir, "main") == {"alice": 4, "bob": 4}
