"""Assembles the sink from settings: writer, schema, source, dead letters, metrics, worker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from gateway.clickhouse.schema import events_table_ddl, table_name
from gateway.clickhouse.writer import WriteError, Writer, creation_failed, open_at_start
from gateway.core.background import running
from gateway.core.gc_tuning import settle_gc
from gateway.core.startup import CONFIG_EXIT, StartupError
from gateway.settings import SinkSettings
from gateway.settings.sink import parse_time
from gateway.sinkworker.batch import FlushPolicy
from gateway.sinkworker.confluent import ConfluentSource
from gateway.sinkworker.dlq import DeadLetters, FileDeadLetters, KafkaDeadLetters
from gateway.sinkworker.rebuild import RebuildSource
from gateway.sinkworker.rows import IpMode, RowEncoder
from gateway.sinkworker.sources import DataDirSource, Source, SpoolSource
from gateway.sinkworker.teams import TeamResolver, parse_team_map
from gateway.sinkworker.worker import SinkWorker, WorkerConfig
from gateway.spool import SpoolLocked
from gateway.spool.crypto import SpoolKeyError, load_keyring
from gateway.spool.layout import MAIN, is_spool, spools

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 10.0


async def serve(settings: SinkSettings, stop: asyncio.Event, on_running: Callable[[], None] = lambda: None) -> int:
    """Run until `stop`; exit status 0 when everything consumed was stored and committed. `on_running`
    is called once the table, the source and the DLQ are set up."""
    if not settings.init_schema:
        check_spool_settings(settings)
    writer = await _open_table(settings)
    try:
        if settings.retention_days and not writer.caps.ttl:
            log.warning("server %s has no table TTL: --retention-days ignored", writer.caps.version)
        if settings.init_schema:
            log.info("events table %s.%s ready", settings.database, settings.table)
            return 0
        source, dead_letters = await _source_and_dlq(settings, stop)
        encoder = RowEncoder(
            TeamResolver(parse_team_map(settings.team_map), strict=settings.strict_teams),
            IpMode(settings.ip_property),
            subsecond=writer.caps.datetime64,
            topics=frozenset(settings.topics),  # a spool holds every topic; Kafka mode subscribes to these
        )
        config = WorkerConfig(
            table=table_name(settings.database, settings.table),
            policy=FlushPolicy(settings.batch_rows, settings.batch_bytes, settings.batch_age_ms / 1000),
            max_in_flight=min(settings.insert_concurrency, writer.max_in_flight),
            fetch_max_records=settings.fetch_max_records,
            shutdown_timeout_s=settings.shutdown_timeout,
            dedup_retries=bool(settings.cluster),
        )
        worker = SinkWorker(source, writer, dead_letters, encoder, config)
        health = None
        if settings.metrics_port:
            from gateway.metrics.health_server import serve_health  # aiohttp: not imported without the port

            health = await serve_health(settings.metrics_port, worker.health)
        if isinstance(source, RebuildSource):
            progress = _log_rebuild_progress(worker, source)
        else:
            progress = _log_progress(worker, source)
        on_running()
        settle_gc()  # measured 1.16-1.22x rows per sink CPU-second (issue 15)
        try:
            async with running(progress):
                await worker.run(stop)
        except SpoolLocked as error:
            raise StartupError("spool", settings.spool_dir or settings.data_dir, str(error)) from error
        except SpoolKeyError as error:  # a segment sealed with a key --spool-encryption-key-file lacks
            raise StartupError("spool", settings.spool_dir or settings.data_dir, str(error),
                               exit_code=CONFIG_EXIT) from error
        finally:
            await dead_letters.close()
            if health is not None:
                await health.cleanup()
        if isinstance(source, RebuildSource):
            return _rebuild_report(worker, source, config.table)
        log.info("sink stopped: %d rows written, lag %d %s%s", worker.rows_written, source.lag(), source.lag_unit,
                 "" if worker.clean_exit else " (not every batch stored: the next start reads them again)")
        return 0 if worker.clean_exit else 1
    finally:
        await writer.close()


async def _open_table(settings: SinkSettings) -> Writer:
    """The writer, its events table created if missing (replicated with --cluster, see cluster.py)."""
    if settings.cluster:
        from gateway.clickhouse.cluster import open_cluster  # aiohttp: not imported by an embedded sink

        return await open_cluster(
            settings.clickhouse_urls, max_in_flight=settings.insert_concurrency, compression=settings.compression,
            database=settings.database, table=settings.table, cluster=settings.cluster,
            retention_days=settings.retention_days, create=settings.init_schema, insert_quorum=settings.insert_quorum)
    writer = await open_at_start(settings.clickhouse, settings.insert_concurrency, settings.compression)
    try:
        await writer.command(events_table_ddl(writer.caps, settings.database, settings.table, settings.retention_days))
    except BaseException as error:
        await writer.close()
        if isinstance(error, WriteError):
            raise creation_failed(settings.clickhouse, table_name(settings.database, settings.table), error) from error
        raise
    return writer


async def _source_and_dlq(settings: SinkSettings, stop: asyncio.Event) -> tuple[Source, DeadLetters]:
    """Kafka mode: Kafka source (or the rebuild's) and DLQ topic; spool modes: a spool source and a file
    DLQ (or --dlq-dir)."""
    key_file = Path(settings.spool_encryption_key_file) if settings.spool_encryption_key_file else None
    source: Source
    dead_letters: DeadLetters
    if settings.spool_dir:
        source = SpoolSource(settings.spool_dir, settings.spool_reader_name, load_keyring(key_file),
                             foreign=_is_topic(settings.replay_topic))  # fmt: skip
        spool = Path(settings.spool_dir)
        dead_letters = FileDeadLetters(settings.dlq_dir or spool.with_name(spool.name + "-dlq"))
    elif settings.kafka_bootstrap_servers:
        if settings.rebuild:
            end = parse_time(settings.rebuild_to) if settings.rebuild_to else None
            source = RebuildSource(settings.kafka_bootstrap_servers, settings.topics, f"{settings.group_id}-rebuild",
                                   parse_time(settings.rebuild_from), end, on_finished=stop.set)  # fmt: skip
        else:
            source = ConfluentSource.create(
                settings.kafka_bootstrap_servers, settings.topics, settings.group_id, settings.session_timeout_ms
            )
        if settings.dlq_dir:
            dead_letters = FileDeadLetters(settings.dlq_dir)
        else:
            dead_letters = await KafkaDeadLetters.start(settings.kafka_bootstrap_servers, settings.dlq_topic)
    else:
        source = DataDirSource(settings.data_dir, settings.spool_reader_name, load_keyring(key_file),
                               foreign=_is_topic(settings.replay_topic))  # fmt: skip
        dead_letters = FileDeadLetters(settings.dlq_dir or settings.data_dir / "sink-dlq")
    return source, dead_letters


def _is_topic(name: str) -> Callable[[str], bool]:
    """Whether a record is of topic `name` (the session recordings `gateway recordings sink` reads)."""
    return lambda topic: topic == name


def check_spool_settings(settings: SinkSettings) -> None:
    """A spool to drain must exist: a wrong directory is an error, not a sink idling forever."""
    if settings.spool_dir:
        if settings.kafka_bootstrap_servers:
            raise StartupError("--spool-dir", settings.spool_dir, "give either --kafka-bootstrap-servers or "
                               "--spool-dir", exit_code=CONFIG_EXIT)
        directory = Path(settings.spool_dir)
        if not directory.is_dir():
            raise StartupError("--spool-dir", directory, "no such directory", exit_code=CONFIG_EXIT)
        if not is_spool(directory):
            why = "not a spool directory (no segment or write.lock)"
            if spools(directory):
                why += "; it is a gateway data dir: use --data-dir"
            raise StartupError("--spool-dir", directory, why, exit_code=CONFIG_EXIT)
    elif not settings.kafka_bootstrap_servers:
        data_dir = settings.data_dir
        if not data_dir.is_dir():
            raise StartupError("--data-dir", data_dir, "no such directory",
                               exit_code=CONFIG_EXIT)
        if not spools(data_dir, (MAIN,)):
            raise StartupError("--data-dir", data_dir, "not a gateway data dir: it has no spool/worker-N "
                               "(run `gateway serve --data-dir` with it first)", exit_code=CONFIG_EXIT)


async def _log_rebuild_progress(
    worker: SinkWorker, source: RebuildSource, interval_s: float = PROGRESS_INTERVAL_S
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        total, read = source.plan.messages, source.read()
        elapsed = time.monotonic() - source.started_at
        log.info("rebuild progress: %d of %d messages read (%.0f %%), %d rows written, %.0f rows/s",
                 read, total, 100 * read / max(1, total), worker.rows_written, worker.rows_written / elapsed)


def _rebuild_report(worker: SinkWorker, source: RebuildSource, table: str) -> int:
    """The rebuild's last line: what it wrote, how fast; exit 1 if it did not reach the end."""
    elapsed = time.monotonic() - source.started_at
    read, total = source.read(), source.plan.messages
    if not source.finished or not worker.clean_exit:
        log.warning("rebuild interrupted: %d of %d messages read, %d rows written into %s; run the same "
                    "command again to finish (rows already stored are skipped)", read, total, worker.rows_written,
                    table)
        return 1
    log.info("rebuild done: %d rows written into %s from %d messages (%d skipped: already stored, checks or "
             "dead letters) in %.1f s, %.0f rows/s", worker.rows_written, table, total,
             total - worker.rows_written, elapsed, worker.rows_written / max(elapsed, 1e-3),
             extra={"rows": worker.rows_written, "messages": total, "seconds": round(elapsed, 3)})
    return 0


async def _log_progress(worker: SinkWorker, source: Source, interval_s: float = PROGRESS_INTERVAL_S) -> None:
    """Every interval in which rows were written (and once when caught up): rows written and lag."""
    logged = 0
    lag = None
    while True:
        await asyncio.sleep(interval_s)
        rows = worker.rows_written
        previous_lag, lag = lag, source.lag()
        if rows == logged and lag == previous_lag:
            continue
        log.info("sink progress: %d rows written (%d since last), lag %d %s",
                 rows, rows - logged, lag, source.lag_unit)
        logged = rows
