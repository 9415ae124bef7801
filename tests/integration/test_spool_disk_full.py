"""A real full file system under `gateway serve --data-dir`: capture answers 503 + Retry-After (counted in
/metrics), never acknowledges what it could not write, and takes events again once space is freed.

The data directory is a 2 MiB tmpfs (or, where tmpfs cannot be mounted, a loop-mounted ext4 image);
mounting needs root, so without it these tests are skipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from tests.support.fake_posthog import FakePostHog
from tests.support.processes import GatewayProcess, spool_dump

TOKEN = "phc_disk_full"
FS_BYTES = 2 * 1024 * 1024


def _run(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A mounted 2 MiB file system, unmounted at teardown."""
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small file system needs root and mount(8)")
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mount_point))
    if not mounted and shutil.which("mkfs.ext4"):
        image = tmp_path / "small-fs.img"
        with open(image, "wb") as file:
            file.truncate(8 * FS_BYTES)  # ext4 needs room for its own metadata
        mounted = _run("mkfs.ext4", "-q", "-F", str(image)) and _run(
            "mount", "-o", "loop", str(image), str(mount_point)
        )
    if not mounted:
        pytest.skip("cannot mount a tmpfs or a loop device here (no CAP_SYS_ADMIN?)")
    try:
        yield mount_point
    finally:
        if not _run("umount", str(mount_point)):
            _run("umount", "-l", str(mount_point))


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:  # a short write takes the last bytes, the next one fails
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def post_event(url: str) -> tuple[str, requests.Response]:
    event_id = str(uuid.uuid4())
    body = {"event": "$pageview", "uuid": event_id, "distinct_id": "d1", "api_key": TOKEN,
            "properties": {"padding": "x" * 300}}
    return event_id, requests.post(url + "/e/", data=orjson.dumps(body), timeout=10,
                                   headers={"Content-Type": "application/json"})


def spool_errors(url: str, kind: str, reason: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    pattern = rf'^gateway_spool_errors_total{{kind="{kind}",reason="{reason}"}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def capture_through_a_full_disk(gateway: GatewayProcess, data_dir: Path, kind: str) -> tuple[set[str], set[str]]:
    """Events before, during and after a full disk: (uuids answered 200, uuids answered 503)."""
    accepted, refused = set(), set()
    for _ in range(5):
        event_id, response = post_event(gateway.url)
        assert response.status_code == 200, response.text
        accepted.add(event_id)
    filler = fill(data_dir)
    for _ in range(200):  # the last partly used page of a segment may take a few more
        event_id, response = post_event(gateway.url)
        if response.status_code == 200:
            accepted.add(event_id)
            continue
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "30"
        assert response.json() == {"status": 503, "code": "service_unavailable",
                                   "error": "local spool: no space left on the device"}
        refused.add(event_id)
        if len(refused) == 3:
            break
    assert len(refused) == 3, "the full disk never answered 503"
    assert spool_errors(gateway.url, kind, "no_space") == 3
    filler.unlink()
    for _ in range(5):  # space freed: accepted again, no restart
        event_id, response = post_event(gateway.url)
        assert response.status_code == 200, response.text
        accepted.add(event_id)
    return accepted, refused


def test_embedded_spool_on_a_full_disk_answers_503_and_recovers(small_fs: Path) -> None:
    with GatewayProcess(small_fs, "--fsync", "always") as gateway:
        accepted, refused = capture_through_a_full_disk(gateway, small_fs, "main")
        assert gateway.terminate() == 0
    spooled = [record["value"]["uuid"] for record in spool_dump(small_fs)]
    assert len(spooled) == len(set(spooled))  # every frame whole, none twice
    assert set(spooled) == accepted  # every 200 is there; nothing refused was left behind
    assert not refused & set(spooled)


def test_upstream_spool_on_a_full_disk_answers_503_and_recovers(small_fs: Path) -> None:
    upstream = FakePostHog()  # not started: connection refused, so events go to the upstream spool
    try:
        with GatewayProcess(small_fs, "--upstream", upstream.url, "--fsync", "always",
                            "--upstream-ack-timeout-ms", "500") as gateway:
            accepted, refused = capture_through_a_full_disk(gateway, small_fs, "upstream")
            assert not (small_fs / "spool").exists()  # forward mode: only the upstream spool is used
            upstream.start()
            deadline = time.monotonic() + 30
            while (forwarded := forwarded_uuids(upstream)) < accepted:
                assert time.monotonic() < deadline, f"not replayed: {len(accepted - forwarded)}"
                time.sleep(0.1)
            assert gateway.terminate() == 0
        assert not refused & forwarded_uuids(upstream)
    finally:
        with contextlib.suppress(Exception):
            upstream.close()


def forwarded_uuids(upstream: FakePostHog) -> set[str]:
    return {event["uuid"] for request in upstream.requests_to("/batch/", status=200)
            for event in request.json()["batch"]}
