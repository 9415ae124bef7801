"""Which hosts the gateway proxies to: PostHog's API host and its assets host (static files, remote config)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from yarl import URL

from gateway.settings import ServeSettings

CLOUD_API = "https://{region}.i.posthog.com"
CLOUD_ASSETS = "https://{region}-assets.i.posthog.com"
_CLOUD_HOST = re.compile(r"^(us|eu)\.i\.posthog\.com$")


def _base_url(text: str) -> URL:
    """An http(s) origin with an optional path prefix (self-hosted PostHog under /posthog), no query."""
    url = URL(text.strip().rstrip("/"))
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{text!r} is not an http(s) URL")
    if url.query_string or url.fragment:
        raise ValueError(f"{text!r} must not have a query or fragment")
    return url


@dataclass(frozen=True, slots=True)
class Upstreams:
    """`api` gets flags, /api, logs and events; `assets` gets /static and /array. None: not a proxy."""

    api: URL | None
    assets: URL | None

    @property
    def enabled(self) -> bool:
        return self.api is not None

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> Upstreams:
        """Raises ValueError for an unusable URL."""
        if settings.region:
            api = URL(CLOUD_API.format(region=settings.region))
            default_assets = URL(CLOUD_ASSETS.format(region=settings.region))
        elif settings.upstream:
            api = _base_url(settings.upstream)
            cloud = _CLOUD_HOST.match(api.host or "")
            default_assets = URL(CLOUD_ASSETS.format(region=cloud[1])) if cloud else api
        else:
            if settings.assets_upstream:
                raise ValueError("assets_upstream needs --upstream or --region")
            return cls(None, None)
        assets = _base_url(settings.assets_upstream) if settings.assets_upstream else default_assets
        return cls(api, assets)
