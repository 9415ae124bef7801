"""A `/flags` or `/decide` request answered from local definitions, in the format its version asks for.

`answer()` returns None whenever the upstream must answer instead: a body it cannot read simply, config
fields requested, definitions not loaded for the token, or any requested flag that is remote or
inconclusive for this request (the whole request is forwarded, never half answered).
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from gateway.flags.definitions import Definitions
from gateway.flags.evaluate import Evaluation, Inconclusive, evaluate_flag, payload_of
from gateway.flags.poller import DefinitionsPoller
from gateway.metrics import serve as metrics
from gateway.settings import ServeSettings
from gateway.upstream.client import UpstreamClient

_MAX_DECODED = 1024 * 1024  # a flags request inflating to more than this is left to the upstream
# Request fields whose effect is the server's to decide (flag selection by runtime or environment).
_SERVER_CONTEXT = ("evaluation_environments", "evaluation_contexts", "evaluation_runtime")


def response_format(path: str, query: Mapping[str, str]) -> str | None:
    """FlagsV2, FlagsV1, DecideV2 or DecideV1 for this path and `v` (PostHog's rules), None if unreadable."""
    raw = query.get("v", query.get("version", "1")) or "1"
    try:
        version = int(raw)
    except ValueError:
        return None
    if version < 0:
        return None
    if path.startswith("/decide"):
        return ("DecideV1", "DecideV1", "DecideV2", "FlagsV1")[version] if version < 4 else "FlagsV2"
    return "FlagsV2" if version >= 2 else "FlagsV1"


def request_json(body: bytes, content_encoding: str, query: Mapping[str, str]) -> dict[str, Any] | None:
    """The request's JSON object (plain, or gzipped up to _MAX_DECODED); None for anything else."""
    try:
        if query.get("compression") == "gzip" or "gzip" in content_encoding or body[:2] == b"\x1f\x8b":
            inflater = zlib.decompressobj(wbits=31)
            body = inflater.decompress(body, _MAX_DECODED)
            if inflater.unconsumed_tail or not inflater.eof:
                return None
        data = orjson.loads(body)
    except (zlib.error, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def answer(
    definitions: Mapping[str, Definitions], path: str, query: Mapping[str, str], data: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The response body for this request, or None to forward it."""
    fmt = response_format(path, query)
    if fmt is None or query.get("config", "").lower() in ("1", "true") or data.get("disable_flags"):
        return None
    if query.get("only_evaluate_survey_feature_flags") or any(name in data for name in _SERVER_CONTEXT):
        return None
    token = _first(data, "token", "api_key", "$token")
    distinct_id = _first(data, "distinct_id", "$distinct_id")
    project = definitions.get(token) if isinstance(token, str) else None
    if project is None or isinstance(distinct_id, bool) or not isinstance(distinct_id, (str, int)):
        return None
    if distinct_id == "":
        return None
    distinct_id = str(distinct_id)[:200]
    person = _mapping(_first(data, "person_properties", "$properties"))
    groups = _mapping(_first(data, "groups", "$groups"))
    group_properties = _mapping(_first(data, "group_properties", "$group_properties"))
    if person is None or groups is None or group_properties is None:
        return None
    keys = _first(data, "flag_keys", "flag_keys_to_evaluate")
    wanted = [key for key in (keys if isinstance(keys, list) else project.flags)
              if isinstance(key, str) and key in project.flags]
    if any(key in project.remote for key in wanted):
        return None
    results: dict[str, tuple[Mapping[str, Any], Evaluation]] = {}
    for key in wanted:
        flag = project.flags[key]
        if not flag.get("active"):
            continue
        try:
            results[key] = flag, evaluate_flag(
                flag, distinct_id, person, groups, group_properties, project.group_types,
                project.property_matching_version,
            )
        except Inconclusive:
            return None
    return _render(fmt, results)


def _render(fmt: str, results: Mapping[str, tuple[Mapping[str, Any], Evaluation]]) -> dict[str, Any]:
    request_id = str(uuid.uuid4())
    if fmt == "FlagsV2":
        flags = {key: _flag_detail(key, flag, result) for key, (flag, result) in results.items()}
        return {"flags": flags, "errorsWhileComputingFlags": False, "requestId": request_id}
    values = {key: result.value for key, (_, result) in results.items()}
    if fmt == "FlagsV1":
        payloads = {key: payload_of(flag, result.value) for key, (flag, result) in results.items() if result.value}
        return {
            "featureFlags": values,
            "featureFlagPayloads": {key: payload for key, payload in payloads.items() if payload is not None},
            "errorsWhileComputingFlags": False,
            "requestId": request_id,
        }
    enabled = {key: value for key, value in values.items() if value}
    return {"featureFlags": list(enabled) if fmt == "DecideV1" else enabled, "requestId": request_id}


def _flag_detail(key: str, flag: Mapping[str, Any], result: Evaluation) -> dict[str, Any]:
    return {
        "key": key,
        "enabled": bool(result.value),
        "variant": result.value if isinstance(result.value, str) else None,
        "reason": {"code": result.reason, "condition_index": result.condition_index},
        "metadata": {
            "id": flag.get("id"),
            "version": flag.get("version"),
            "description": flag.get("name"),
            "payload": payload_of(flag, result.value) if result.value else None,
        },
    }


def _first(data: Mapping[str, Any], *names: str) -> Any:
    return next((data[name] for name in names if name in data), None)


def _mapping(value: Any) -> Mapping[str, Any] | None:
    """A properties object; absent or null is empty, anything else unreadable."""
    if value is None:
        return {}
    return value if isinstance(value, dict) else None


class LocalFlags:
    """The flags route's local answerer: polled definitions in, `web.Response` (or None: forward) out."""

    def __init__(self, poller: DefinitionsPoller) -> None:
        self.poller = poller

    @classmethod
    def from_settings(
        cls, settings: ServeSettings, client: UpstreamClient, base: URL, key: str
    ) -> LocalFlags | None:
        """None unless tokens are configured; `key` is the personal API key (its file's or the setting)."""
        if not settings.flags_local_token:
            return None
        poller = DefinitionsPoller(
            client, base, settings.flags_local_token, key, settings.flags_poll_interval,
            settings.upstream_timeout,
        )
        return cls(poller)

    def respond(self, request: web.Request, body: bytes) -> web.Response | None:
        """The local answer to a POST /flags or /decide, or None when the upstream must answer."""
        started = time.perf_counter()
        data = request_json(body, request.headers.get("Content-Encoding", ""), request.query)
        result = None if data is None else answer(self.poller.definitions, _endpoint(request), request.query, data)
        metrics.FLAGS_LOCAL_LATENCY.observe(time.perf_counter() - started)
        if result is None:
            metrics.FLAGS_ANSWERED.labels("upstream").inc()
            return None
        metrics.FLAGS_ANSWERED.labels("local").inc()
        metrics.HTTP_REQUESTS.labels("flags", "200").inc()
        return web.Response(body=orjson.dumps(result), content_type="application/json")


def is_evaluation(request: web.Request) -> bool:
    """A POST to /flags or /decide (under any prefix or alias), not to /flags/definitions."""
    return request.method == "POST" and _endpoint(request) in ("/flags", "/decide")


def _endpoint(request: web.Request) -> str:
    """`/flags`, `/decide` or another last path segment (the edge has already undone path aliases)."""
    return "/" + request.path.rstrip("/").rsplit("/", 1)[-1]
