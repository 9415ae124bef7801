"""Keeps each configured project's flag definitions fresh: `GET /flags/definitions?token=…` every interval.

Authenticated with the personal (or secret) API key as a bearer token; the ETag is sent back as
If-None-Match so unchanged definitions cost a 304. A failed poll keeps the last good definitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from yarl import URL

from gateway.flags.definitions import Definitions
from gateway.upstream.circuit import CircuitOpen
from gateway.upstream.client import UpstreamClient, UpstreamError

log = logging.getLogger(__name__)


class DefinitionsPoller:
    """Polls the upstream for every token's definitions; `definitions[token]` is the latest good copy."""

    def __init__(
        self, client: UpstreamClient, base: URL, tokens: Sequence[str], api_key: str, interval: float, timeout: float
    ) -> None:
        self.client = client
        self.base = base
        self.tokens = tuple(tokens)
        self.api_key = api_key
        self.interval = interval
        self.timeout = timeout
        self.definitions: dict[str, Definitions] = {}
        self._etags: dict[str, str] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Poll now and every interval until `close()` (the client must be started)."""
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            results = await asyncio.gather(*(self.poll(token) for token in self.tokens), return_exceptions=True)
            for token, result in zip(self.tokens, results, strict=True):
                if isinstance(result, Exception):  # never let one bad answer stop the polling
                    log.error("flag definitions poll crashed", extra={"token": token}, exc_info=result)
            await asyncio.sleep(self.interval)

    async def poll(self, token: str) -> None:
        """One poll of one token's definitions; failures are logged and leave the last copy in place."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if token in self._etags and token in self.definitions:
            headers["If-None-Match"] = self._etags[token]
        url = (URL(str(self.base).rstrip("/") + "/flags/definitions") % {"token": token, "send_cohorts": ""})
        try:
            response = await self.client.request(
                "GET", url, route="flags", headers=headers, body=None, timeout=self.timeout
            )
        except (CircuitOpen, UpstreamError) as exc:
            log.warning("flag definitions poll failed", extra={"token": token, "error": str(exc)})
            return
        if response.status == 304:
            return
        if response.status != 200:
            log.warning("flag definitions poll answered %s", response.status, extra={"token": token})
            return
        try:
            self.definitions[token] = Definitions.parse(response.body)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("flag definitions unusable", extra={"token": token, "error": str(exc)})
            return
        if etag := response.headers.get("ETag"):
            self._etags[token] = etag
