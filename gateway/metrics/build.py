"""`gateway_build_info`: which version runs, for every process that exports metrics."""

from __future__ import annotations

import platform

from prometheus_client import Gauge

from gateway import __version__

BUILD_INFO = Gauge(
    "gateway_build_info", "Always 1; the labels say which gateway version and Python run", ["version", "python"],
    multiprocess_mode="livemax",
)


def record_build() -> None:
    BUILD_INFO.labels(__version__, platform.python_version()).set(1)
