"""`gateway check URL`: the health check from outside, as a client sees the gateway.

Captures one `$gateway_check` event with a test token (answered like a real event, never stored:
gateway/capture/check_event.py), reads /_readiness and, when the gateway says it serves flags,
evaluates one (POST /flags/?v=2). Exit codes: 0 healthy, 1 degraded (still ingesting: Kafka away and
spooling, or flags failing), 2 down (capture refused, not ready, or nothing answering) or a usage
error.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from enum import IntEnum

from gateway.capture.check_event import CHECK_EVENT

USER_AGENT = "gateway-check/1"
USAGE_EXIT = 2


class State(IntEnum):
    """Ordered by severity; the worst probe is the verdict and the exit code."""

    OK = 0
    DEGRADED = 1
    DOWN = 2


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    state: State
    detail: str


@dataclass(frozen=True, slots=True)
class Answer:
    status: int  # 0: no HTTP answer
    body: bytes
    millis: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # scheme://host[:port][/prefix], no trailing slash
    ssl_context: ssl.SSLContext | None
    timeout: float


class UsageError(Exception):
    """A bad argument: reported as one line, exit 2."""


def add_check_command(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check", help="check a running gateway from outside (exit 0 healthy, 1 degraded, 2 down)"
    )
    check.add_argument(
        "url", help="the gateway's base URL, e.g. https://ingest.example.com or 127.0.0.1:8000 (http)"
    )
    check.add_argument("--token", required=True, help="project token of a test project for the event")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    check.add_argument("--cafile", default=None, help="PEM file of the CA(s) to trust for https (a private CA)")
    check.add_argument(
        "--skip-flags", action="store_true", help="do not evaluate a flag even if the gateway serves flags"
    )


def check_command(args: argparse.Namespace) -> int:
    try:
        target = Target(base_url(args.url), ssl_context(args.cafile), args.timeout)
    except UsageError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    probes = run_checks(target, args.token, flags=not args.skip_flags)
    for probe in probes:
        print(f"{probe.name:<10} {probe.state.name.lower():<9} {probe.detail}")
    verdict = max(probe.state for probe in probes)
    print(f"{target.url}: {verdict.name.lower()}")
    return int(verdict)


def base_url(text: str) -> str:
    """http(s)://host[:port][/prefix]; a bare host[:port] means http://. Raises UsageError."""
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urllib.parse.urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as exc:
        raise UsageError(f"url ({text}): {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query or parts.fragment:
        raise UsageError(f"url ({text}): expected http(s)://host[:port][/prefix] or host:port")
    return url.rstrip("/")


def ssl_context(cafile: str | None) -> ssl.SSLContext | None:
    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cafile ({cafile}): {getattr(exc, 'strerror', None) or exc}") from None


def run_checks(target: Target, token: str, flags: bool = True) -> list[Probe]:
    """Capture, flags (only where the gateway says it serves them), readiness; in that order."""
    ready = request(target, "/_readiness", None)
    probes = [check_capture(target, token)]
    if flags:
        probes.append(check_flags(target, token, served=flags_served(ready)))
    probes.append(check_readiness(ready))
    return probes


def check_capture(target: Target, token: str) -> Probe:
    event = {
        "api_key": token,
        "event": CHECK_EVENT,
        "distinct_id": "gateway-check",
        "uuid": str(uuid.uuid4()),
        "properties": {"$lib": "gateway-check"},
    }
    answer = request(target, "/i/v0/e/", event)
    if answer.status == 200:
        return Probe("capture", State.OK, f"200 in {answer.millis:.0f} ms")
    return Probe("capture", State.DOWN, describe(answer))


def flags_served(readiness: Answer) -> bool | None:
    """What /_readiness says (`flags_served`), None when it does not say (not this gateway's answer)."""
    body = _json(readiness.body)
    served = body.get("flags_served") if isinstance(body, dict) else None
    return served if isinstance(served, bool) else None


def check_flags(target: Target, token: str, served: bool | None) -> Probe:
    if served is False:
        return Probe("flags", State.OK, "skipped: this gateway does not serve flags (no --upstream)")
    answer = request(target, "/flags/?v=2", {"token": token, "distinct_id": "gateway-check"})
    if answer.status == 200 and isinstance(_json(answer.body), dict):
        return Probe("flags", State.OK, f"200 in {answer.millis:.0f} ms")
    if answer.status == 404 and served is None:
        return Probe("flags", State.DEGRADED, "404: flags not served here (use --skip-flags if expected)")
    return Probe("flags", State.DEGRADED, describe(answer))


def check_readiness(answer: Answer) -> Probe:
    body = _json(answer.body)
    detail = body.get("detail", "") if isinstance(body, dict) else ""
    if answer.status == 200:
        degraded = isinstance(body, dict) and body.get("status") == "degraded"
        return Probe("readiness", State.DEGRADED if degraded else State.OK, detail or "ready")
    return Probe("readiness", State.DOWN, f"{describe(answer)} {detail}".strip())


def request(target: Target, path: str, body: object | None) -> Answer:
    """GET (body None) or POST JSON; any HTTP status is an answer, a network failure is status 0."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(target.url + path, data, headers), timeout=target.timeout, context=target.ssl_context
        ) as response:
            content = response.read()
            return Answer(response.status, content, _millis(started))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read(), _millis(started))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer(0, b"", _millis(started), error=str(reason))


def describe(answer: Answer) -> str:
    if answer.status == 0:
        return f"no answer: {answer.error}"
    body = _json(answer.body)
    code = body.get("code") if isinstance(body, dict) else None
    return f"{answer.status}{f' {code}' if code else ''} in {answer.millis:.0f} ms"


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _millis(started: float) -> float:
    return (time.perf_counter() - started) * 1000
