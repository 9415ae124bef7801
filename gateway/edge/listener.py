"""A listening port served by an aiohttp runner, whose TLS a SIGHUP can switch on or off while it runs.

A switch serves a duplicate of each listening socket with the new SSL context, and only then stops the
old server: the socket itself stays open, so no connection is refused or reset meanwhile. Connections
already accepted keep the scheme they were accepted with until they close.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

from aiohttp import web

from gateway.core.startup import listen_error

BACKLOG = 128  # aiohttp's default for its sites


class Listener:
    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, reuse_port: bool, what: str = "listen address"
    ) -> None:
        self.runner, self.host, self.port, self.reuse_port, self.what = runner, host, port, reuse_port, what
        self.ssl_context: ssl.SSLContext | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._switching = asyncio.Lock()  # one switch at a time; the last one asked for wins
        self._stopped = False

    async def start(self, ssl_context: ssl.SSLContext | None) -> None:
        """Bind and serve; a port that cannot be bound raises StartupError (gateway/core/startup.py)."""
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                self._protocol(), self.host, self.port, ssl=ssl_context, reuse_port=self.reuse_port, backlog=BACKLOG
            )
        except OSError as exc:
            raise listen_error(exc, self.host, self.port, self.what) from exc
        self._servers, self.ssl_context = [server], ssl_context

    async def serve_with(self, ssl_context: ssl.SSLContext | None) -> bool:
        """Serve new connections with `ssl_context` (None: plain HTTP) on the same sockets; False if
        there was nothing to switch (not started, stopped, or already served so)."""
        async with self._switching:
            if not self._servers or ssl_context is self.ssl_context:
                return False
            await self._serve_with(ssl_context)
            return True

    async def _serve_with(self, ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        sockets = [socket.socket(fileno=os.dup(sock.fileno())) for server in self._servers for sock in server.sockets]
        servers: list[asyncio.AbstractServer] = []
        try:
            for sock in sockets:
                servers.append(await loop.create_server(self._protocol(), sock=sock, ssl=ssl_context, backlog=BACKLOG))
        except BaseException:
            for server in servers:
                server.close()
            for sock in sockets[len(servers):]:
                sock.close()
            raise
        old, self._servers, self.ssl_context = self._servers, servers, ssl_context
        for server in old:
            server.close()
        if self._stopped:  # stopped (drain) while the new servers started
            self.stop()

    def stop(self) -> None:
        """Stop accepting connections; open ones are left to the runner."""
        self._stopped = True
        for server in self._servers:
            server.close()
        self._servers = []

    def _protocol(self) -> web.Server:
        server = self.runner.server
        assert server is not None, "runner.setup() first"
        return server
