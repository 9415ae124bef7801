"""Debian's `nginx` run with a caller's config: syntax check, start on loopback, stop by PID.

The caller writes the config (listening on ports from `free_port()`); it must not set `daemon`,
`pid` or a global `error_log`, which these helpers pass on the command line so nginx stays
under our PID control and logs to the service log.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.base import HOST, Service, ServiceError, port_open


def _nginx_argv(conf: Path, prefix: Path) -> list[str]:
    """The nginx command line for `conf` with `prefix` as its working directory and pid file."""
    return ["nginx", "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr",
            "-g", f"daemon off; pid {prefix}/nginx.pid;"]


def nginx_test(conf: Path, prefix: Path) -> str:
    """Run `nginx -t` on `conf`; return its output, raise ServiceError if the config is invalid."""
    prefix.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run([*_nginx_argv(conf, prefix), "-t"], capture_output=True, text=True,
                                check=False)
    except FileNotFoundError as exc:
        raise ServiceError("nginx not found; run scripts/install-system-deps") from exc
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise ServiceError(f"nginx -t failed for {conf}:\n{output}")
    return output


@dataclass(kw_only=True)
class NginxServer(Service):
    """nginx with the config at `conf`, ready once every port in `ports` accepts connections."""

    name = "nginx"
    conf: Path
    ports: list[int] = field(default_factory=list)

    def addresses(self) -> dict[str, str]:
        """One `http://` URL per listening port."""
        return {str(port): f"http://{HOST}:{port}" for port in self.ports}

    def start(self) -> None:
        """Check the config, start nginx and wait for its ports."""
        nginx_test(self.conf, self.root)
        self._spawn(_nginx_argv(self.conf, self.root))
        self._wait(lambda: all(port_open(port) for port in self.ports), timeout=20)
