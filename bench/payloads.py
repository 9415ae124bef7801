"""Request bodies shaped like what real PostHog SDKs send, one fresh uuid per event.

Each profile turns a `PayloadContext` into a `BenchRequest`: method, path, headers, body and the
uuids of the events inside it (so a receiver can count distinct events and the harness can log acks).
Shapes follow what posthog-js 1.449, posthog-python 7.x and posthog-node 5.x send.
"""

from __future__ import annotations

import base64
import gzip
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import uuid_utils

JS_LIB_VERSION = "1.449.2"
PYTHON_LIB_VERSION = "7.91.1"
NODE_LIB_VERSION = "5.70.0"
USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
PAGES = ("/", "/pricing", "/docs/getting-started", "/blog/launch-week", "/signup", "/app/dashboard")
JS_EVENTS = ("$pageview", "$autocapture", "$pageleave", "signed_up", "$web_vitals")
SERVER_EVENTS = ("order_completed", "invoice_paid", "api_call", "job_finished", "$identify")


@dataclass(slots=True)
class BenchRequest:
    """One HTTP request to send, and the uuids of the events it carries (empty for /flags)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    uuids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PayloadContext:
    """Knobs shared by every profile; `rng` makes runs reproducible with --seed."""

    token: str = "phc_bench_token"
    distinct_ids: int = 1000
    batch_size: int | None = None
    event_bytes: int = 1024
    replay_bytes: int = 64 * 1024
    rng: random.Random = field(default_factory=random.Random)

    def distinct_id(self) -> str:
        return f"user-{self.rng.randrange(self.distinct_ids)}"

    def session_id(self, distinct_id: str) -> str:
        """A session id stable per distinct_id (a deterministic uuid), as a browser tab keeps one."""
        return str(uuid_utils.uuid5(uuid_utils.NAMESPACE_URL, f"session/{distinct_id}"))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _uuid() -> str:
    return str(uuid_utils.uuid7())


def _gzip(data: bytes) -> bytes:
    """gzip like fflate/zlib at their default level; mtime=0 keeps bodies deterministic."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def _urlencode_base64(data: bytes) -> bytes:
    """Percent-encode the three base64 characters that are not form-safe (as URLSearchParams does)."""
    return data.replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")


def _pad(event: dict, target_bytes: int) -> dict:
    """Grow `event` with a filler property until its JSON is about `target_bytes` long."""
    missing = target_bytes - len(orjson.dumps(event)) - len(',"$bench_pad":""')
    if missing > 0:
        event["properties"]["$bench_pad"] = "x" * missing
    return event


def js_event(ctx: PayloadContext, now: str) -> dict:
    """A posthog-js event as queued by the browser SDK (token inside properties)."""
    distinct_id = ctx.distinct_id()
    page = ctx.rng.choice(PAGES)
    session = ctx.session_id(distinct_id)
    return {
        "uuid": _uuid(),
        "event": ctx.rng.choice(JS_EVENTS),
        "properties": {
            "$os": "Mac OS X",
            "$os_version": "10.15.7",
            "$browser": "Chrome",
            "$browser_version": 131,
            "$device_type": "Desktop",
            "$current_url": f"https://example.com{page}",
            "$host": "example.com",
            "$pathname": page,
            "$raw_user_agent": USER_AGENT,
            "$browser_language": "en-US",
            "$screen_height": 1080,
            "$screen_width": 1920,
            "$viewport_height": 934,
            "$viewport_width": 1920,
            "$lib": "web",
            "$lib_version": JS_LIB_VERSION,
            "$insert_id": f"{ctx.rng.getrandbits(64):016x}",
            "$referrer": "$direct",
            "$referring_domain": "$direct",
            "distinct_id": distinct_id,
            "$device_id": distinct_id,
            "$session_id": session,
            "$window_id": session,
            "$pageview_id": _uuid(),
            "token": ctx.token,
            "title": "Example page",
        },
        "timestamp": now,
    }


def server_event(ctx: PayloadContext, now: str, lib: str, version: str) -> dict:
    """An event as queued by posthog-python / posthog-node (distinct_id at the root)."""
    return {
        "event": ctx.rng.choice(SERVER_EVENTS),
        "distinct_id": ctx.distinct_id(),
        "properties": {
            "$lib": lib,
            "$lib_version": version,
            "$geoip_disable": True,
            "plan": ctx.rng.choice(("free", "pro", "enterprise")),
            "amount_cents": ctx.rng.randrange(100, 100_000),
            "region": ctx.rng.choice(("eu-west-1", "us-east-1", "ap-south-1")),
        },
        "timestamp": now,
        "uuid": _uuid(),
        "type": "capture",
    }


def _js_batch(ctx: PayloadContext, default_size: int) -> tuple[bytes, list[str]]:
    now = _now_iso()
    events = [js_event(ctx, now) for _ in range(ctx.batch_size or default_size)]
    body = orjson.dumps({"api_key": ctx.token, "batch": events, "sent_at": now})
    return body, [e["uuid"] for e in events]


def js_gzip(ctx: PayloadContext) -> BenchRequest:
    """posthog-js with remote config working: gzip body, text/plain, no compression hint."""
    body, uuids = _js_batch(ctx, 10)
    return BenchRequest("POST", "/e/", {"Content-Type": "text/plain"}, _gzip(body), uuids)


