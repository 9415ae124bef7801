"""PostHog-compatible ingestion gateway."""

from __future__ import annotations

import functools
import platform
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version


@functools.cache
def version() -> str:
    """The installed version of the `posthog-gateway` distribution ("unknown" in an uninstalled tree)."""
    try:
        return distribution_version("posthog-gateway")
    except PackageNotFoundError:
        return "unknown"


def version_line() -> str:
    """What `gateway --version` prints and the start-up lines carry."""
    return f"gateway {version()} (Python {platform.python_version()})"
