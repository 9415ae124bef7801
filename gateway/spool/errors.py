"""Exceptions raised by the spool; callers answer SpoolError with 503."""

from __future__ import annotations


class SpoolError(Exception):
    """Base class: the records were not (or not durably) spooled."""


class SpoolFull(SpoolError):
    """Appending would exceed max_bytes; nothing of the request was appended (answer 503 + Retry-After)."""


class SpoolLocked(SpoolError):
    """Another process (or spool object) holds the lock this writer or reader needs."""


class SpoolClosed(SpoolError):
    """The spool is not open (never opened, or closing)."""


class SpoolWriteError(SpoolError):
    """Writing or syncing failed (e.g. ENOSPC, EIO); the waiting appends were not acknowledged."""
