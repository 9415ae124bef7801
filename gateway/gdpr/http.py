"""GDPR requests over HTTP, on the admin listener (the access rule of /metrics: admin CIDRs or the token).

    POST /gdpr/export            {"distinct_ids": ["…", …], "token": "phc_…"}  → 200, NDJSON stream
    POST /gdpr/delete            same body → 202 {"request_id": …, "status_url": "/gdpr/requests/<id>"}
    GET  /gdpr/requests/<id>     → {"state": running | done | incomplete | failed | interrupted, …}

`token` is optional (default: every project). Every request is audit-logged like `gateway gdpr` (the
same log and entries; operator `http:<client ip>`), and so is a refused caller (403, status
"forbidden"). A deletion purges the person's records from every spool of the data dir, then deletes
their rows from ClickHouse and counts again: `done` only when no row is left and no spool record is
pending. A spool whose reader runs (the Kafka replayer of a running gateway, a `gateway sink
--data-dir`) cannot be purged under it: its matching records are counted and reported as pending, as
are those in the segment a running writer appends to. The status lives in
`<data-dir>/gdpr/requests/<id>.json`, so any worker answers it; a request whose worker died is
reported `interrupted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gateway.clickhouse.table import EventsTable
from gateway.clickhouse.writer import WriteError, open_writer
from gateway.core.errors import GatewayError
from gateway.core.startup import StartupError
from gateway.edge.client_ip import ClientIpResolver
from gateway.edge.policy import RoutePolicy
from gateway.edge.setup import Edge
from gateway.gdpr.audit import AuditLog
from gateway.gdpr.clickhouse import delete_rows, iter_rows, subject_filter
from gateway.gdpr.subject import spool_matcher
from gateway.http.responses import error_response
from gateway.settings import ServeSettings
from gateway.spool import SpoolLocked, iter_records
from gateway.spool.crypto import Keyring, SpoolKeyError
from gateway.spool.layout import spools
from gateway.spool.purge import purge_spool

MAX_BODY = 64 * 1024
MAX_IDS = 1000
ROUTE = "gdpr"
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


class BadGdprRequest(GatewayError):
    code = "invalid_gdpr_request"


class GdprNotConfigured(GatewayError):
    status = 501
    code = "gdpr_not_configured"


class GdprTargetUnavailable(GatewayError):
    status = 503
    code = "gdpr_target_unavailable"


class UnknownRequest(GatewayError):
    status = 404
    code = "not_found"


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose data: all their distinct ids, optionally one project."""

    distinct_ids: list[str]
    token: str | None


def default_audit_log(settings: ServeSettings) -> Path:
    return settings.gdpr_audit_log or settings.data_dir / "audit" / "gdpr.jsonl"


