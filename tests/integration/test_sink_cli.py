"""`gateway sink --data-dir` as a user runs it: the real command, its exit code and its one stderr line.

It drains every worker spool of the data dir into chdb, logs progress at INFO (and its stacks on
SIGUSR2), refuses a wrong directory (exit 2) instead of idling, and a second sink on the same chdb
path fails with one line (exit 1) instead of chdb's traceback.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.core.record import Record
from gateway.spool import Spool
from gateway.spool.crypto import Keyring, SpoolKey
from tests.sinkworker.helpers import TOPIC, captured_value
from tests.support.inprocess import free_port
from tests.support.processes import REPO_ROOT, gateway_env
from tests.support.spools import fill_worker_spools

PER_SPOOL = 150
WORKERS = 2


def sink(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "sink", *args]


def run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=gateway_env(), cwd=REPO_ROOT,
                          timeout=timeout)  # fmt: skip


def chdb_counts(path: Path) -> tuple[int, int]:
    """count() and uniqExact(uuid) of the sink's table, read by a separate process (one chdb each)."""
    code = (
        "import sys; from chdb import session; s = session.Session(sys.argv[1]); "
        "print(s.query('SELECT count(), uniqExact(uuid) FROM default.events', 'TSV').bytes().decode())"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                            timeout=60)  # fmt: skip
    count, distinct = result.stdout.split()
    return int(count), int(distinct)


def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text(errors="replace")
        if text in content:
            return content
        assert process.poll() is None, content[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in:\n{content[-3000:]}"
        time.sleep(0.2)


@pytest.fixture
def running_sink(tmp_path: Path):
    """A `gateway sink --data-dir` draining two worker spools into chdb, running."""
    data_dir, chdb = tmp_path / "gateway-data", tmp_path / "gateway-data" / "chdb"
    fill_worker_spools(data_dir, WORKERS, PER_SPOOL)
    log = tmp_path / "sink.log"
    command = sink("--data-dir", str(data_dir), "--clickhouse", f"chdb://{chdb}", "--batch-age-ms", "100")
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=gateway_env(), cwd=REPO_ROOT)
    try:
        yield data_dir, chdb, log, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_sink_drains_every_worker_spool_of_the_data_dir_once_and_logs_progress(running_sink) -> None:
    data_dir, chdb, log, process = running_sink
    content = wait_for_line(log, f"sink progress: {WORKERS * PER_SPOOL} rows written", process)
    assert "draining spool main/worker-0" in content and "draining spool main/worker-1" in content
    assert "lag 0 bytes" in content
    # A bad-day tool: SIGUSR2 logs where the worker loop waits, and the sink runs on.
    process.send_signal(signal.SIGUSR2)
    dump = wait_for_line(log, "stack dump on SIGUSR2", process)[len(content):]
    assert "in _poll" in dump and "thread MainThread" in dump
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert f"sink stopped: {WORKERS * PER_SPOOL} rows written, lag 0 bytes" in log.read_text()
    assert chdb_counts(chdb) == (WORKERS * PER_SPOOL, WORKERS * PER_SPOOL)
    assert sorted(p.parent.name for p in data_dir.glob("spool/*/cursor-sink.json")) == ["worker-0", "worker-1"]


def test_second_sink_on_the_same_chdb_path_fails_with_one_line(running_sink) -> None:
    data_dir, chdb, log, process = running_sink
    wait_for_line(log, "draining spool", process)
    second = run(sink("--data-dir", str(data_dir), "--clickhouse", f"chdb://{chdb}"))
    assert second.returncode == 1, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"gateway: error: chdb path ({chdb}): locked by another sink or gdpr command (pid {process.pid})"
    ]
    assert process.poll() is None  # the first one is untouched


@pytest.mark.parametrize(
    ("layout", "flag", "why"),
    [
        ("missing", "--data-dir", "no such directory"),
        ("empty", "--data-dir", "not a gateway data dir: it has no spool/worker-N "
                                 "(run `gateway serve --data-dir` with it first)"),
        ("data-dir", "--spool-dir", "not a spool directory (no segment or write.lock); "
                                    "it is a gateway data dir: use --data-dir"),
    ],
)
def test_wrong_directory_is_a_one_line_error_not_an_idle_sink(tmp_path: Path, layout: str, flag: str,
                                                                why: str) -> None:
    directory = tmp_path / "gateway-data"
    if layout == "empty":
        directory.mkdir()
    elif layout == "data-dir":
        fill_worker_spools(directory, WORKERS, PER_SPOOL)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run(sink(flag, str(directory), "--clickhouse", f"chdb://{tmp_path / 'chdb'}"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"gateway: error: {flag} ({directory}): {why}"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing created or locked


def test_clickhouse_unreachable_or_missing_database_at_start_is_a_one_line_error(
    tmp_path: Path, clickhouse_http_url: str
) -> None:
    data_dir = tmp_path / "gateway-data"
    fill_worker_spools(data_dir, 1, 10)
    closed = f"http://127.0.0.1:{free_port()}"
    result = run(sink("--data-dir", str(data_dir), "--clickhouse-url", closed))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gateway: error: --clickhouse ({closed}): cannot reach "
                                                   "ClickHouse: connection lost"), result.stderr
    result = run(sink("--init-schema", "--clickhouse-url", clickhouse_http_url, "--table", "no_such_db.events"))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gateway: error: --clickhouse ({clickhouse_http_url}): "
                                                   "creating `no_such_db`.`events` failed: Code: 81"), result.stderr


def test_encrypted_spool_without_its_key_is_a_one_line_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "gateway-data"

    async def fill() -> None:
        spool = Spool(data_dir / "spool" / "worker-0", keyring=Keyring([SpoolKey("k1", bytes(32))], "test"))
        await spool.open()
        await spool.append([Record(TOPIC, b"k", (), captured_value(0))])
        await spool.close()

    asyncio.run(fill())
    why = f"spool segment {data_dir}/spool/worker-0/00000000000000000001.seg is encrypted"
    for command in (sink("--data-dir", str(data_dir), "--clickhouse", f"chdb://{tmp_path / 'chdb'}"),
                    [sys.executable, "-m", "gateway", "recordings", "sink", "--data-dir", str(data_dir),
                     "--clickhouse", f"chdb://{tmp_path / 'chdb-replay'}"]):
        result = run(command)
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON logs aside
        assert len(errors) == 1 and errors[0].startswith(f"gateway: error: spool ({data_dir}): {why}"), result.stderr
