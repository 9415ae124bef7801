"""Append-only audit log of GDPR operations (JSON lines, fsynced): who, when, what, how many.

The log must not become a store of personal data itself, so a person is recorded as a hash of
`token:distinct_id`, never the id: HMAC-SHA256 with a secret key (`--audit-key-file`) when one is
given — recommended, since ids such as e-mail addresses can be guessed and a plain hash confirmed —
else plain SHA-256. Either way, whoever knows the id can find its entries (to answer "was I
deleted?"), but the log cannot be read back into a list of people.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson


class AuditLog:
    def __init__(self, path: Path, operator: str | None = None, key: bytes | None = None) -> None:
        self.path = Path(path)
        self.operator = operator or getpass.getuser()
        self.key = key

    def subject(self, distinct_id: str, token: str | None) -> str:
        """The pseudonymous reference to a person that the log stores instead of the id."""
        message = f"{token or ''}:{distinct_id}".encode()
        if self.key is not None:
            return "hmac-sha256:" + hmac.new(self.key, message, hashlib.sha256).hexdigest()
        return "sha256:" + hashlib.sha256(message).hexdigest()

    def append(
        self, action: str, distinct_ids: Iterable[str], token: str | None, status: str, **details: Any
    ) -> None:
        """Write one entry durably (O_APPEND, fsync); raises OSError when the log cannot be written."""
        entry = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "operator": self.operator,
            "action": action,
            "subjects": [self.subject(d, token) for d in distinct_ids],
            "token": token,
            "status": status,
            **details,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, orjson.dumps(entry) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
