"""ClickHouse error texts → WriteError: bad data (bisected to the DLQ) or transient (retried), and whether a
quorum error, which the replica writer retries without failing over."""

from __future__ import annotations

import pytest

from gateway.clickhouse.replicas import quorum_settings
from gateway.clickhouse.writer import ErrorKind, classify


@pytest.mark.parametrize(("text", "kind", "code", "quorum"), [
    ("Code: 27, e.displayText() = DB::Exception: Cannot parse input", ErrorKind.BAD_DATA, 27, False),
    ("Code: 285, e.displayText() = DB::Exception: Number of alive replicas (1) is less than requested quorum (2).",
     ErrorKind.TRANSIENT, 285, True),
    ("Code: 286, e.displayText() = DB::Exception: Another quorum insert has been already started",
     ErrorKind.TRANSIENT, 286, True),
    ("Code: 319, e.displayText() = DB::Exception: Unknown status, client must retry. Reason: Code: 159, "
     "e.displayText() = DB::Exception: Timeout while waiting for quorum", ErrorKind.TRANSIENT, 319, True),
    ("Code: 242, e.displayText() = DB::Exception: Table is in readonly mode", ErrorKind.TRANSIENT, 242, False),
    ("HTTP 502", ErrorKind.TRANSIENT, None, False),
])
def test_classify(text: str, kind: ErrorKind, code: int | None, quorum: bool) -> None:
    error = classify(text)
    assert (error.kind, error.code, error.quorum) == (kind, code, quorum)


def test_quorum_settings() -> None:
    assert quorum_settings(0) == {}
    assert quorum_settings(2) == {"insert_quorum": "2", "insert_quorum_timeout": "60000"}
