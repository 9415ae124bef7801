"""PostHog-compatible ingestion gateway."""

from __future__ import annotations

import platform

__version__ = "0.1.0"  # the distribution's version too (pyproject.toml reads it from here)


def version_line() -> str:
    """What `gateway --version` prints."""
    return f"gateway {__version__} (Python {platform.python_version()})"
