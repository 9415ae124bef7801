"""Builds the edge policy from `ServeSettings` and runs what it needs alongside the app.

`build_app` asks this module for the middleware, the client-IP resolver and token policy, and
registers every route through `Edge.add_route`; the Redis sync task and the separate management
listener live in `Edge.lifecycle` (an aiohttp cleanup context).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace

from aiohttp import web
from aiohttp.web import AbstractRoute

from gateway.core.background import running
from gateway.edge.access import AdminAccess
from gateway.edge.aliases import PathAlias, aliased_paths, parse_aliases
from gateway.edge.client_ip import ClientIpResolver
from gateway.edge.cors import CorsPolicy
from gateway.edge.headers import omit_server_header, security_headers
from gateway.edge.listener import Listener
from gateway.edge.policy import EdgePolicy, Handler, RoutePolicy
from gateway.edge.ratelimit import RateLimits, SlidingWindow, route_rates
from gateway.edge.ratelimit_sync import RedisRateSync
from gateway.edge.tls import reload_certificate, server_ssl_context
from gateway.edge.tokens import TokenPolicy
from gateway.settings import ConfigError, ServeSettings
from gateway.settings.check import redact_password
from gateway.settings.secrets import read_secret
from gateway.settings.serve import DEFAULT_IP_RATE, DEFAULT_IP_RATES

DEFAULT_METHODS = frozenset({"GET", "POST", "HEAD"})
PROBE_METHODS = frozenset({"GET", "HEAD"})
TOKEN_ROUTES = ("events", "batch", "replay")  # the capture families: their requests carry a parsed token
MANAGEMENT = RoutePolicy("admin", PROBE_METHODS, management=True, bounded=False)
PROBE = RoutePolicy("health", PROBE_METHODS, bounded=False)
# Settings `Edge.reload` applies live on SIGHUP (gateway/reload.py adds log_level).
log = logging.getLogger("gateway.edge")

RELOADABLE = (
    "rate_limit_ip", "rate_limit_token", "allow_tokens", "drop_events", "cors_origins",
    "admin_allow_cidrs", "admin_token_file", "max_in_flight", "tls_cert", "tls_key",
)
SHARED_RATES = ("rate_limit_ip", "rate_limit_token")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload does: the settings to run with, and the changed ones that need a restart."""

    settings: ServeSettings
    restart: tuple[str, ...]


def plan_reload(running: ServeSettings, new: ServeSettings) -> ReloadPlan:
    """The RELOADABLE settings of `new` apply live (TLS switched on or off, or a new certificate, too),
    except rate limits shared through Redis (their windows are registered with the sync task): those
    need a restart. Every other setting keeps its running value (gateway/reload.py reports those as
    needing a restart)."""
    settings = replace(running, **{name: getattr(new, name) for name in RELOADABLE})
    restart: list[str] = []
    if not running.rate_limit_storage.startswith("memory://"):
        restart += [name for name in SHARED_RATES if getattr(running, name) != getattr(new, name)]
        settings = replace(settings, **{name: getattr(running, name) for name in SHARED_RATES})
    return ReloadPlan(settings, tuple(restart))


def route_methods(entries: Iterable[str], routes: Iterable[str]) -> dict[str, frozenset[str]]:
    """`ROUTE=M1,M2` entries → the methods of each route family (default GET, POST, HEAD). An entry
    without `=` continues the one before it: the env var's commas split `replay=POST,GET` in two."""
    methods = dict.fromkeys(routes, DEFAULT_METHODS)
    route = None
    for entry in entries:
        name, sep, listed = entry.rpartition("=")
        if sep:
            route = name.strip()
            if route not in methods:
                raise ValueError(f"invalid route methods {entry!r} (expected ROUTE=GET,POST with a served route)")
            methods[route] = frozenset()
        elif route is None:
            raise ValueError(f"invalid route methods {entry!r} (expected ROUTE=GET,POST with a served route)")
        methods[route] |= {m.strip().upper() for m in listed.split(",") if m.strip()}
    return methods


