"""A real `gateway serve` with spool encryption: nothing readable on disk, `spool dump` with the key,
rotation across a restart, and a loud refusal without the key."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
import requests

from gateway.spool.segment import list_segments, segment_name
from tests.support.processes import REPO_ROOT, GatewayProcess, gateway_env, spool_dump

MARKER = "secret-marker-5c1e"


def post_events(gateway: GatewayProcess, count: int, tag: str) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    batch = [{"event": "e", "uuid": i, "distinct_id": f"{MARKER}-{tag}", "properties": {"note": MARKER}}
             for i in ids]
    response = requests.post(gateway.url + "/batch/", data=orjson.dumps({"api_key": "phc_enc", "batch": batch}),
                             timeout=10)
    assert response.status_code == 200, response.text
    return ids


def spool_bytes(data_dir: Path) -> bytes:
    directory = data_dir / "spool" / "worker-0"
    return b"".join((directory / segment_name(n)).read_bytes() for n in list_segments(directory))


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_encrypted_spool_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys = tmp_path / "spool.keys"
    keys.write_text(f"2026-10:{new_key()}\n")
    with GatewayProcess(data, "--spool-encryption-key-file", str(keys), "--fsync", "never") as gateway:
        first = post_events(gateway, 20, "a")
        assert gateway.terminate() == 0
    assert MARKER.encode() not in spool_bytes(data) and b"phc_enc" not in spool_bytes(data)

    keys.write_text(keys.read_text() + f"2026-11:{new_key()}\n")  # rotate: the new key is last
    with GatewayProcess(data, "--spool-encryption-key-file", str(keys), "--fsync", "never") as gateway:
        second = post_events(gateway, 5, "b")
        assert gateway.terminate() == 0
    assert MARKER.encode() not in spool_bytes(data)

    records = spool_dump(data, "--spool-encryption-key-file", str(keys))
    assert [r["data"]["uuid"] for r in records] == first + second
    assert records[0]["data"]["properties"]["note"] == MARKER

    dump = subprocess.run([sys.executable, "-m", "gateway", "spool", "dump", "--data-dir", str(data)],
                          capture_output=True, env=gateway_env(), cwd=REPO_ROOT, timeout=60)
    assert dump.returncode == 1 and dump.stdout == b""
    assert b"no spool encryption keys are configured" in dump.stderr

    # A gateway started without the keys refuses to start rather than strand the encrypted records.
    keys.write_text(f"other:{new_key()}\n")
    with pytest.raises(RuntimeError, match="not among the configured spool keys"):
        GatewayProcess(data, "--spool-encryption-key-file", str(keys)).start()