class GdprEndpoints:
    def __init__(
        self, settings: ServeSettings, client_ip: ClientIpResolver, audit_key: bytes | None, keyring: Keyring | None
    ) -> None:
        """`audit_key`: of `gdpr_audit_key_file`; `keyring`: the spool keys (gateway/http/components.py)."""
        self.dsn = settings.gdpr_clickhouse
        self.database = settings.gdpr_database
        self.table = settings.gdpr_table
        self.timeout = settings.gdpr_delete_timeout
        self.data_dir = settings.data_dir
        self.audit_path = default_audit_log(settings)
        self.audit_key = audit_key
        self.keyring = keyring if self.dsn else None
        self.requests_dir = settings.data_dir / "gdpr" / "requests"
        self.client_ip = client_ip
        self._tasks: set[asyncio.Task[None]] = set()

    def mount(self, app: web.Application, edge: Edge) -> None:
        post = RoutePolicy(ROUTE, frozenset({"POST"}), management=True, bounded=False, on_forbidden=self._forbidden)
        get = RoutePolicy(ROUTE, frozenset({"GET", "HEAD"}), management=True, bounded=False,
                          on_forbidden=self._forbidden)
        edge.add_management(app, "/gdpr/export", self.export, post)
        edge.add_management(app, "/gdpr/delete", self.delete, post)
        edge.add_management(app, "/gdpr/requests/{request_id}", self.status, get)
        app.cleanup_ctx.append(self._lifecycle)

    # -- handlers ---------------------------------------------------------------------------------

    async def export(self, request: web.Request) -> web.StreamResponse:
        if not self.dsn:
            return _refuse(request, _not_configured())
        try:
            subject = await _subject(request)
        except BadGdprRequest as error:
            return _refuse(request, error)
        audit = self._audit(request)
        where = subject_filter(subject.distinct_ids, subject.token)
        try:
            table = await self._open()
        except GdprTargetUnavailable as error:
            await _append(audit, "export", subject, "failed", target=self._target(), detail=error.message)
            return _refuse(request, error)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        count = 0
        try:
            async for line in iter_rows(table, where):
                if not response.prepared:
                    await response.prepare(request)
                await response.write(line)
                count += 1
        except (WriteError, OSError) as exc:
            await _append(audit, "export", subject, "failed", target=self._target(), table=table.name, rows=count,
                          detail=str(exc)[:500])
            if not response.prepared:
                return _refuse(request, GdprTargetUnavailable(f"ClickHouse failed: {str(exc)[:300]}"))
            raise  # headers are sent: the client sees a broken stream, not a short export
        finally:
            await table.writer.close()
        if not response.prepared:  # an unknown person: an empty export
            await response.prepare(request)
        await response.write_eof()
        await _append(audit, "export", subject, "ok", target=self._target(), table=table.name, rows=count,
                      out="http")
        return response

    async def delete(self, request: web.Request) -> web.StreamResponse:
        if not self.dsn:
            return _refuse(request, _not_configured())
        try:
            subject = await _subject(request)
        except BadGdprRequest as error:
            return _refuse(request, error)
        request_id = uuid.uuid4().hex
        state = {"request_id": request_id, "state": "running", "progress": "queued", "pid": os.getpid(),
                 "submitted_at": _now()}
        await asyncio.to_thread(self._save, request_id, state)
        task = asyncio.create_task(self._run_delete(state, subject, self._audit(request)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        body = {"request_id": request_id, "state": "running", "status_url": f"/gdpr/requests/{request_id}"}
        return web.json_response(body, status=202, dumps=lambda o: orjson.dumps(o).decode())

    async def status(self, request: web.Request) -> web.StreamResponse:
        if not self.dsn:
            return _refuse(request, _not_configured())
        request_id = request.match_info["request_id"]
        if not _REQUEST_ID.match(request_id):
            return _refuse(request, BadGdprRequest("a request id is 32 hex digits, as /gdpr/delete returned it"))
        try:
            state = orjson.loads(await asyncio.to_thread((self.requests_dir / f"{request_id}.json").read_bytes))
        except FileNotFoundError:
            return _refuse(request, UnknownRequest(f"no GDPR request {request_id} on this node"))
        if state["state"] == "running" and not _alive(state["pid"]):
            state["state"] = "interrupted"
            state["progress"] = "the worker running it stopped; submit the deletion again"
        return web.json_response(state, dumps=lambda o: orjson.dumps(o).decode())

    # -- deletion ---------------------------------------------------------------------------------

    async def _run_delete(self, state: dict[str, Any], subject: Subject, audit: AuditLog) -> None:
        request_id = state["request_id"]

        async def progress(step: str) -> None:
            state["progress"] = step
            await asyncio.to_thread(self._save, request_id, state)

        try:
            await progress("purging spools")
            spooled = await asyncio.to_thread(self._purge_spools, subject)
            pending = spooled.pop("pending")
            await _append(audit, "purge-spool", subject, "incomplete" if pending else "ok",
                          target=str(self.data_dir), **spooled, pending=sum(p["records"] for p in pending.values()))
            await progress("deleting from ClickHouse")
            table = await self._open()
            try:
                deletion = await delete_rows(table, subject_filter(subject.distinct_ids, subject.token), self.timeout)
            finally:
                await table.writer.close()
            status = "ok" if deletion.remaining == 0 else "incomplete"
            await _append(audit, "delete", subject, status, target=self._target(), table=table.name,
                          rows=deletion.before, remaining=deletion.remaining, request_id=request_id)
            state["result"] = {
                "clickhouse": {"deleted": deletion.before - deletion.remaining, "remaining": deletion.remaining},
                "spools": {**spooled, "pending": pending},
            }
            state["state"] = "done" if deletion.remaining == 0 and not pending else "incomplete"
        except (TimeoutError, WriteError, GdprTargetUnavailable, OSError) as exc:
            detail = exc.message if isinstance(exc, GdprTargetUnavailable) else str(exc)[:500]
            state |= {"state": "failed", "error": detail}
            with contextlib.suppress(OSError):
                await _append(audit, "delete", subject, "timeout" if isinstance(exc, TimeoutError) else "failed",
                              target=self._target(), detail=detail, request_id=request_id)
        state["progress"] = "finished"
        state["finished_at"] = _now()
        await asyncio.to_thread(self._save, request_id, state)

    def _purge_spools(self, subject: Subject) -> dict[str, Any]:
        """Purge every spool that no reader holds; count what is left where one does."""
        matches = spool_matcher(subject.distinct_ids, subject.token)
        totals: dict[str, Any] = {"removed": 0, "segments_rewritten": 0, "pending": {}}
        for spool, directory in spools(self.data_dir):
            try:
                result = purge_spool(directory, matches, self.keyring)
            except SpoolLocked as exc:
                left = sum(1 for record in iter_records(directory, keyring=self.keyring) if matches(record))
                if left:
                    totals["pending"][spool.name] = {"records": left, "reason": str(exc)}
                continue
            except SpoolKeyError as exc:
                totals["pending"][spool.name] = {"records": None, "reason": str(exc)}
                continue
            totals["removed"] += result.removed
            totals["segments_rewritten"] += result.segments_rewritten
            if result.skipped:
                totals["pending"][spool.name] = {
                    "records": result.skipped, "reason": "in the segment a running gateway appends to"}
        return totals

    # -- plumbing ---------------------------------------------------------------------------------

    async def _open(self) -> EventsTable:
        try:
            writer = await open_writer(self.dsn, max_in_flight=1, compression="none")
        except (StartupError, WriteError, ValueError, RuntimeError, OSError) as exc:
            raise GdprTargetUnavailable(f"cannot open ClickHouse {self._target()}: {str(exc)[:300]}") from exc
        return EventsTable(writer, self.database, self.table)

    def _target(self) -> str:
        from gateway.gdpr.cli import redact

        return redact(self.dsn)

    def _audit(self, request: web.Request) -> AuditLog:
        return AuditLog(self.audit_path, f"http:{self.client_ip(request)}", self.audit_key)

    async def _forbidden(self, request: web.Request) -> None:
        if not self.dsn:
            return
        action = request.path.rstrip("/").split("/")[2] if request.path.count("/") >= 2 else "gdpr"
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._audit(request).append, action if action != "requests" else "status", (),
                                    None, "forbidden", path=request.path[:200])

    def _save(self, request_id: str, state: dict[str, Any]) -> None:
        self.requests_dir.mkdir(parents=True, exist_ok=True)
        path = self.requests_dir / f"{request_id}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(state))
        os.replace(tmp, path)

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        yield
        for task in list(self._tasks):  # their status files stay "running": reported as interrupted
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _subject(request: web.Request) -> Subject:
    """The request body `{"distinct_ids": [...], "token": ...}`, checked (BadGdprRequest)."""
    body = await request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise BadGdprRequest(f"request body over {MAX_BODY} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadGdprRequest('body must be JSON: {"distinct_ids": ["..."], "token": "phc_..." (optional)}') from None
    if not isinstance(data, dict) or set(data) - {"distinct_ids", "token"}:
        raise BadGdprRequest('body must be an object with "distinct_ids" and optionally "token"')
    ids, token = data.get("distinct_ids"), data.get("token")
    if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS or \
            not all(isinstance(d, str) and d and len(d) <= 400 for d in ids):
        raise BadGdprRequest(f'"distinct_ids" must be a list of 1 to {MAX_IDS} non-empty strings')
    if token is not None and not (isinstance(token, str) and token and len(token) <= 200):
        raise BadGdprRequest('"token" must be a non-empty string when given')
    return Subject(list(dict.fromkeys(ids)), token)


async def _append(audit: AuditLog, action: str, subject: Subject, status: str, **details: Any) -> None:
    await asyncio.to_thread(audit.append, action, subject.distinct_ids, subject.token, status, **details)


def _refuse(request: web.Request, error: GatewayError) -> web.Response:
    return error_response(request, ROUTE, error)


def _not_configured() -> GdprNotConfigured:
    return GdprNotConfigured("GDPR requests over HTTP are off: start the gateway with --gdpr-clickhouse")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
