"""Assembles the sink from settings: writer, schema, source, dead letters, metrics, worker."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import start_http_server

from gateway.settings import SinkSettings
from gateway.sinkworker.batch import FlushPolicy
from gateway.sinkworker.dlq import DeadLetters, FileDeadLetters, KafkaDeadLetters
from gateway.sinkworker.rows import IpMode, RowEncoder
from gateway.sinkworker.schema import events_table_ddl, table_name
from gateway.sinkworker.sources import KafkaSource, Source, SpoolSource
from gateway.sinkworker.teams import TeamResolver, parse_team_map
from gateway.sinkworker.worker import SinkWorker, WorkerConfig
from gateway.sinkworker.writer import open_writer
from gateway.spool.crypto import load_keyring

log = logging.getLogger(__name__)


async def serve(settings: SinkSettings, stop: asyncio.Event) -> int:
    """Run until `stop`; exit status 0 when everything consumed was stored and committed."""
    writer = await open_writer(settings.clickhouse, settings.insert_concurrency, settings.compression)
    try:
        if settings.retention_days and not writer.caps.ttl:
            log.warning("server %s has no table TTL: --retention-days ignored", writer.caps.version)
        await writer.command(
            events_table_ddl(writer.caps, settings.database, settings.table, settings.retention_days)
        )
        if settings.init_schema:
            log.info("events table %s.%s ready", settings.database, settings.table)
            return 0
        if settings.metrics_port:
            start_http_server(settings.metrics_port)
        source, dead_letters = await _source_and_dlq(settings)
        encoder = RowEncoder(
            TeamResolver(parse_team_map(settings.team_map), strict=settings.strict_teams),
            IpMode(settings.ip_property),
            subsecond=writer.caps.datetime64,
        )
        config = WorkerConfig(
            table=table_name(settings.database, settings.table),
            policy=FlushPolicy(settings.batch_rows, settings.batch_bytes, settings.batch_age_ms / 1000),
            max_in_flight=min(settings.insert_concurrency, writer.max_in_flight),
            fetch_max_records=settings.fetch_max_records,
            shutdown_timeout_s=settings.shutdown_timeout,
        )
        worker = SinkWorker(source, writer, dead_letters, encoder, config)
        try:
            await worker.run(stop)
        finally:
            await dead_letters.close()
        return 0 if worker.clean_exit else 1
    finally:
        await writer.close()


async def _source_and_dlq(settings: SinkSettings) -> tuple[Source, DeadLetters]:
    """Spool mode: spool source, file DLQ unless Kafka is asked for; otherwise Kafka for both."""
    dead_letters: DeadLetters
    if settings.dlq_dir:
        dead_letters = FileDeadLetters(settings.dlq_dir)
    elif settings.spool_dir:
        spool = Path(settings.spool_dir)
        dead_letters = FileDeadLetters(spool.with_name(spool.name + "-dlq"))
    else:
        dead_letters = await KafkaDeadLetters.start(settings.kafka_bootstrap_servers, settings.dlq_topic)
    source: Source
    if settings.spool_dir:
        key_file = Path(settings.spool_encryption_key_file) if settings.spool_encryption_key_file else None
        source = SpoolSource(settings.spool_dir, settings.spool_reader_name, load_keyring(key_file))
    else:
        source = KafkaSource.create(
            settings.kafka_bootstrap_servers, settings.topics, settings.group_id, settings.session_timeout_ms
        )
    return source, dead_letters
