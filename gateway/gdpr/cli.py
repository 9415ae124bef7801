"""`gateway gdpr …`: export, delete, purge-spool, retention and expire; every run is audit-logged.

Flags default to `GATEWAY_<FLAG>` env vars where it helps automation (`GATEWAY_CLICKHOUSE`,
`GATEWAY_GDPR_AUDIT_LOG`, …). Exit status: 0 done, 1 incomplete (rows remain, timeout, skipped
spool records), 2 bad usage or unreachable target.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from gateway.clickhouse.replicas import ReplicaWriter
from gateway.clickhouse.table import EventsTable
from gateway.clickhouse.writer import WriteError, Writer, open_writer
from gateway.core.startup import StartupError
from gateway.gdpr.audit import AuditLog
from gateway.gdpr.clickhouse import delete_rows, export_rows, subject_filter
from gateway.gdpr.recordings import delete_recordings, export_recordings
from gateway.gdpr.retention import TtlUnsupported, apply_ttl, expire
from gateway.gdpr.subject import spool_matcher
from gateway.recordings.storage import StorageError
from gateway.spool import SpoolLocked
from gateway.spool.crypto import SpoolKeyError, load_keyring
from gateway.spool.layout import spools
from gateway.spool.purge import purge_spool

Handler = Callable[[argparse.Namespace, EventsTable, AuditLog, str], Awaitable[int]]


def gdpr_command(args: argparse.Namespace) -> int:
    key = args.audit_key_file.read_bytes().strip() if args.audit_key_file else None
    audit = AuditLog(args.audit_log, args.operator, key)
    command = args.gdpr_command
    if command == "purge-spool":
        return _purge_spool(args, audit)
    urls = [url.strip() for value in args.clickhouse_url or () for url in value.split(",") if url.strip()]
    dsn = ",".join(urls) or args.clickhouse
    handlers: dict[str, Handler] = {
        "export": _export, "delete": _delete, "retention": _retention, "expire": _expire,
    }
    return asyncio.run(_with_table(dsn, args, audit, handlers[command]))


async def _with_table(dsn: str, args: argparse.Namespace, audit: AuditLog, handler: Handler) -> int:
    """Open the ClickHouse target, run `handler` on its events table, close."""
    try:
        writer = await _open(dsn)
    except StartupError as error:
        print(error.line(), file=sys.stderr)
        return error.exit_code
    except (WriteError, ValueError, RuntimeError) as exc:
        print(f"gateway gdpr: cannot open {redact(dsn)}: {exc}", file=sys.stderr)
        return 2
    try:
        return await handler(args, EventsTable(writer, args.database, args.table), audit, redact(dsn))
    except WriteError as exc:
        print(f"gateway gdpr {args.gdpr_command}: {exc}", file=sys.stderr)
        return 2
    finally:
        await writer.close()


async def _open(dsn: str) -> Writer:
    """One server or chdb; several comma-separated URLs: the replicas of a cluster."""
    if "," in dsn:
        return await ReplicaWriter.connect(dsn.split(","), max_in_flight=1)
    return await open_writer(dsn, max_in_flight=1, compression="none")


def redact(dsn: str) -> str:
    """The DSN (or each of several comma-separated ones) without its password, fit for logs."""
    if "," in dsn:
        return ",".join(map(redact, dsn.split(",")))
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def _export(args: argparse.Namespace, table: EventsTable, audit: AuditLog, target: str) -> int:
    where = subject_filter(args.distinct_id, args.token)
    stream: Any = nullcontext(sys.stdout.buffer) if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    with stream as out:
        count = await export_rows(table, where, out)
        recordings = await export_recordings(table.writer, args, out)
    audit.append("export", args.distinct_id, args.token, "ok", target=target, table=table.name, rows=count,
                 recordings=recordings, out=args.out)
    _report({"exported": count, "recordings": recordings, "out": args.out})
    return 0


async def _delete(args: argparse.Namespace, table: EventsTable, audit: AuditLog, target: str) -> int:
    where = subject_filter(args.distinct_id, args.token)
    try:
        deletion = await delete_rows(table, where, args.timeout)
        recordings = await delete_recordings(table.writer, args)
    except (TimeoutError, StorageError) as exc:
        audit.append("delete", args.distinct_id, args.token, "timeout", target=target, table=table.name,
                     detail=str(exc))
        print(f"gateway gdpr delete: {exc}", file=sys.stderr)
        return 1
    remaining = deletion.remaining + (recordings.remaining_rows if recordings else 0)
    status = "ok" if remaining == 0 and not deletion.unreachable else "incomplete"
    summary = {"deleted": deletion.before - deletion.remaining, "remaining": deletion.remaining}
    if recordings is not None:
        summary |= {"recording_sessions": recordings.sessions, "recording_blocks": recordings.blocks,
                    "recording_rows_remaining": recordings.remaining_rows}
    audit.append("delete", args.distinct_id, args.token, status, target=target, table=table.name,
                 rows=deletion.before, unreachable=list(deletion.unreachable),
                 **{k: v for k, v in summary.items() if k != "deleted"})
    if deletion.unreachable:
        print(f"gateway gdpr delete: replica {', '.join(deletion.unreachable)} unreachable: not verified there "
              "(the deletion runs when it returns); run delete again then", file=sys.stderr)
    _report(summary)
    return 0 if status == "ok" else 1


async def _retention(args: argparse.Namespace, table: EventsTable, audit: AuditLog, target: str) -> int:
    try:
        statement = await apply_ttl(table, args.days)
    except TtlUnsupported as exc:
        print(f"gateway gdpr retention: {exc}", file=sys.stderr)
        return 2
    audit.append("retention", (), None, "ok", target=target, table=table.name, days=args.days)
    _report({"applied": statement})
    return 0


async def _expire(args: argparse.Namespace, table: EventsTable, audit: AuditLog, target: str) -> int:
    result = await expire(table, args.older_than_days, args.timeout)
    audit.append("expire", (), None, "ok", target=target, table=table.name, cutoff=result.cutoff.isoformat(),
                 dropped_partitions=result.dropped_partitions, rows=result.deleted_rows)
    _report({"cutoff": result.cutoff.isoformat(), "dropped_partitions": result.dropped_partitions,
             "deleted_rows": result.deleted_rows})
    return 0


def _purge_spool(args: argparse.Namespace, audit: AuditLog) -> int:
    matches = spool_matcher(args.distinct_id, args.token)
    totals = {"removed": 0, "segments_rewritten": 0, "skipped": 0}
    try:
        keyring = load_keyring(args.spool_encryption_key_file)
        for _, directory in spools(args.data_dir):
            result = purge_spool(directory, matches, keyring)
            for name in totals:
                totals[name] += getattr(result, name)
    except (SpoolLocked, SpoolKeyError) as exc:
        audit.append("purge-spool", args.distinct_id, args.token, "refused", target=str(args.data_dir),
                     detail=str(exc), **totals)
        print(f"gateway gdpr purge-spool: {exc}", file=sys.stderr)
        return 1
    status = "ok" if totals["skipped"] == 0 else "incomplete"
    audit.append("purge-spool", args.distinct_id, args.token, status, target=str(args.data_dir), **totals)
    _report(totals)
    return 0 if status == "ok" else 1


def _report(summary: dict[str, Any]) -> None:
    """One JSON summary line on stderr (stdout may carry the export itself)."""
    print(orjson.dumps(summary).decode(), file=sys.stderr)
