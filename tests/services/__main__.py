"""CLI: `python -m tests.services start [NAME ...|all]`, `stop [NAME ...]`, `status`.

State (PIDs, ports, addresses) lives in `.services/state.json`; each service's data and log live
in `.services/<name>/`, wiped at each fresh start.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from tests.services.base import STATE_DIR, STATE_FILE, ServiceError, load_state, save_state
from tests.services.clickhouse_server import ClickHouseServer
from tests.services.kafka_broker import KafkaBroker
from tests.services.redis_server import RedisServer
from tests.services.s3_server import S3Server

# Services managed by name (nginx needs a caller's config, so tests start it themselves).
SERVICES = {cls.name: cls for cls in (KafkaBroker, RedisServer, ClickHouseServer, S3Server)}


def start(names: list[str]) -> int:
    """Start the named services that are not already running."""
    state = load_state()
    for name in names:
        cls = SERVICES[name]
        if name in state and cls.from_record(state[name]).running:
            print(f"{name}: already running {state[name]['addresses']}")
            continue
        service = cls(root=STATE_DIR / name, state_file=STATE_FILE)
        shutil.rmtree(service.root, ignore_errors=True)
        began = time.monotonic()
        try:
            service.start()
        except ServiceError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
        print(f"{name}: started in {time.monotonic() - began:.1f}s, pid {service.pid}, {service.addresses()}")
    return 0


def stop(names: list[str]) -> int:
    """Stop the named services (all recorded ones if none are named) and forget them."""
    state = load_state()
    for name in names or list(state):
        if name in state:
            SERVICES[name].from_record(state.pop(name)).stop()
            print(f"{name}: stopped")
    save_state(state)
    return 0


def status() -> int:
    """Print each recorded service; exit 1 if one of them is not running."""
    state = load_state()
    all_up = True
    for name, record in state.items():
        up = SERVICES[name].from_record(record).running
        all_up &= up
        print(f"{name}: {'running' if up else 'DEAD'} pid {record['pid']} {record['addresses']}")
    if not state:
        print("no services recorded")
    return 0 if all_up else 1


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the command."""
    parser = argparse.ArgumentParser(prog="python -m tests.services", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    names_help = f"any of {', '.join(SERVICES)}, or all (the default)"
    commands.add_parser("start", help="start services").add_argument("names", nargs="*", help=names_help)
    commands.add_parser("stop", help="stop services").add_argument("names", nargs="*", help=names_help)
    commands.add_parser("status", help="show recorded services")
    args = parser.parse_args(argv)
    if args.command == "status":
        return status()
    unknown = set(args.names) - {*SERVICES, "all"}
    if unknown:
        parser.error(f"unknown service(s): {', '.join(sorted(unknown))}")
    names = [] if not args.names or "all" in args.names else list(dict.fromkeys(args.names))
    return start(names or list(SERVICES)) if args.command == "start" else stop(names)

if __name__ == "__main__":
    sys.exit(main())
