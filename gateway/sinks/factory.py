"""Builds the sink a worker delivers to, from the settings: the spool alone, or Kafka with spool failover."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.helpers import create_ssl_context
from yarl import URL

from gateway.capture.events import Topics
from gateway.settings import ServeSettings
from gateway.sinks.base import Sink
from gateway.sinks.kafka import KafkaSink
from gateway.sinks.kafka_producer import ReconnectingProducer, java_partitioner
from gateway.sinks.overflow import OverflowLimiter, OverflowRouter
from gateway.sinks.spool import SpoolSink
from gateway.sinks.tee import TeeSink
from gateway.sinks.upstream import UpstreamRemote, UpstreamSink
from gateway.spool import layout
from gateway.spool.crypto import Keyring
from gateway.upstream.client import UpstreamClient
from gateway.upstream.hosts import Upstreams

# Headroom over the largest batch for the produce request's own framing.
_REQUEST_OVERHEAD = 64 * 1024


def spool_dir(settings: ServeSettings, worker: int, kind: str = layout.MAIN) -> Path:
    return layout.spool_dir(settings.data_dir, worker, kind)


def topics_from(settings: ServeSettings) -> Topics:
    return Topics(
        main=settings.topic_main,
        historical=settings.topic_historical,
        overflow=settings.topic_overflow,
        exceptions=settings.topic_exceptions,
        heatmaps=settings.topic_heatmaps,
        client_warnings=settings.topic_client_warnings,
        replay=settings.topic_replay,
    )


def orphaned_spools(settings: ServeSettings, worker: int, kind: str = layout.MAIN) -> list[Path]:
    """Spools of workers that no longer exist (a previous run had more); worker j goes to j mod N."""
    return layout.orphaned_spools(settings.data_dir, kind, settings.workers, worker)


def producer_config(settings: ServeSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None if settings.kafka_compression == "none" else settings.kafka_compression,
        "max_batch_size": settings.kafka_max_batch_bytes,
        "max_request_size": settings.kafka_max_batch_bytes + _REQUEST_OVERHEAD,
        "linger_ms": 0,  # the gateway gathers its own batches (ReconnectingProducer's linger)
        "partitioner": java_partitioner,
        "request_timeout_ms": int(max(settings.kafka_ack_timeout_ms * 2, 10_000)),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        config |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password,
        }
    if settings.kafka_security_protocol.endswith("SSL"):
        config["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile or None,
            certfile=settings.kafka_ssl_certfile or None,
            keyfile=settings.kafka_ssl_keyfile or None,
        )
    return config


def forwards_only(settings: ServeSettings, upstreams: Upstreams) -> bool:
    """Forward mode: the upstream sink is the only sink, so capture builds upstream records for it."""
    return upstreams.api is not None and settings.upstream_events_mode == "forward"


def build_sink(settings: ServeSettings, worker: int, upstreams: Upstreams, keyring: Keyring | None) -> Sink:
    """The local sink, or with an upstream (reverse-proxy mode) the upstream sink, or both (mirror).

    `keyring`: the spool keys (file or environment); every spool writer and reader gets them from here."""
    if upstreams.api is None or settings.upstream_events_mode == "off":
        return local_sink(settings, worker, keyring)
    upstream = upstream_sink(settings, worker, upstreams.api, keyring)
    if forwards_only(settings, upstreams):
        return upstream
    return TeeSink(local_sink(settings, worker, keyring), upstream)


def upstream_sink(settings: ServeSettings, worker: int, api: URL, keyring: Keyring | None) -> UpstreamSink:
    spool = SpoolSink.at(
        spool_dir(settings, worker, layout.UPSTREAM),
        fsync=settings.fsync,
        fsync_window_ms=settings.fsync_window_ms,
        max_bytes=settings.spool_max_bytes,
        keyring=keyring,
        kind=layout.UPSTREAM,
    )
    # No circuit breaker: the first failure already sends requests to the spool until replay catches up.
    client = UpstreamClient(connections=settings.upstream_connections, retries=settings.upstream_retries)
    remote = UpstreamRemote(api, client, timeout=settings.upstream_timeout)
    return UpstreamSink(remote, spool, settings.upstream_ack_timeout_ms / 1000,
                        adopt=orphaned_spools(settings, worker, layout.UPSTREAM))


def local_sink(settings: ServeSettings, worker: int, keyring: Keyring | None) -> Sink:
    spool = SpoolSink.at(
        spool_dir(settings, worker),
        fsync=settings.fsync,
        fsync_window_ms=settings.fsync_window_ms,
        max_bytes=settings.spool_max_bytes,
        keyring=keyring,
        kind=layout.MAIN,
    )
    if not settings.kafka_bootstrap_servers:
        return spool
    config = producer_config(settings)
    producer = ReconnectingProducer(lambda: AIOKafkaProducer(**config), linger=settings.kafka_linger_ms / 1000)
    return KafkaSink(
        producer,
        spool,
        ack_timeout=settings.kafka_ack_timeout_ms / 1000,
        max_record_bytes=settings.kafka_max_batch_bytes,
        adopt=orphaned_spools(settings, worker),
        overflow=overflow_router(settings),
    )


def overflow_router(settings: ServeSettings) -> OverflowRouter | None:
    """None when overflow routing is off (no rate, nothing forced): then it costs nothing per event."""
    if not settings.overflow_rate and not settings.overflow_force:
        return None
    limiter = OverflowLimiter(settings.overflow_rate, settings.overflow_burst, settings.overflow_force)
    return OverflowRouter(limiter, settings.topic_main, settings.topic_overflow)
