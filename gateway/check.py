"""`gateway check URL`: the health check from outside, as a client sees the gateway.

Captures one `$gateway_check` event with a test token, evaluates a flag (POST /flags/?v=2) and reads
/_readiness. Exit codes: 0 healthy, 1 degraded (still ingesting: Kafka away and spooling, flags
failing or not served — a 404 when no upstream is configured), 2 down (capture refused, not ready,
or nothing answering). Standard library only, so it runs anywhere the gateway is installed.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from enum import IntEnum

USER_AGENT = "gateway-check/1"


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


def add_check_command(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check", help="check a running gateway from outside (exit 0 healthy, 1 degraded, 2 down)"
    )
    check.add_argument("url", help="the gateway's base URL, e.g. https://ingest.example.com")
    check.add_argument("--token", required=True, help="project token of a test project for the event")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    check.add_argument(
        "--skip-flags", action="store_true", help="the gateway does not serve flags: do not evaluate one"
    )


def check_command(args: argparse.Namespace) -> int:
    probes = run_checks(args.url.rstrip("/"), args.token, args.timeout, flags=not args.skip_flags)
    for probe in probes:
        print(f"{probe.name:<10} {probe.state.name.lower():<9} {probe.detail}")
    verdict = max(probe.state for probe in probes)
    print(f"{args.url}: {verdict.name.lower()}")
    return int(verdict)


def run_checks(url: str, token: str, timeout: float, flags: bool = True) -> list[Probe]:
    probes = [check_capture(url, token, timeout)]
    if flags:
        probes.append(check_flags(url, token, timeout))
    probes.append(check_readiness(url, timeout))
    return probes


def check_capture(url: str, token: str, timeout: float) -> Probe:
    event = {
        "api_key": token,
        "event": "$gateway_check",
        "distinct_id": "gateway-check",
        "uuid": str(uuid.uuid4()),
        "properties": {"$lib": "gateway-check"},
    }
    answer = request(f"{url}/i/v0/e/", event, timeout)
    if answer.status == 200:
        return Probe("capture", State.OK, f"200 in {answer.millis:.0f} ms")
    return Probe("capture", State.DOWN, describe(answer))


def check_flags(url: str, token: str, timeout: float) -> Probe:
    answer = request(f"{url}/flags/?v=2", {"token": token, "distinct_id": "gateway-check"}, timeout)
    if answer.status == 200 and isinstance(_json(answer.body), dict):
        return Probe("flags", State.OK, f"200 in {answer.millis:.0f} ms")
    if answer.status == 404:
        return Probe("flags", State.DEGRADED, "404: flags not served (no upstream configured?)")
    return Probe("flags", State.DEGRADED, describe(answer))


def check_readiness(url: str, timeout: float) -> Probe:
    answer = request(f"{url}/_readiness", None, timeout)
    body = _json(answer.body)
    detail = body.get("detail", "") if isinstance(body, dict) else ""
    if answer.status == 200:
        degraded = isinstance(body, dict) and body.get("status") == "degraded"
        return Probe("readiness", State.DEGRADED if degraded else State.OK, detail or "ready")
    return Probe("readiness", State.DOWN, f"{describe(answer)} {detail}".strip())


def request(url: str, body: object | None, timeout: float) -> Answer:
    """GET (body None) or POST JSON; any HTTP status is an answer, a network failure is status 0."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=timeout) as response:
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
