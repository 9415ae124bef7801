"""A stand-in PostHog upstream for `suite upstream`: aiohttp + uvloop, reads the body, answers 200.

Capture paths (`/e/`, `/batch/`, `/s/`, ...) get `{"status":1}` without parsing (the upstream's own
cost is not what the suite measures); `/flags` and `/decide` get a canned flags answer, so the
proxied flags scenario carries a realistic response body.
Run: `python -m bench.upstream_app --port 8002 [--workers 2]` (workers share the port via SO_REUSEPORT).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from bench import baseline_app

CAPTURE_BODY = b'{"status":1}'
FLAGS_BODY = orjson.dumps(
    {
        "errorsWhileComputingFlags": False,
        "flags": {
            f"flag-{i}": {
                "key": f"flag-{i}",
                "enabled": i % 2 == 0,
                "variant": None,
                "reason": {"code": "condition_match", "condition_index": 0, "description": "Matched condition set 1"},
                "metadata": {"id": 1000 + i, "version": 3, "payload": None, "description": None},
            }
            for i in range(10)
        },
        "quotaLimited": [],
        "requestId": "00000000-0000-0000-0000-000000000000",
    }
)


async def handle(request: web.Request) -> web.Response:
    """Drain the body; the canned flags JSON for /flags and /decide, `{"status":1}` otherwise."""
    await request.read()
    if request.path.startswith(("/flags", "/decide")):
        return web.Response(body=FLAGS_BODY, content_type="application/json")
    return web.Response(body=CAPTURE_BODY, content_type="application/json")


def main(argv: list[str] | None = None) -> None:
    baseline_app.main(argv, handler=handle, description=__doc__)


if __name__ == "__main__":
    main()
