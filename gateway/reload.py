"""SIGHUP: re-read the configuration (file and env, under the original flags), build its components
once (as `config check` does, so every value is checked) and apply policy live.

Reloaded without dropping a connection: the edge policy (rate limits, token allow/drop lists, CORS
origins, admin access and token file, in-flight bound; see `gateway.edge.setup.RELOADABLE`), TLS
(switched on or off: the listening sockets are served with the new context, gateway/edge/listener.py;
a certificate is re-read on every SIGHUP; either way for new connections, open ones keep theirs) and
the log level. Other changed settings are logged as needing a restart. An invalid configuration is
logged and counted, and the running one stays in force.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import fields, replace

from aiohttp import web

from gateway.edge.setup import RELOADABLE as EDGE_RELOADABLE
from gateway.edge.setup import Edge
from gateway.logs import set_level
from gateway.metrics import serve as metrics
from gateway.settings import ConfigError, ServeSettings

RELOADABLE = frozenset({*EDGE_RELOADABLE, "log_level"})

log = logging.getLogger("gateway.reload")


class Reloader:
    """`load` builds the components of the configuration as it now reads, as at start (raising
    ConfigError), and returns their edge, which `Edge.reload` applies."""

    def __init__(self, settings: ServeSettings, load: Callable[[], Edge], edge: Edge) -> None:
        self.settings = settings
        self.load = load
        self.edge = edge
        self.switches: set[asyncio.Task[None]] = set()

    def reload(self) -> bool:
        """Load and apply; False (running configuration kept) if the new one is invalid."""
        try:
            fresh = self.load()
            tls = self.edge.ssl_context
            restart = self.edge.reload(fresh)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("error").inc()
            log.error("configuration reload failed; keeping the running configuration", extra={"error": str(exc)})
            return False
        new = fresh.settings
        if self.edge.ssl_context is not tls:
            switch = asyncio.get_running_loop().create_task(self.serve_listeners())
            self.switches.add(switch)
            switch.add_done_callback(self.switches.discard)
        set_level(new.log_level)
        changed = [f.name for f in fields(new) if getattr(new, f.name) != getattr(self.settings, f.name)]
        restart += [name for name in changed if name not in RELOADABLE]
        applied = [name for name in changed if name not in restart]
        self.settings = replace(self.settings, **{name: getattr(new, name) for name in applied})
        metrics.CONFIG_RELOADS.labels("ok").inc()
        log.info("configuration reloaded", extra={"applied": applied, "needs_restart": restart})
        return True

    async def serve_listeners(self) -> None:
        """Serve each listener with the edge's SSL context (TLS switched on or off)."""
        context = self.edge.ssl_context
        for listener in list(self.edge.listeners):
            try:
                switched = await listener.serve_with(context)
            except OSError as exc:  # out of file descriptors: the listener keeps its scheme
                log.error("could not switch TLS on a listener; it keeps serving as it did",
                          extra={"port": listener.port, "error": str(exc)})
                continue
            if switched:
                log.info("TLS switched %s for new connections", "on" if context else "off",
                         extra={"port": listener.port})

    async def on_sighup(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: reload on SIGHUP while the app runs."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        yield
        loop.remove_signal_handler(signal.SIGHUP)
