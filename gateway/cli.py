"""`gateway` command line: thin — parse flags, build settings, run."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import orjson

from gateway.check import add_check_command
from gateway.config import ConfigError, ServeSettings, add_arguments
from gateway.config_check import add_config_command
from gateway.config_file import add_config_argument, load_settings, requested_workers
from gateway.core.startup import CONFIG_EXIT, StartupError
from gateway.edge.csp import add_csp_command, csp_command
from gateway.gdpr.arguments import add_gdpr_command
from gateway.metrics_multiproc import multiprocess_metrics
from gateway.sinkworker.cli import add_sink_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="PostHog-compatible ingestion gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the capture gateway", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_config_argument(serve)
    add_arguments(serve, ServeSettings)

    spool = commands.add_parser("spool", help="inspect a local spool")
    spool_commands = spool.add_subparsers(dest="spool_command", required=True)
    for name, help_text in (
        ("stats", "segments, bytes, records and reader lag"),
        ("dump", "every retained record as one JSON object per line"),
    ):
        sub = spool_commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=Path("./gateway-data"),
            help="the gateway's --data-dir (all worker spools are read)",
        )
        sub.add_argument(
            "--spool-encryption-key-file",
            type=Path,
            default=None,
            help="keys of an encrypted spool (default: env GATEWAY_SPOOL_ENCRYPTION_KEY_FILE or "
            "GATEWAY_SPOOL_ENCRYPTION_KEYS)",
        )
    certs = commands.add_parser("certs", help="TLS certificates")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    dev = certs_commands.add_parser("dev", help="write a self-signed certificate and key for development")
    dev.add_argument("--out", type=Path, default=Path("./gateway-certs"), help="directory for cert.pem, key.pem")
    dev.add_argument("--host", action="append", default=None,
                     help="DNS name or IP the certificate is for (repeatable; default localhost, 127.0.0.1, ::1)")
    dev.add_argument("--days", type=int, default=30, help="validity in days")
    add_csp_command(commands)
    add_gdpr_command(commands)
    add_sink_arguments(commands.add_parser("sink", help="move events from Kafka or a spool into ClickHouse"))
    add_config_command(commands)
    add_check_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return run_command(args)
    except StartupError as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        print(exc.line(), file=sys.stderr)
        return exc.exit_code


def run_command(args: argparse.Namespace) -> int:
    """Run the chosen command; a command that cannot start raises StartupError (one line, exit 2 or 1)."""
    if args.command == "serve":
        try:
            # One worker keeps prometheus-client's plain in-memory values (several times cheaper per
            # update); more need multiprocess mode, chosen before validation imports the library.
            multi_worker = requested_workers(args) > 1
            with multiprocess_metrics() if multi_worker else contextlib.nullcontext():
                settings = load_settings(args)
                from gateway.serve import serve

                return serve(settings, lambda: load_settings(args))
        except ConfigError as exc:  # raised only while loading: serve() reports reload errors itself
            print(f"gateway: error: invalid configuration: {exc}", file=sys.stderr)
            return CONFIG_EXIT
    if args.command == "config":
        from gateway.config_check import config_command

        return config_command(args)
    if args.command == "check":
        from gateway.check import check_command

        return check_command(args)
    if args.command == "spool":
        return spool_command(args)
    if args.command == "certs":
        from gateway.edge.certs import certs_command

        return certs_command(args)
    if args.command == "csp":
        return csp_command(args)
    if args.command == "gdpr":
        from gateway.gdpr.cli import gdpr_command

        return gdpr_command(args)
    if args.command == "sink":
        from gateway.sinkworker.cli import run_sink, settings_from_args

        return run_sink(settings_from_args(args))
    return 2


def spool_command(args: argparse.Namespace) -> int:
    from gateway.spool import SpoolError, iter_records, record_to_json, spool_stats
    from gateway.spool.crypto import load_keyring

    directories = sorted(p for p in (args.data_dir / "spool").glob("worker-*") if p.is_dir())
    try:
        keyring = load_keyring(args.spool_encryption_key_file)
        if args.spool_command == "stats":
            stats = {d.name: spool_stats(d, keyring) for d in directories}
            sys.stdout.buffer.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2) + b"\n")
            return 0
        out = sys.stdout.buffer
        for directory in directories:
            for record in iter_records(directory, keyring=keyring):
                out.write(orjson.dumps(record_to_json(record)) + b"\n")
        out.flush()
    except SpoolError as exc:
        print(f"gateway spool {args.spool_command}: {exc}", file=sys.stderr)
        return 1
    return 0
