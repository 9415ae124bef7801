"""Exceptions raised by the spool; callers answer SpoolError with 503 + Retry-After.

`reason` names the failure for metrics and alerts (the `reason` label of gateway_spool_errors_total).
"""

from __future__ import annotations

import errno


class SpoolError(Exception):
    """Base class: the records were not (or not durably) spooled."""

    reason = "error"


class SpoolFull(SpoolError):
    """Appending would exceed max_bytes; nothing of the request was appended (answer 503 + Retry-After)."""

    reason = "full"


class SpoolLocked(SpoolError):
    """Another process (or spool object) holds the lock this writer or reader needs."""

    reason = "locked"


class SpoolClosed(SpoolError):
    """The spool is not open (never opened, or closing)."""

    reason = "closed"


# errno → reason; any other OSError is an "io_error".
_OS_REASONS = {
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EROFS: "read_only",
}


class SpoolWriteError(SpoolError):
    """Writing or syncing failed (e.g. ENOSPC, EIO); the waiting appends were not acknowledged."""

    def __init__(self, message: str, os_errno: int | None = None) -> None:
        super().__init__(message)
        self.reason = _OS_REASONS.get(os_errno or 0, "io_error")