@dataclass
class Edge:
    settings: ServeSettings
    policy: EdgePolicy
    client_ip: ClientIpResolver
    rate_limits: RateLimits
    methods: dict[str, frozenset[str]]
    ssl_context: ssl.SSLContext | None
    tokens: TokenPolicy
    management: dict[str, tuple[Handler, RoutePolicy]] = field(default_factory=dict)
    aliases: tuple[PathAlias, ...] = ()
    listeners: list[Listener] = field(default_factory=list)  # this worker's, once bound (SIGHUP re-serves them)

    @classmethod
    def from_settings(cls, settings: ServeSettings, route_names: Iterable[str]) -> Edge:
        """Raises ConfigError naming the setting when a value cannot be used."""
        served = [name for name in route_names if name in settings.routes] if settings.routes else list(route_names)
        unknown = set(settings.routes) - set(route_names)
        if unknown:
            raise ConfigError("routes", f"unknown route families {sorted(unknown)}; served: {list(route_names)}",
                              value=",".join(settings.routes))
        with _setting("trusted_proxy_cidrs"):
            client_ip = ClientIpResolver(
                settings.trusted_proxy_hops, settings.trusted_proxy_cidrs, settings.client_ip_header
            )
        with _setting("rate_limit_ip"):
            defaults = {name: DEFAULT_IP_RATES.get(name, DEFAULT_IP_RATE) for name in served}
            by_ip = route_rates(settings.rate_limit_ip, served, defaults)
        with _setting("rate_limit_token"):  # only capture requests are read for their token
            by_token = route_rates(settings.rate_limit_token, [name for name in served if name in TOKEN_ROUTES], {})
        storage = settings.rate_limit_storage
        if not storage.startswith(("memory://", "redis://", "rediss://", "unix://")):
            raise ConfigError("rate_limit_storage", "expected memory:// or redis://host:port/db",
                              value=redact_password(storage))
        with _setting("cors_origins"):
            cors = CorsPolicy(settings.cors_origins)
        with _setting("admin_token_file"):
            token = read_secret(settings.admin_token_file) if settings.admin_token_file else None
        with _setting("admin_allow_cidrs"):
            admin = AdminAccess(client_ip, settings.admin_allow_cidrs, token)
        with _setting("route_methods"):
            methods = route_methods(settings.route_methods, served)
        with _setting("tls_cert"):
            context = server_ssl_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        headers = security_headers(
            tls=context is not None,
            hsts_max_age=settings.hsts_max_age,
            content_security_policy=settings.content_security_policy,
        )
        policy = EdgePolicy(
            client_ip=client_ip, cors=cors, admin=admin, headers=headers, max_in_flight=settings.max_in_flight
        )
        limits = RateLimits(by_ip, by_token, shared=not storage.startswith("memory://"))
        tokens = TokenPolicy(settings.allow_tokens, settings.drop_events, limits.by_token)
        with _setting("path_alias"):
            aliases = parse_aliases(settings.path_alias)
        return cls(settings, policy, client_ip, limits, methods, context, tokens, aliases=aliases)

    def reload(self, fresh: Edge) -> list[str]:
        """Apply the RELOADABLE settings of `fresh` (the edge built from the new settings, SIGHUP) in place,
        keeping connections and unchanged rate windows. TLS switched on or off takes the fresh SSL
        context (the caller serves `listeners` with it); a certificate for TLS that stays on is loaded
        into the running context, for new connections.

        Returns the changed settings that still need a restart (`plan_reload`). Raises ConfigError,
        applying nothing, if the certificate cannot be loaded.
        """
        running = self.settings
        plan = plan_reload(running, fresh.settings)
        pinned = plan.settings
        if self.ssl_context is not None and fresh.ssl_context is not None:  # TLS stays on
            # Always re-read (a renewed certificate usually keeps its file name); before anything else
            # is applied, so a failure leaves the running configuration whole.
            with _setting("tls_cert"):
                reload_certificate(self.ssl_context, pinned.tls_cert, pinned.tls_key)
            log.info("TLS certificate reloaded for new connections", extra={"tls_cert": str(pinned.tls_cert)})
        else:
            self.ssl_context = fresh.ssl_context
        self.policy.headers = security_headers(
            tls=self.ssl_context is not None,
            hsts_max_age=running.hsts_max_age,
            content_security_policy=running.content_security_policy,
        )
        if running.rate_limit_storage.startswith("memory://"):
            served, fresh_served = list(self.methods), set(fresh.methods)
            by_ip = _keep_unchanged(self.rate_limits.by_ip, fresh.rate_limits.by_ip, served, fresh_served)
            by_token = _keep_unchanged(self.rate_limits.by_token, fresh.rate_limits.by_token, served, fresh_served)
        else:
            by_ip, by_token = self.rate_limits.by_ip, self.rate_limits.by_token
        self.rate_limits.by_ip, self.rate_limits.by_token = by_ip, by_token
        for route, policy in list(self.policy.routes.items()):
            if policy.name in self.methods:
                self.policy.routes[route] = replace(policy, ip_limit=by_ip.get(policy.name))
        self.tokens.configure(pinned.allow_tokens, pinned.drop_events, by_token)
        self.policy.cors = fresh.policy.cors
        self.policy.admin = fresh.policy.admin
        self.policy.admin.client_ip = self.client_ip  # trusted proxies are not reloaded
        self.policy.max_in_flight = fresh.policy.max_in_flight
        self.settings = pinned
        return list(plan.restart)

    def serves(self, route: str) -> bool:
        return route in self.methods

    def add_route(self, router: web.UrlDispatcher, path: str, handler: Handler, route: str) -> AbstractRoute:
        """A route family's path (and its --path-alias paths), with its methods and client-IP limit.

        Returns the route of `path` itself."""
        policy = RoutePolicy(route, self.methods[route], self.rate_limits.by_ip.get(route))
        registered = self.policy.add_route(router, path, handler, policy)
        for alias_path, alias in aliased_paths(path, self.aliases):
            self.policy.add_route(router, alias_path, handler, dataclasses.replace(policy, alias=alias))
        return registered

    def add_probe(self, router: web.UrlDispatcher, path: str, handler: Handler) -> None:
        """A health probe: GET/HEAD, open to load balancers, never rate limited."""
        self.policy.add_route(router, path, handler, PROBE)

    def add_management(
        self, app: web.Application, path: str, handler: Handler, policy: RoutePolicy = MANAGEMENT
    ) -> None:
        """A management endpoint (allowed CIDRs or bearer token): here, or on --admin-port only."""
        if self.settings.admin_port:
            self.management[path] = (handler, policy)
        else:
            self.policy.add_route(app.router, path, handler, policy)

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """Runs the Redis sync task and the management listener for the app's lifetime."""
        sync = None
        settings = self.settings
        if self.rate_limits.windows() and not settings.rate_limit_storage.startswith("memory://"):
            sync = RedisRateSync(
                settings.rate_limit_storage, self.rate_limits.windows(), settings.rate_limit_sync_interval
            )
        admin = await self._start_management() if self.management else None
        try:
            async with running(sync.run()) if sync else contextlib.nullcontext():
                yield
        finally:
            if admin is not None:
                admin.stop()
                self.listeners.remove(admin)
                await admin.runner.cleanup()
            if sync is not None:
                await sync.close()

    async def _start_management(self) -> Listener:
        admin_app = web.Application(middlewares=[self.policy.middleware])
        admin_app.on_response_prepare.append(omit_server_header)
        for path, (handler, policy) in self.management.items():
            self.policy.add_route(admin_app.router, path, handler, policy)
        runner = web.AppRunner(admin_app, access_log=None)
        await runner.setup()
        # Every worker binds the same admin port, as they do the main one.
        listener = Listener(runner, self.settings.host, self.settings.admin_port, reuse_port=True, what="--admin-port")
        try:
            await listener.start(self.ssl_context)
        except BaseException:
            await runner.cleanup()
            raise
        self.listeners.append(listener)
        return listener


def _keep_unchanged(
    running: dict[str, SlidingWindow], fresh: dict[str, SlidingWindow], served: Iterable[str], fresh_served: set[str]
) -> dict[str, SlidingWindow]:
    """The fresh windows of the served routes, except that a route whose rate did not change keeps its
    window and counts (and one the new settings no longer serve keeps its window until the restart)."""
    kept = {}
    for route in served:
        old, window = running.get(route), fresh.get(route)
        same_rate = old and window and (old.amount, old.period) == (window.amount, window.period)
        if route not in fresh_served or same_rate:
            window = old
        if window is not None:
            kept[route] = window
    return kept


@contextlib.contextmanager
def _setting(name: str):
    """Turn a ValueError/OSError while building from setting `name` into a ConfigError naming it."""
    try:
        yield
    except (ValueError, OSError) as exc:
        raise ConfigError(name, str(exc)) from exc