def js_beacon(ctx: PayloadContext) -> BenchRequest:
    """posthog-js unload beacon: `data=<urlencoded base64(JSON)>` form with ?compression=base64."""
    body, uuids = _js_batch(ctx, 3)
    form = b"data=" + _urlencode_base64(base64.b64encode(body))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return BenchRequest("POST", "/e/?compression=base64", headers, form, uuids)


def _server_batch(ctx: PayloadContext, default_size: int, lib: str, version: str) -> tuple[bytes, list[str]]:
    now = _now_iso()
    events = [server_event(ctx, now, lib, version) for _ in range(ctx.batch_size or default_size)]
    body = orjson.dumps({"api_key": ctx.token, "batch": events, "sent_at": now})
    return body, [e["uuid"] for e in events]


def python_batch(ctx: PayloadContext) -> BenchRequest:
    """posthog-python flush: POST /batch/ plain JSON of flush_at=100 events."""
    body, uuids = _server_batch(ctx, 100, "posthog-python", PYTHON_LIB_VERSION)
    headers = {"Content-Type": "application/json", "User-Agent": f"posthog-python/{PYTHON_LIB_VERSION}"}
    return BenchRequest("POST", "/batch/", headers, body, uuids)


def node_batch(ctx: PayloadContext) -> BenchRequest:
    """posthog-node flush: POST /batch/ JSON with Content-Encoding: gzip (its default)."""
    body, uuids = _server_batch(ctx, 20, "posthog-node", NODE_LIB_VERSION)
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "User-Agent": f"posthog-node/{NODE_LIB_VERSION}",
    }
    return BenchRequest("POST", "/batch/", headers, _gzip(body), uuids)


def single(ctx: PayloadContext) -> BenchRequest:
    """One ~1 KB (--event-bytes) posthog-js event posted alone as application/json to /e/."""
    event = _pad(js_event(ctx, _now_iso()), ctx.event_bytes)
    return BenchRequest(
        "POST", "/e/", {"Content-Type": "application/json"}, orjson.dumps(event), [event["uuid"]]
    )


def _rrweb_mutations(ctx: PayloadContext, target_bytes: int) -> list[dict]:
    """rrweb incremental snapshots (type 3) adding DOM nodes, about `target_bytes` of JSON."""
    items: list[dict] = []
    size = 0
    node_id = ctx.rng.randrange(1000, 100_000)
    while size < target_bytes:
        node_id += 1
        item = {
            "type": 3,
            "data": {
                "source": 0,
                "adds": [
                    {
                        "parentId": node_id - 1,
                        "nextId": None,
                        "node": {
                            "type": 2,
                            "tagName": ctx.rng.choice(("div", "span", "li", "button")),
                            "attributes": {"class": f"card card-{node_id % 97} flex items-center gap-2"},
                            "childNodes": [],
                            "id": node_id,
                        },
                    }
                ],
                "removes": [],
                "texts": [{"id": node_id, "value": f"Row {node_id}: lorem ipsum dolor sit amet"}],
                "attributes": [],
            },
            "timestamp": int(datetime.now(UTC).timestamp() * 1000),
        }
        items.append(item)
        size += len(orjson.dumps(item))
    return items


def replay(ctx: PayloadContext) -> BenchRequest:
    """posthog-js recorder flush: gzip JSON array of `$snapshot` events for one session to /s/."""
    distinct_id = ctx.distinct_id()
    session = ctx.session_id(distinct_id)
    now = _now_iso()
    events = []
    chunks = max(1, ctx.replay_bytes // (16 * 1024))
    for _ in range(chunks):
        data = _rrweb_mutations(ctx, ctx.replay_bytes // chunks)
        events.append(
            {
                "uuid": _uuid(),
                "event": "$snapshot",
                "properties": {
                    "$snapshot_data": data,
                    "$session_id": session,
                    "$window_id": session,
                    "$snapshot_bytes": len(orjson.dumps(data)),
                    "$lib": "web",
                    "$lib_version": JS_LIB_VERSION,
                    "distinct_id": distinct_id,
                    "token": ctx.token,
                },
                "timestamp": now,
            }
        )
    body = _gzip(orjson.dumps(events))
    return BenchRequest("POST", "/s/", {"Content-Type": "text/plain"}, body, [e["uuid"] for e in events])


def flags(ctx: PayloadContext) -> BenchRequest:
    """A /flags/?v=2 evaluation request (JSON, as posthog-node sends it); carries no events."""
    distinct_id = ctx.distinct_id()
    body = {
        "token": ctx.token,
        "distinct_id": distinct_id,
        "groups": {},
        "$anon_distinct_id": distinct_id,
        "person_properties": {"email": f"{distinct_id}@example.com"},
        "group_properties": {},
        "timezone": "Europe/Paris",
        "sent_at": _now_iso(),
    }
    return BenchRequest("POST", "/flags/?v=2", {"Content-Type": "application/json"}, orjson.dumps(body))


PROFILES: dict[str, Callable[[PayloadContext], BenchRequest]] = {
    "js-gzip": js_gzip,
    "js-beacon": js_beacon,
    "python-batch": python_batch,
    "node-batch": node_batch,
    "single": single,
    "replay": replay,
    "flags": flags,
}
