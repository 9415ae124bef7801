"""The start-up line of `gateway serve`: where it listens and where captured events go."""

from __future__ import annotations

import logging

from gateway import __version__
from gateway.embedded import warn_if_not_drained
from gateway.settings import ServeSettings
from gateway.settings.check import redact_password
from gateway.spool import layout
from gateway.spool.reader import lag_bytes, load_cursors
from gateway.upstream.hosts import Upstreams

log = logging.getLogger("gateway.serve")


def describe_mode(settings: ServeSettings, upstreams: Upstreams) -> str:
    """Where captured events go: the embedded spool, Kafka, or an upstream PostHog."""
    kafka = settings.kafka_bootstrap_servers
    local = f"Kafka {kafka}" if kafka else "embedded spool"
    if upstreams.api is None:
        return local
    api = redact_password(str(upstreams.api))  # the start line is logged
    if settings.upstream_events_mode == "off":
        return f"{local}, proxying to {api}"
    if settings.upstream_events_mode == "forward":
        return f"upstream {'passthrough' if settings.upstream_passthrough else 'forward'} to {api}"
    return f"upstream mirror to {api} and {local}"


def is_embedded(settings: ServeSettings, upstreams: Upstreams) -> bool:
    """Events stay in the local spool until `gateway sink` moves them (no Kafka, no upstream)."""
    upstream = upstreams.api is not None and settings.upstream_events_mode != "off"
    return not settings.kafka_bootstrap_servers and not upstream


def announce(settings: ServeSettings, upstreams: Upstreams) -> None:
    """The start-up line, logged once every listener is bound; in embedded mode, a hint if nothing drains."""
    tls = settings.tls_cert is not None
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{'https' if tls else 'http'}://{host}:{settings.port}"
    admin = f"port {settings.admin_port}" if settings.admin_port else "main port"
    mode = describe_mode(settings, upstreams)
    log.info(
        "gateway serving on %s: %s, data dir %s, %d worker(s), TLS %s, admin endpoints on %s",
        address, mode, settings.data_dir, settings.workers, "on" if tls else "off", admin,
        extra={"address": address, "mode": mode, "data_dir": str(settings.data_dir), "workers": settings.workers,
               "tls": tls, "admin": admin, "version": __version__},
    )
    if is_embedded(settings, upstreams):
        warn_if_not_drained(settings.data_dir, settings.data_dir / "spool", settings.spool_max_bytes)
    if upstreams.api is None or settings.upstream_events_mode == "off":
        warn_if_stranded(settings)
    elif settings.upstream_events_mode == "forward":
        warn_if_left_local(settings)


def warn_if_left_local(settings: ServeSettings) -> None:
    """Forward mode writes no local spool: what an earlier run left in one (Kafka's failover backlog, or
    an embedded spool not yet drained) is delivered only by a run with Kafka or by `gateway sink`."""
    for spool, directory in layout.spools(settings.data_dir, (layout.MAIN,)):
        cursors = load_cursors(directory)
        waiting = min((lag_bytes(directory, position) for position in cursors.values()), default=None)
        waiting = lag_bytes(directory, None) if waiting is None else waiting
        if waiting:
            log.warning(
                "%s holds %d bytes of events an earlier run spooled locally, and this configuration sends events "
                "to the upstream only: run with --kafka-bootstrap-servers until its backlog is replayed, or "
                "`gateway sink --data-dir %s` to move them into ClickHouse, or they stay there",
                directory, waiting, settings.data_dir, extra={"spool": spool.name, "bytes": waiting},
            )  # fmt: skip


def warn_if_stranded(settings: ServeSettings) -> None:
    """Events an earlier run spooled for the upstream (acknowledged while it was away) are only ever
    sent by the upstream replayer; a configuration without event forwarding has none, so name them."""
    for spool, directory in layout.spools(settings.data_dir, (layout.UPSTREAM,)):
        waiting = lag_bytes(directory, load_cursors(directory).get("upstream"))
        if waiting:
            log.warning(
                "%s holds %d bytes of events not yet sent to the upstream, and this configuration does not "
                "forward events (no --upstream, or --upstream-events-mode off): run with the upstream and "
                "forward or mirror until readiness is ok again, or they stay there", directory, waiting,
                extra={"spool": spool.name, "bytes": waiting},
            )
