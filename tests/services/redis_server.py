"""Debian's `redis-server` on a free loopback port, without persistence."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

from tests.services.base import HOST, Service, free_port


def redis_ping(port: int, host: str = HOST) -> bool:
    """Whether a Redis server answers PING on `host:port` (plain socket, no client library)."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")
    return False


@dataclass(kw_only=True)
class RedisServer(Service):
    """A throwaway Redis: no RDB snapshots, no AOF, bound to loopback."""

    name = "redis"
    port: int = 0

    @property
    def url(self) -> str:
        """`redis://` URL of database 0."""
        return f"redis://{HOST}:{self.port}/0"

    def addresses(self) -> dict[str, str]:
        """The Redis URL."""
        return {"url": self.url}

    def start(self) -> None:
        """Start redis-server and wait for PONG."""
        self.port = self.port or free_port()
        self._spawn([
            "redis-server", "--port", str(self.port), "--bind", HOST, "--save", "",
            "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no", "--protected-mode", "no",
        ])
        self._wait(lambda: redis_ping(self.port), timeout=20)
