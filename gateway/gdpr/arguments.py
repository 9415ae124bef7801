"""`gateway gdpr` arguments, kept apart from the commands so building the CLI stays light."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.settings.sink import DEFAULT_CLICKHOUSE

DEFAULT_AUDIT_LOG = "gateway-data/audit/gdpr.jsonl"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"GATEWAY_{name}", default)


def add_gdpr_command(commands: argparse._SubParsersAction) -> None:
    """Mount `gdpr` and its sub-commands on the main CLI."""
    gdpr = commands.add_parser("gdpr", help="export or erase a person's data; retention")
    sub = gdpr.add_subparsers(dest="gdpr_command", required=True)
    export = sub.add_parser("export", help="write a person's events and session recordings as NDJSON (portability)")
    delete = sub.add_parser("delete", help="delete a person's events and session recordings, and verify")
    purge = sub.add_parser("purge-spool",
                           help="remove a person's records still waiting in any spool (local and upstream)")
    retention = sub.add_parser("retention", help="set the events table TTL (servers with TTL: chdb, ≥ 19.6)")
    expire_cmd = sub.add_parser("expire", help="drop events older than N days (any server; run daily)")
    for parser in (export, delete, purge):
        parser.add_argument("--distinct-id", action="append", required=True,
                            help="the person's distinct id (repeat for every id of the same person)")
        parser.add_argument("--token", default=None, help="only this project's events (default: every project)")
    for parser in (export, delete, retention, expire_cmd):
        parser.add_argument("--clickhouse", default=_env("CLICKHOUSE", DEFAULT_CLICKHOUSE),
                            help="chdb://PATH or http(s)://[user:pass@]host:8123 (env GATEWAY_CLICKHOUSE)")
        parser.add_argument("--clickhouse-url", action="append", default=None,
                            help="ClickHouse HTTP URL; overrides --clickhouse. Several (repeatable or "
                            "comma-separated): the replicas of a cluster, a deletion is verified on each")
        parser.add_argument("--database", default=_env("DATABASE", "default"), help="database of the events table")
        parser.add_argument("--table", default=_env("TABLE", "events"), help="events table name")
    for parser in (export, delete):
        parser.add_argument("--recordings-storage", default=_env("RECORDINGS_STORAGE", "") or
                            str(Path(_env("DATA_DIR", "./gateway-data")) / "recordings"),
                            help="the recordings sink's storage: s3://BUCKET/PREFIX or a directory "
                            "(env GATEWAY_RECORDINGS_STORAGE; default DATA_DIR/recordings)")
        parser.add_argument("--replay-table", default=_env("REPLAY_TABLE", "session_replay_events"),
                            help="the recordings metadata table (env GATEWAY_REPLAY_TABLE)")
        parser.add_argument("--s3-endpoint-url", default=_env("S3_ENDPOINT_URL", ""),
                            help="S3-compatible endpoint of the recordings storage (env GATEWAY_S3_ENDPOINT_URL)")
        parser.add_argument("--s3-region", default=_env("S3_REGION", "us-east-1"), help="S3 region")
        parser.add_argument("--s3-access-key-id", default=_env("S3_ACCESS_KEY_ID", ""),
                            help="S3 access key (env GATEWAY_S3_ACCESS_KEY_ID)")
        parser.add_argument("--s3-secret-access-key", default=_env("S3_SECRET_ACCESS_KEY", ""),
                            help="S3 secret key (env GATEWAY_S3_SECRET_ACCESS_KEY)")
    for parser in (delete, expire_cmd):
        parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for mutations")
    export.add_argument("--out", required=True, help="output file, or - for stdout")
    purge.add_argument("--spool-encryption-key-file", type=Path, default=None,
                       help="keys of an encrypted spool (default: env GATEWAY_SPOOL_ENCRYPTION_KEY_FILE or "
                       "GATEWAY_SPOOL_ENCRYPTION_KEYS)")
    purge.add_argument("--data-dir", type=Path, default=Path(_env("DATA_DIR", "./gateway-data")),
                       help="the gateway's --data-dir (every spool is purged: spool/ and upstream-spool/ workers)")
    retention.add_argument("--days", type=int, required=True, help="keep events this many days (0 = forever)")
    expire_cmd.add_argument("--older-than-days", type=int, required=True, help="drop events older than this")
    for parser in (export, delete, purge, retention, expire_cmd):
        parser.add_argument("--audit-log", type=Path, default=Path(_env("GDPR_AUDIT_LOG", DEFAULT_AUDIT_LOG)),
                            help="JSON-lines audit log appended to (env GATEWAY_GDPR_AUDIT_LOG)")
        parser.add_argument("--audit-key-file", type=Path, default=_env("GDPR_AUDIT_KEY_FILE", "") or None,
                            help="secret key file: subjects are logged as HMAC-SHA256 instead of SHA-256")
        parser.add_argument("--operator", default=None, help="who runs this (default: the OS user)")
