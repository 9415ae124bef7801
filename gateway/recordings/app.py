"""Assembles `gateway recordings sink|export|expire` from settings: storage, ClickHouse, source, DLQ."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from gateway.clickhouse.writer import WriteError, creation_failed, open_at_start, open_writer
from gateway.core.background import running
from gateway.core.startup import CONFIG_EXIT, StartupError
from gateway.metrics.health_server import serve_health
from gateway.recordings.export import write_session
from gateway.recordings.metadata import ReplayEvents
from gateway.recordings.retention import expire
from gateway.recordings.sink import RecordingsSink, SinkConfig
from gateway.recordings.storage import BlockStore, S3Config, open_store
from gateway.settings.recordings import RecordingsSettings
from gateway.sinkworker.dlq import DeadLetters, FileDeadLetters, KafkaDeadLetters
from gateway.sinkworker.teams import TeamResolver, parse_team_map
from gateway.spool.crypto import SpoolKeyError, load_keyring
from gateway.spool.layout import MAIN, spools

log = logging.getLogger(__name__)


def s3_config(settings: RecordingsSettings) -> S3Config:
    return S3Config(bucket="", endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                    access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key)


@contextlib.asynccontextmanager
async def opened(
    settings: RecordingsSettings, create: bool = False, at_start: bool = False
) -> AsyncIterator[tuple[ReplayEvents, BlockStore]]:
    """The metadata table (created if `create`) and the block store; both closed on exit. `at_start`
    (the sink): ClickHouse errors become one start-up error line."""
    opening = open_at_start if at_start else open_writer
    writer = await opening(settings.clickhouse, max_in_flight=1, compression="none")
    try:
        events = ReplayEvents(writer, settings.database, settings.replay_table)
        if create:
            try:
                await events.create()
            except WriteError as error:
                if not at_start:
                    raise
                raise creation_failed(settings.clickhouse, events.name, error) from error
        store = await open_store(settings.recordings_storage, s3_config(settings))
        try:
            yield events, store
        finally:
            await store.close()
    finally:
        await writer.close()


async def run_sink(settings: RecordingsSettings, stop: asyncio.Event) -> int:
    kafka = settings.kafka_bootstrap_servers
    if not kafka and not spools(settings.data_dir, (MAIN,)):
        raise StartupError("--data-dir", settings.data_dir, "not a gateway data dir: it has no spool/worker-N "
                           "(run `gateway serve --data-dir` with it first)", exit_code=CONFIG_EXIT)
    async with opened(settings, create=True, at_start=True) as (events, store):
        source, dead_letters = await _source_and_dlq(settings)
        config = SinkConfig(
            topic=settings.replay_topic, block_max_bytes=settings.block_max_bytes,
            block_max_age_s=settings.block_max_age, buffer_max_bytes=settings.buffer_max_bytes,
            fetch_max_records=settings.recordings_fetch_max_records, spool=not kafka)
        teams = TeamResolver(parse_team_map(settings.team_map))
        sink = RecordingsSink(source, store, events, dead_letters, teams, config)
        port = settings.recordings_http_port
        runner = await serve_health(port, sink.health) if port else None
        log.info("recordings sink: %s → %s and %s", kafka or settings.data_dir, store.location, events.name)
        try:
            async with running(_retention_loop(settings, events, store)):
                await sink.run(stop)
        except SpoolKeyError as error:  # a segment sealed with a key --spool-encryption-key-file lacks
            raise StartupError("spool", settings.data_dir, str(error), exit_code=CONFIG_EXIT) from error
        finally:
            await dead_letters.close()
            if runner is not None:
                await runner.cleanup()
    return 0 if sink.clean_exit else 1


async def _source_and_dlq(settings: RecordingsSettings) -> tuple[object, DeadLetters]:
    dead_letters: DeadLetters
    if settings.kafka_bootstrap_servers:
        from gateway.recordings.kafka import ReplayTopicSource

        source: object = ReplayTopicSource(settings.kafka_bootstrap_servers, settings.replay_topic,
                                           settings.recordings_group_id, settings.session_timeout_ms)
        if settings.recordings_dlq_dir:
            dead_letters = FileDeadLetters(settings.recordings_dlq_dir)
        else:
            dead_letters = await KafkaDeadLetters.start(settings.kafka_bootstrap_servers, settings.recordings_dlq_topic)
        return source, dead_letters
    from gateway.sinkworker.sources import DataDirSource

    key_file = Path(settings.spool_encryption_key_file) if settings.spool_encryption_key_file else None
    source = DataDirSource(settings.data_dir, settings.recordings_reader_name, load_keyring(key_file),
                           foreign=lambda topic: topic != settings.replay_topic)  # events: `gateway sink`'s
    return source, FileDeadLetters(settings.recordings_dlq_dir or settings.data_dir / "recordings-dlq")


async def _retention_loop(settings: RecordingsSettings, events: ReplayEvents, store: BlockStore) -> None:
    if not settings.recordings_retention_days or not settings.recordings_retention_interval:
        return
    while True:
        try:
            removal = await expire(events, store, settings.recordings_retention_days, timeout=600)
            if removal.blocks or removal.rows:
                log.info("recordings retention: %d blocks, %d rows of %d sessions deleted",
                         removal.blocks, removal.rows, removal.sessions)
        except Exception as exc:  # the next run retries; the sink keeps going
            log.warning("recordings retention failed: %s", exc)
        await asyncio.sleep(settings.recordings_retention_interval)


async def export_session(settings: RecordingsSettings, session_id: str, out_path: str) -> int:
    async with opened(settings) as (events, store):
        if not await events.exists():
            raise LookupError(f"no {events.name} table: the recordings sink has not run on this ClickHouse")
        stream = sys.stdout.buffer if out_path == "-" else open(out_path, "wb")  # noqa: SIM115
        try:
            count = await write_session(events, store, session_id, stream)
        finally:
            if stream is not sys.stdout.buffer:
                stream.close()
    print(orjson.dumps({"session_id": session_id, "events": count, "out": out_path}).decode(), file=sys.stderr)
    return 0


async def expire_now(settings: RecordingsSettings, days: int) -> int:
    async with opened(settings, create=True) as (events, store):
        removal = await expire(events, store, days, timeout=600)
    print(orjson.dumps({"sessions": removal.sessions, "blocks": removal.blocks, "rows": removal.rows,
                        "remaining_rows": removal.remaining_rows}).decode(), file=sys.stderr)
    return 0 if removal.remaining_rows == 0 else 1
