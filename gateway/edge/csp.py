"""`gateway csp --origin https://gw.example.com`: the CSP directives a site needs to use the gateway.

posthog-js loads its scripts from the gateway (`/static/array.js`, remote config `/array/<token>/config.js`,
lazily the recorder, surveys, …) → script-src; sends events, replay and flag requests to it →
connect-src; and the replay recorder starts web workers from blob: URLs → worker-src. The site merges
these sources into its own policy (keeping its 'self' and others).
"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit


def gateway_origin(text: str) -> str:
    """`https://host[:port]` only (what CSP source expressions and Origin headers compare)."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username:
        raise ValueError(f"expected an origin like https://gw.example.com, got {text!r}")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def site_directives(origin: str, *, replay: bool = True) -> dict[str, list[str]]:
    """Directive → sources a site's CSP must include for the gateway at `origin`."""
    origin = gateway_origin(origin)
    directives = {"script-src": [origin], "connect-src": [origin]}
    if replay:
        directives["worker-src"] = [origin, "blob:"]
    return directives


def format_directives(directives: dict[str, list[str]]) -> str:
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


def add_csp_command(commands: argparse._SubParsersAction) -> None:
    """Mount `csp` on the main CLI's sub-commands."""
    csp = commands.add_parser(
        "csp", help="print the CSP directives a site needs to allow the gateway's origin"
    )
    csp.add_argument("--origin", required=True, help="the gateway's public origin, e.g. https://gw.example.com")
    csp.add_argument(
        "--no-replay", dest="replay", action="store_false", help="omit worker-src (session replay not used)"
    )


def csp_command(args: argparse.Namespace) -> int:
    try:
        directives = site_directives(args.origin, replay=args.replay)
    except ValueError as exc:
        print(f"gateway csp: {exc}", file=sys.stderr)
        return 2
    print(format_directives(directives))
    return 0
