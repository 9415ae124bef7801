"""The real `gateway` command: `--version`; a configuration error is one stderr line and exit code 2; unknown
GATEWAY_* variables are warned about at start; `gateway sink --log-level DEBUG` logs debug JSON lines."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.support.inprocess import free_port
from tests.support.processes import REPO_ROOT, gateway_env


def gateway(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          env={**gateway_env(), **(env or {})}, cwd=cwd, timeout=60)


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["serve", "--kafka-boot", "x"], {},
         "gateway: error: unrecognized arguments: --kafka-boot x (see gateway serve --help)"),
        (["serve", "--port", "70000"], {}, "gateway: error: port (70000): must be 1..65535"),
        (["serve", "--fsync", "sometimes"], {},
         "gateway: error: fsync (sometimes): expected one of always, batch, never"),
        (["serve", "--overflow-rate", "-5"], {}, "gateway: error: overflow_rate (-5.0): must be ≥ 0"),
        (["serve", "--overflow-burst", "0"], {}, "gateway: error: overflow_burst (0): must be at least 1"),
        (["serve", "--overflow-force", "phc_a:bot"], {}, "gateway: error: overflow_force (phc_a:bot): "
         "needs --kafka-bootstrap-servers (overflow routing is the Kafka sink's)"),
        (["sink", "--insert-concurrency", "many"], {},
         "gateway: error: insert_concurrency (many): expected an integer"),
        (["sink", "--check"], {"GATEWAY_LOG_LEVEL": "loud"},
         "gateway: error: log_level (loud): expected one of debug, info, warning, error"),
        (["config", "check"], {"GATEWAY_PROT": "8001"},
         "gateway: error: GATEWAY_PROT: unknown environment variable (did you mean 'GATEWAY_PORT'?)"),
        (["sink", "--check"], {"GATEWAY_TABEL": "t"},
         "gateway: error: GATEWAY_TABEL: unknown environment variable (did you mean 'GATEWAY_TABLE'?)"),
    ],
)
def test_a_configuration_error_is_one_line_and_exit_2(args: list[str], env: dict[str, str], line: str) -> None:
    result = gateway(*args, env=env)
    assert (result.returncode, result.stderr) == (2, line + "\n")
    assert result.stdout == ""


def test_version_names_the_installed_distribution_and_python() -> None:
    result = gateway("--version")
    assert result.returncode == 0, result.stderr
    installed = importlib.metadata.version("posthog-gateway")
    assert result.stdout == f"gateway {installed} (Python {platform.python_version()})\n"


def test_sink_check_prints_the_effective_settings() -> None:
    result = gateway("sink", "--check", "--topics", "a,b", "--clickhouse-url", "http://u:secret@ch:8123",
                     env={"GATEWAY_INSERT_CONCURRENCY": "3", "GATEWAY_MAX_IN_FLIGHT": "9"})
    assert result.returncode == 0, result.stderr
    assert 'topics = ["a", "b"]  # flag' in result.stdout and "insert_concurrency = 3  # env" in result.stdout
    assert "secret" not in result.stdout and "http://u:<redacted>@ch:8123" in result.stdout


def json_lines(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines()]  # every line is JSON, or this fails


def test_sink_log_level_debug_takes_effect(tmp_path: Path) -> None:
    result = gateway("sink", "--init-schema", "--clickhouse", f"chdb://{tmp_path / 'chdb'}", "--log-level", "DEBUG",
                     env={"GATEWAY_TABEL": "t"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stderr)
    assert [line["msg"] for line in lines if line["level"] == "debug"][:1] == ["sink settings"]
    warnings = [line["msg"] for line in lines if line["level"] == "warning"]
    assert warnings == ["GATEWAY_TABEL: unknown environment variable, ignored (did you mean 'GATEWAY_TABLE'?)"]
    quiet = gateway("sink", "--init-schema", "--clickhouse", f"chdb://{tmp_path / 'chdb'}", cwd=tmp_path)
    assert quiet.returncode == 0 and all(line["level"] != "debug" for line in json_lines(quiet.stderr))


def test_serve_warns_about_an_unknown_variable_at_start(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(free_port()),
               "--data-dir", str(tmp_path / "data")]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stderr=out, env={**gateway_env(), "GATEWAY_SPOOL_MAX_BYTE": "1G"},
                                   cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 30
        while "GATEWAY_SPOOL_MAX_BYTE" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(30)
    warnings = [line for line in json_lines(log.read_text()) if "GATEWAY_" in line["msg"]]
    assert [(w["level"], w["msg"]) for w in warnings] == [
        ("warning", "GATEWAY_SPOOL_MAX_BYTE: unknown environment variable, ignored "
                    "(did you mean 'GATEWAY_SPOOL_MAX_BYTES'?)")]
