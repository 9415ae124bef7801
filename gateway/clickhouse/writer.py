"""The interface every ClickHouse writer implements, and how their errors are classified.

`BAD_DATA` means the server refused the rows themselves (the worker bisects the batch and sends
the offending rows to the DLQ); anything else is `TRANSIENT` and retried with backoff, so a
misconfiguration never drops data.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import Protocol

from gateway.clickhouse.schema import ServerCaps

# ClickHouse error codes meaning "this input is malformed" (ErrorCodes.cpp).
BAD_DATA_CODES = frozenset({6, 26, 27, 32, 33, 36, 38, 41, 53, 69, 70, 72, 117, 131, 321, 376, 691})
# Codes of an `insert_quorum` insert that the cluster, not the replica asked, could not satisfy: too few
# live replicas (285), another quorum insert still pending (286), quorum not reached in time (319).
QUORUM_CODES = frozenset({285, 286, 319})
_CODE = re.compile(r"Code:\s*(\d+)")
CHUNK_BYTES = 1024 * 1024
# An insert body: bytes, or the rows themselves, sent in chunks without joining them into one copy.
Body = bytes | Sequence[bytes]


def body_chunks(body: Body, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The body in pieces of about `chunk_bytes` (rows are never split)."""
    if isinstance(body, bytes):
        yield body
        return
    start = size = 0
    for end, row in enumerate(body, 1):
        size += len(row)
        if size >= chunk_bytes:
            yield b"".join(body[start:end])
            start, size = end, 0
    if start < len(body):
        yield b"".join(body[start:])


class ErrorKind(StrEnum):
    BAD_DATA = "bad_data"
    TRANSIENT = "transient"


class WriteError(Exception):
    """A failed statement, classified for the retry policy."""

    def __init__(self, kind: ErrorKind, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code  # the server's error code, None when the server did not answer

    @property
    def quorum(self) -> bool:
        """The insert quorum was not met: the same on every replica, so not a reason to fail over."""
        return self.code in QUORUM_CODES


def insert_statement(table: str, columns: Sequence[str]) -> str:
    """`INSERT INTO table (columns) FORMAT RowBinary`, or JSONEachRow without columns."""
    if not columns:
        return f"INSERT INTO {table} FORMAT JSONEachRow"
    return f"INSERT INTO {table} ({', '.join(columns)}) FORMAT RowBinary"


def classify(message: str) -> WriteError:
    """Build a WriteError from a server error text (`Code: N. DB::Exception: ...`)."""
    match = _CODE.search(message)
    code = int(match.group(1)) if match else None
    return WriteError(ErrorKind.BAD_DATA if code in BAD_DATA_CODES else ErrorKind.TRANSIENT, message[:2000], code)


class Writer(Protocol):
    """A ClickHouse endpoint: run statements, read small results, insert JSONEachRow bodies."""

    caps: ServerCaps
    max_in_flight: int

    async def command(self, sql: str) -> None: ...

    async def select(self, sql: str) -> list[list[str]]:
        """Rows of a query as TSV fields (small results only)."""
        ...

    async def fetch(self, sql: str, fmt: str) -> bytes:
        """A query's whole result as raw bytes in ClickHouse format `fmt` (e.g. JSONEachRow)."""
        ...

    async def insert(
        self, table: str, body: Body, dedup_token: str | None, columns: Sequence[str] = ()
    ) -> None:
        """INSERT a body into `table` (already quoted `db`.`t`); raise WriteError. The body is
        RowBinary for `columns` when they are given, else JSONEachRow; a sequence of rows is streamed."""
        ...

    async def close(self) -> None: ...


async def open_writer(dsn: str, max_in_flight: int, compression: str) -> Writer:
    """Connect to `http(s)://…` (ClickHouse HTTP) or `chdb://path` (embedded) and probe the version."""
    if dsn.startswith(("http://", "https://")):
        from gateway.clickhouse.http_writer import HttpWriter

        return await HttpWriter.connect(dsn, max_in_flight=max_in_flight, compression=compression)
    if dsn.startswith("chdb://"):
        from gateway.clickhouse.chdb_writer import ChdbWriter

        return await ChdbWriter.open(dsn.removeprefix("chdb://") or ".")
    raise ValueError(f"unsupported ClickHouse DSN {dsn!r}: use http(s)://… or chdb://path")


async def open_at_start(dsn: str, max_in_flight: int, compression: str) -> Writer:
    """`open_writer` for a command starting up: a server it cannot reach is one error line, not a traceback."""
    from gateway.core.startup import StartupError
    from gateway.settings.check import redact_password

    try:
        return await open_writer(dsn, max_in_flight, compression)
    except WriteError as error:
        raise StartupError("--clickhouse", redact_password(dsn), f"cannot reach ClickHouse: {error}") from error


def creation_failed(dsn: str, what: str, error: WriteError) -> Exception:
    """The one-line start-up error for a table the server refused to create (e.g. no such database)."""
    from gateway.core.startup import StartupError
    from gateway.settings.check import redact_password

    return StartupError("--clickhouse", redact_password(dsn), f"creating {what} failed: {error}")
