"""`gateway` command line: thin — parse flags, build settings, run."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

from gateway import version_line
from gateway.check import add_check_command
from gateway.config_check import add_config_command
from gateway.core.startup import StartupError
from gateway.edge.csp import add_csp_command, csp_command
from gateway.gdpr.arguments import add_gdpr_command
from gateway.metrics.multiproc import multiprocess_metrics
from gateway.recordings.cli import add_recordings_command
from gateway.settings import ServeSettings, add_arguments, add_config_argument, load
from gateway.settings.fields import requested
from gateway.sinkworker.cli import add_sink_arguments
from gateway.spool.layout import KINDS


class Parser(argparse.ArgumentParser):
    """Usage errors are one line, `gateway: error: <why>`, exit 2, like every configuration error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"gateway: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # name the sub-command whose flags these are not
            command = " ".join(filter(None, (self.prog, getattr(parsed, "command", None))))
            self.exit(2, f"gateway: error: unrecognized arguments: {' '.join(extras)} (see {command} --help)\n")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gateway", description="PostHog-compatible ingestion gateway")
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the capture gateway")
    add_config_argument(serve)
    add_arguments(serve, ServeSettings)

    spool = commands.add_parser("spool", help="inspect a local spool; hand it over to another node")
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
            help="the gateway's --data-dir (every spool is read: spool/ and upstream-spool/ workers)",
        )
        sub.add_argument(
            "--kind",
            choices=KINDS,
            action="append",
            default=None,
            help="only spools of this kind: main (spool/), upstream (upstream-spool/); repeatable (default: all)",
        )
        sub.add_argument(
            "--spool-encryption-key-file",
            type=Path,
            default=None,
            help="keys of an encrypted spool (default: env GATEWAY_SPOOL_ENCRYPTION_KEY_FILE or "
            "GATEWAY_SPOOL_ENCRYPTION_KEYS)",
        )
    export = spool_commands.add_parser(
        "export", help="write every spool of a stopped gateway to one file, for `spool import` on another node")
    export.add_argument("--data-dir", type=Path, required=True, help="the stopped gateway's --data-dir")
    export.add_argument("--out", type=Path, required=True, help="the export file to create (must not exist)")
    imp = spool_commands.add_parser(
        "import", help="add the spools of an export file to this node's data dir; its gateway replays them")
    imp.add_argument("--data-dir", type=Path, required=True, help="this node's gateway --data-dir")
    imp.add_argument("file", type=Path, help="a file written by `gateway spool export`")
    imp.add_argument("--spool-encryption-key-file", type=Path, default=None,
                     help="this node's spool keys; must open every encrypted record of the export (default: env "
                     "GATEWAY_SPOOL_ENCRYPTION_KEY_FILE or GATEWAY_SPOOL_ENCRYPTION_KEYS)")
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
    add_recordings_command(commands)
    add_config_command(commands)
    add_check_command(commands)
    forbid_abbreviations(parser)
    return parser


def forbid_abbreviations(parser: argparse.ArgumentParser) -> None:
    """`--kafka-boot` must be an error, not a silent `--kafka-bootstrap-servers`, on every sub-command."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                forbid_abbreviations(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except StartupError as exc:  # ConfigError included; serve() reports reload errors itself
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        print(exc.line(), file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `gateway spool dump | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 1


def run_command(args: argparse.Namespace) -> int:
    if args.command == "serve":
        # One worker keeps prometheus-client's plain in-memory values (several times cheaper per
        # update); more need multiprocess mode, chosen before the components import the library.
        multi_worker = requested(ServeSettings, args, "workers") > 1
        with multiprocess_metrics() if multi_worker else contextlib.nullcontext():
            from gateway.edge.setup import Edge
            from gateway.http.components import build_components
            from gateway.supervisor import serve

            def reload_edge() -> Edge:  # SIGHUP: everything built once, as at start; its edge applies
                return build_components(load(ServeSettings, args).validate()).edge

            settings = load(ServeSettings, args).validate()
            return serve(settings, build_components(settings), reload_edge)
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
        from gateway.sinkworker.cli import sink_command

        return sink_command(args)
    if args.command == "recordings":
        from gateway.recordings.cli import recordings_command

        return recordings_command(args)
    return 2


def spool_command(args: argparse.Namespace) -> int:
    if args.spool_command in ("export", "import"):
        return handover_command(args)
    from gateway.spool import SpoolError, iter_records, record_to_json, spool_stats
    from gateway.spool.crypto import load_keyring
    from gateway.spool.layout import spools

    found = spools(args.data_dir, args.kind or KINDS)
    try:
        keyring = load_keyring(args.spool_encryption_key_file)
        if args.spool_command == "stats":
            stats = {spool.name: spool_stats(directory, keyring) for spool, directory in found}
            sys.stdout.buffer.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2) + b"\n")
            return 0
        out = sys.stdout.buffer
        for spool, directory in found:
            for record in iter_records(directory, keyring=keyring):
                out.write(orjson.dumps({"spool": spool.name, **record_to_json(record)}) + b"\n")
        out.flush()
    except SpoolError as exc:
        print(f"gateway spool {args.spool_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def handover_command(args: argparse.Namespace) -> int:
    """`spool export|import`: one JSON summary line on stdout, or one error line on stderr."""
    from gateway.spool.crypto import SpoolKeyError, load_keyring
    from gateway.spool.handover import HandoverError, export_spools, import_spools

    try:
        if args.spool_command == "export":
            result = export_spools(args.data_dir, args.out)
        else:
            result = import_spools(args.data_dir, args.file, load_keyring(args.spool_encryption_key_file))
    except SpoolKeyError as exc:
        print(f"gateway spool {args.spool_command}: {exc}", file=sys.stderr)
        return 2
    except HandoverError as exc:
        print(f"gateway spool {args.spool_command}: {exc}", file=sys.stderr)
        return exc.exit_code
    summary = {"export_id": result.export_id, "records": result.records, "spools": result.spools}
    if result.skipped:
        summary["already_imported"] = result.skipped
    print(orjson.dumps(summary).decode())
    return 0
