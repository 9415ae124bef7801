"""Advisory flock()-based locks on files in a spool directory.

flock locks belong to an open file description, so two opens in the same process also exclude each
other, and the kernel drops them when the holder dies (no stale locks after SIGKILL).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from gateway.spool.errors import SpoolLocked

WRITE_LOCK = "write.lock"
# Held by `gateway gdpr purge-spool`; the journal exists while a segment rewrite is half applied.
PURGE_LOCK = "purge.lock"
PURGE_JOURNAL = "purge.journal"
# A probe by `is_locked` holds the lock for microseconds; retrying this long makes it harmless.
_ACQUIRE_ATTEMPTS = 5
_ACQUIRE_PAUSE_S = 0.02


class FileLock:
    """An exclusive, non-blocking lock on `path`; records the holder's pid in the file for diagnostics."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise SpoolLocked naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for attempt in range(_ACQUIRE_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _ACQUIRE_ATTEMPTS - 1:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise SpoolLocked(f"{self.path} is locked by another process (pid {holder})") from None
                time.sleep(_ACQUIRE_PAUSE_S)
        self._fd = fd
        try:  # diagnostics only: a full disk must not fail (or leak) a lock already taken
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_locked(path: Path) -> bool:
    """True when some process holds the lock on `path` (probes with a non-blocking shared lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def purge_in_progress(directory: Path) -> bool:
    """True while a spool purge runs or an interrupted one awaits completion: readers must not open."""
    return is_locked(directory / PURGE_LOCK) or (directory / PURGE_JOURNAL).exists()
