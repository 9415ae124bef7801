"""Run `gateway serve` as a real subprocess (free port, wait-until-ready, SIGKILL/SIGTERM) and read its spool
through `gateway spool dump`, plus helpers for the Node-based end-to-end tests.

The subprocess runs this checkout's code: PYTHONPATH is set to the repository root, whatever is installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import requests

from tests.support.inprocess import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = REPO_ROOT / "tests" / "e2e" / "node"


def gateway_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # Settings come from flags only; a stray GATEWAY_* variable must not change what a test runs.
    for name in [n for n in env if n.startswith("GATEWAY_")]:
        del env[name]
    return env


class GatewayProcess:
    """`python -m gateway serve` on a free loopback port; stdout/stderr go to `<data_dir>/../<name>.log`."""

    def __init__(self, data_dir: Path, *args: str, name: str = "gateway") -> None:
        self.data_dir = Path(data_dir)
        self.args = args
        self.port = free_port()
        self.url = f"{'https' if '--tls-cert' in args else 'http'}://127.0.0.1:{self.port}"
        self.log_path = self.data_dir.parent / f"{name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> GatewayProcess:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("already started: a second gateway on this data dir and port would fail")
        command = [
            sys.executable, "-m", "gateway", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
            *self.args,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=gateway_env(), cwd=REPO_ROOT
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                with warnings.catch_warnings():  # verify=False: a test's self-signed certificate
                    warnings.simplefilter("ignore")
                    if requests.get(self.url + "/_readiness", timeout=1, verify=False).status_code == 200:
                        return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"gateway not ready after {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final flush — a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful) and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Best-effort cleanup for fixtures: graceful, then forced."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.terminate(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> GatewayProcess:
        return self if self.process is not None else self.start()  # `with gateway.start(timeout):` too

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_gateway(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`python -m gateway <args>` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True, text=True, env=gateway_env(), cwd=REPO_ROOT, timeout=timeout,
    )


def spool_dump(data_dir: Path, *args: str, kind: str = "main") -> list[dict[str, Any]]:
    """Every record of the `kind` spools as `gateway spool dump` prints it, with `value` parsed and
    `data` (the raw event) too."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "spool", "dump", "--data-dir", str(data_dir), "--kind", kind, *args],
        capture_output=True, env=gateway_env(), cwd=REPO_ROOT, timeout=60, check=True,
    )
    records = []
    for line in result.stdout.splitlines():
        record = orjson.loads(line)
        record["value"] = orjson.loads(record["value"])
        record["data"] = orjson.loads(record["value"]["data"])
        records.append(record)
    return records


def require_tool(name: str) -> str:
    """Absolute path of a required executable; a missing one fails the test (CI must provide it)."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name!r} is not on PATH; the end-to-end tests need it (see tests/e2e/README.md)")
    return path


def ensure_node_modules(packages: Sequence[str]) -> Path:
    """Install tests/e2e/node from its lockfile (`npm ci`) unless the wanted packages are already there."""
    modules = NODE_DIR / "node_modules"
    if not all((modules / package / "package.json").is_file() for package in packages):
        npm = require_tool("npm")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=NODE_DIR, check=True, timeout=300, capture_output=True,
        )
    return modules
