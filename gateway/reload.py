"""SIGHUP: re-read the configuration (file and env, under the original flags) and apply policy live.

Reloaded without dropping a connection: the edge policy (rate limits, token allow/drop lists, CORS
origins, admin access and token file, in-flight bound; see `gateway.edge.setup.RELOADABLE`), the
TLS certificate (re-read on every SIGHUP, for new connections; open ones keep theirs) and the log
level. Other changed settings are logged as needing a restart. An invalid configuration is
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
    def __init__(self, settings: ServeSettings, load: Callable[[], ServeSettings], edge: Edge) -> None:
        self.settings = settings
        self.load = load
        self.edge = edge

    def reload(self) -> bool:
        """Load and apply; False (running configuration kept) if the new one is invalid."""
        try:
            new = self.load()
            restart = self.edge.reload(new)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("error").inc()
            log.error("configuration reload failed; keeping the running configuration", extra={"error": str(exc)})
            return False
        set_level(new.log_level)
        changed = [f.name for f in fields(new) if getattr(new, f.name) != getattr(self.settings, f.name)]
        restart += [name for name in changed if name not in RELOADABLE]
        applied = [name for name in changed if name not in restart]
        self.settings = replace(self.settings, **{name: getattr(new, name) for name in applied})
        metrics.CONFIG_RELOADS.labels("ok").inc()
        log.info("configuration reloaded", extra={"applied": applied, "needs_restart": restart})
        return True

    async def on_sighup(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: reload on SIGHUP while the app runs."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        yield
        loop.remove_signal_handler(signal.SIGHUP)
