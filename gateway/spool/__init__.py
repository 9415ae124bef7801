"""Durable local spool: the embedded default sink and the buffer while Kafka is down.

A 200 answer backed by the spool means the record is in an fsynced (per policy), checksummed,
segmented append-only log; readers replay it in order with persisted named cursors.
"""

from gateway.spool.admin import is_write_locked, record_to_json, spool_stats
from gateway.spool.errors import SpoolClosed, SpoolError, SpoolFull, SpoolLocked, SpoolWriteError
from gateway.spool.reader import SpoolBatch, SpoolPosition, SpoolReader, iter_records
from gateway.spool.writer import FsyncPolicy, Spool, SpoolStats

__all__ = [
    "FsyncPolicy",
    "Spool",
    "SpoolBatch",
    "SpoolClosed",
    "SpoolError",
    "SpoolFull",
    "SpoolLocked",
    "SpoolPosition",
    "SpoolReader",
    "SpoolStats",
    "SpoolWriteError",
    "is_write_locked",
    "iter_records",
    "record_to_json",
    "spool_stats",
]
