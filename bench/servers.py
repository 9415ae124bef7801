"""Servers a suite starts for itself on free loopback ports: nginx, the bare aiohttp app, the gateway,
and for `suite upstream` a stand-in PostHog upstream plus nginx proxy_pass in front of it.

Each runs as a subprocess in its own session (so its worker processes stop with it), logs to a file
in its own temp dir, and counts as started once it answers HTTP.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from bench.net import free_port, wait_http

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0


class ServerUnavailable(RuntimeError):
    """The server cannot be run here (binary or module missing, or it exited while starting)."""


class ManagedServer:
    """A subprocess serving HTTP on 127.0.0.1:port; use as a context manager."""

    def __init__(
        self, name: str, argv: list[str], port: int, workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env  # the whole environment of the server; None: this process's
        self.port = port
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ManagedServer:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        self._wait_ready()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _wait_ready(self) -> None:
        assert self.process is not None
        process = self.process
        try:
            wait_http(self.url + "/", START_TIMEOUT_S, lambda: process.poll() is None)
        except (ProcessLookupError, TimeoutError) as exc:
            tail = self.log_tail()
            self.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise ServerUnavailable(f"{self.name}: {exc}: {tail}") from None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every live process in the server's session.

        On a shared 2-core machine req/s alone hides how much CPU the server actually got;
        requests per CPU-second does not.
        """
        assert self.process is not None
        total_ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == self.process.pid:  # field 6 of stat: session id
                total_ticks += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
        return total_ticks / CLOCK_TICKS

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL it if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def _workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))


NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_max_body_size 32m;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport;
        {location}
    }}{http_extra}
}}
"""


NGINX_RETURN_200 = """location / { default_type application/json; return 200 '{"status":"Ok"}'; }"""

# The "dumb proxy" baseline: keep-alive to the upstream, X-Forwarded-For set, as a production nginx in
# front of PostHog would be configured.
NGINX_PROXY_PASS = """location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
        }"""
NGINX_UPSTREAM_BLOCK = """
    upstream bench_upstream {{
        server {upstream};
        keepalive 100;
    }}"""


def _nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        raise ServerUnavailable("nginx is not installed (apt-get install nginx-light)")
    return binary


def nginx_config(workers: int, workdir: Path, port: int, upstream: str | None = None) -> str:
    """nginx.conf answering `return 200`, or proxying everything to `upstream` (host:port)."""
    return NGINX_CONF.format(
        workers=workers,
        dir=workdir,
        port=port,
        location=NGINX_PROXY_PASS if upstream else NGINX_RETURN_200,
        http_extra=NGINX_UPSTREAM_BLOCK.format(upstream=upstream) if upstream else "",
    )


def nginx(workers: int = 1, upstream: str | None = None, name: str = "nginx") -> ManagedServer:
    """Debian nginx answering `return 200` to everything (the HTTP ceiling of this machine), or with
    `upstream` (host:port) a plain proxy_pass to it (the dumb-proxy baseline)."""
    binary = _nginx_binary()
    workdir, port = _workdir(name), free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workers, workdir, port, upstream))
    return ManagedServer(name, [binary, "-p", str(workdir), "-c", str(conf)], port, workdir)


def upstream_app(workers: int = 1) -> ManagedServer:
    """bench/upstream_app.py: a stand-in PostHog upstream answering 200 (canned JSON for /flags)."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.upstream_app", "--port", str(port), "--workers", str(workers)]
    return ManagedServer("upstream", argv, port, _workdir("upstream"))


def baseline_app(workers: int = 1) -> ManagedServer:
    """bench/baseline_app.py: aiohttp + uvloop, decode + orjson parse, 200."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.baseline_app", "--port", str(port), "--workers", str(workers)]
    return ManagedServer("aiohttp", argv, port, _workdir("aiohttp"))


def gateway_command() -> list[str] | None:
    """How to run the gateway from this environment, or None if it is not installed yet."""
    script = Path(sys.executable).with_name("gateway")
    if importlib.util.find_spec("gateway.cli") is not None and script.exists():
        return [str(script)]
    if importlib.util.find_spec("gateway.__main__") is not None:
        return [sys.executable, "-m", "gateway"]
    return None


def gateway(
    workers: int = 1,
    kafka_bootstrap_servers: str | None = None,
    command: list[str] | None = None,
    extra_args: tuple[str, ...] = (),
    name: str = "gateway",
) -> ManagedServer:
    """The system under test: `gateway serve` on a free port with a fresh data dir."""
    command = command or gateway_command()
    if command is None:
        raise ServerUnavailable("gateway is not available here yet (no gateway.cli / gateway.__main__)")
    workdir, port = _workdir(name), free_port()
    argv = [
        *command,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(workdir / "data"),
    ]
    # One load generator on loopback is one client IP: per-IP rate limiting would refuse it.
    argv += ["--workers", str(workers), "--rate-limit-ip", "off"]
    if kafka_bootstrap_servers:
        argv += ["--kafka-bootstrap-servers", kafka_bootstrap_servers]
    return ManagedServer(name, [*argv, *extra_args], port, workdir)
