"""`gateway serve` start-up and shutdown as a user meets them: one-line errors with exit 2 (configuration)
or 1 (runtime), worker supervision (restart with back-off, crash loop), the start-up line, drain logs
and the embedded-mode hints."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from gateway.edge.certs import write_dev_cert
from gateway.spool import SpoolReader
from tests.support.inprocess import free_port
from tests.support.processes import GatewayProcess, run_gateway
from tests.support.waiting import wait_for


def serve(data_dir: Path, *args: str, port: int | None = None, timeout: float = 30.0) -> tuple[int, str]:
    """Run `gateway serve` expecting it to exit by itself; returns (exit code, stderr)."""
    result = run_gateway(
        "serve", "--host", "127.0.0.1", "--port", str(port or free_port()), "--data-dir", str(data_dir), *args,
        timeout=timeout,
    )
    return result.returncode, result.stderr


def log_entries(gateway: GatewayProcess) -> list[dict]:
    lines = gateway.log_path.read_text().splitlines()
    return [orjson.loads(line) for line in lines if line.startswith("{")]


def messages(gateway: GatewayProcess, fragment: str) -> list[dict]:
    return [entry for entry in log_entries(gateway) if fragment in entry["msg"]]


def worker_pids(gateway: GatewayProcess) -> set[int]:
    """The worker processes, once all of them serve (a worker killed while starting stops the gateway)."""
    wait_for(lambda: messages(gateway, "gateway serving on"), 15, "every worker serving")
    assert gateway.process is not None
    pid = gateway.process.pid
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    """A port some other program listens on (SO_REUSEPORT too, so only an exclusive owner's bind fails)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def event(size: int = 0) -> dict:
    return {"event": "e", "distinct_id": "d", "uuid": str(uuid.uuid4()), "properties": {"pad": "x" * size}}


# --- one-line start-up errors ------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_is_one_line_exit_1(tmp_path: Path, workers: str) -> None:
    with port_in_use() as port:
        started = time.monotonic()
        code, stderr = serve(tmp_path / "data", "--workers", workers, port=port)
    assert (code, stderr) == (1, f"gateway: error: listen address (127.0.0.1:{port}): address already in use\n")
    assert time.monotonic() - started < 20  # stops at once: no restart loop


def test_admin_port_in_use_is_one_line_exit_1(tmp_path: Path) -> None:
    with port_in_use() as admin:
        code, stderr = serve(tmp_path / "data", "--admin-port", str(admin))
    assert (code, stderr) == (1, f"gateway: error: --admin-port (127.0.0.1:{admin}): address already in use\n")


def test_data_dir_that_is_a_file_is_a_configuration_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("keep me")
    code, stderr = serve(not_a_dir)
    assert (code, stderr) == (2, f"gateway: error: --data-dir ({not_a_dir}): not a directory\n")
    assert not_a_dir.read_text() == "keep me"


def test_data_dir_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    data_dir = tmp_path / "file" / "data"
    code, stderr = serve(data_dir)
    assert (code, stderr) == (2, f"gateway: error: --data-dir ({data_dir}): cannot be created: not a directory\n")


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory no file can be created in (for root too: the immutable attribute); and the reason."""
    directory = tmp_path / "readonly"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory, "permission denied"
        directory.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("running as root without a working `chattr +i`: no directory is unwritable")
    try:
        yield directory, "operation not permitted"
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


def test_unwritable_data_dir_is_one_line_exit_1(unwritable_dir: tuple[Path, str]) -> None:
    directory, reason = unwritable_dir
    code, stderr = serve(directory)
    assert (code, stderr) == (1, f"gateway: error: --data-dir ({directory}): not writable: {reason}\n")


def test_unresolvable_host_is_a_configuration_error(tmp_path: Path) -> None:
    result = run_gateway("serve", "--host", "no-such-host.invalid", "--port", str(free_port()),
                         "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert result.stderr.startswith("gateway: error: --host (no-such-host.invalid): cannot be resolved: ")
    assert result.stderr.count("\n") == 1


def test_spool_locked_by_a_running_gateway_is_one_line_exit_1(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with GatewayProcess(data_dir) as running:
        assert running.process is not None
        code, stderr = serve(data_dir)
        assert requests.get(running.url + "/_readiness", timeout=5).status_code == 200  # untouched
    spool = data_dir / "spool" / "worker-0"
    assert (code, stderr) == (
        1,
        f"gateway: error: spool ({spool}): locked by another process (pid {running.process.pid}); "
        "is another gateway running with this --data-dir?\n",
    )


def test_traceback_only_with_log_level_debug(tmp_path: Path) -> None:
    with port_in_use() as port:
        code, stderr = serve(tmp_path / "data", "--log-level", "debug", port=port)
    assert code == 1
    assert "Traceback (most recent call last)" in stderr
    assert stderr.endswith(f"gateway: error: listen address (127.0.0.1:{port}): address already in use\n")


def test_invalid_configuration_is_one_line_exit_2(tmp_path: Path) -> None:
    code, stderr = serve(tmp_path / "data", "--workers", "0")
    assert (code, stderr) == (2, "gateway: error: workers (0): must be at least 1\n")


# --- worker supervision --------------------------------------------------------------------------------


def test_a_worker_killed_after_serving_is_restarted_and_the_port_keeps_answering(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data", "--workers", "2") as gateway:
        before = worker_pids(gateway)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: messages(gateway, "died"), 10, "the supervisor noticed")
        for _ in range(20):  # while the restart waits out its back-off, the other worker answers
            assert requests.get(gateway.url + "/_liveness", timeout=5).status_code == 200
        wait_for(lambda: messages(gateway, "serving again"), 15, "the worker restarted")
        after = worker_pids(gateway)
        assert len(after) == 2 and victim not in after and before - {victim} <= after
        died = messages(gateway, "died")[0]
        assert died["exit_code"] == -9 and died["restart_in"] == 1.0
        assert requests.post(gateway.url + "/e/", json={**event(), "api_key": "phc_x"}, timeout=5).status_code == 200
        assert gateway.terminate() == 0


def test_a_crash_loop_stops_the_gateway_with_one_error_line(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "data", "--workers", "2").start()
    try:
        for crash in range(1, 5):
            os.kill(min(worker_pids(gateway)), signal.SIGKILL)
            wait_for(lambda n=crash: len(messages(gateway, "serving again")) == n, 15, f"restart {crash}")
        os.kill(min(worker_pids(gateway)), signal.SIGKILL)
        assert gateway.process is not None
        assert gateway.process.wait(15) == 1
    finally:
        gateway.stop()
    last = gateway.log_path.read_text().splitlines()[-1]
    assert last.startswith("gateway: error: worker ")
    assert last.endswith(
        "(exit code -9): crash loop: 5 crashes in a row, each within 60 s of starting; gateway stopped"
    )
    assert [entry["restart_in"] for entry in messages(gateway, "died")] == [1.0, 1.0, 2.0, 2.0]


# --- feedback: start-up line, drain, embedded mode ---------------------------------------------------


def test_start_up_line_says_what_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with GatewayProcess(data_dir) as gateway:
        [line] = messages(gateway, "gateway serving on")
    assert line["msg"] == (
        f"gateway serving on http://127.0.0.1:{gateway.port}: embedded spool, data dir {data_dir}, "
        "1 worker(s), TLS off, admin endpoints on main port"
    )
    assert (line["mode"], line["workers"], line["tls"], line["admin"]) == ("embedded spool", 1, False, "main port")


def test_start_up_line_is_logged_once_every_worker_is_bound(tmp_path: Path) -> None:
    cert, key = write_dev_cert(tmp_path / "certs", ["127.0.0.1"])
    admin = free_port()
    args = ("--workers", "2", "--tls-cert", str(cert), "--tls-key", str(key), "--admin-port", str(admin))
    with GatewayProcess(tmp_path / "data", *args) as gateway:
        [line] = messages(gateway, "gateway serving on")
    assert line["address"] == f"https://127.0.0.1:{gateway.port}"
    assert (line["workers"], line["tls"], line["admin"]) == (2, True, f"port {admin}")


def test_embedded_mode_warns_at_start_that_nothing_drains_the_spool(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with GatewayProcess(data_dir) as gateway:
        [warning] = messages(gateway, "nothing drains it")
    assert warning["level"] == "warning"
    assert warning["command"] == f"gateway sink --data-dir {data_dir}"
    assert f"run `gateway sink --data-dir {data_dir}`" in warning["msg"]


def test_no_drain_warning_while_a_sink_reads_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "data" / "spool" / "worker-0"
    spool.mkdir(parents=True)
    with SpoolReader(spool, "clickhouse"), GatewayProcess(tmp_path / "data") as gateway:
        assert messages(gateway, "gateway serving on")
        assert not messages(gateway, "nothing drains it")


def test_embedded_mode_warns_when_the_spool_passes_80_percent(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with GatewayProcess(data_dir, "--spool-max-bytes", "2M", "--rate-limit-ip", "off") as gateway:
        for _ in range(9):  # ~1.8 MB of events into a 2 MiB spool
            batch = {"api_key": "phc_x", "batch": [event(20_000) for _ in range(10)]}
            assert requests.post(gateway.url + "/batch/", json=batch, timeout=10).status_code == 200
        wait_for(lambda: messages(gateway, "% full"), 10, "the fill warning")
        [warning] = messages(gateway, "% full")
    assert warning["level"] == "warning" and warning["max_bytes"] == 2 * 1024 * 1024
    assert warning["used_bytes"] >= 0.8 * warning["max_bytes"]
    assert f"nothing drains it: run `gateway sink --data-dir {data_dir}`" in warning["msg"]


def test_sigterm_logs_drain_start_and_end_with_counts(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data", "--shutdown-timeout", "1") as gateway:
        stuck = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        finishing = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        for sock in (stuck, finishing):  # both handlers are now waiting for the rest of the body
            sock.sendall(b"POST /e/ HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{")
        time.sleep(0.3)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(lambda: messages(gateway, "draining"), 10, "drain start")
        body = orjson.dumps({**event(), "api_key": "phc_x"})
        finishing.sendall(body[1:].ljust(999))
        assert finishing.recv(65536).startswith(b"HTTP/1.1 200")
        assert gateway.process.wait(15) == 0
        stuck.close()
        finishing.close()
    [start] = messages(gateway, "draining")
    [end] = messages(gateway, "drained")
    assert start["in_flight"] == 2
    assert (end["finished"], end["cut_off"]) == (1, 1)
