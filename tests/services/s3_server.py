"""A real S3-compatible server: `s3s-fs` (crates.io, built by scripts/install-system-deps into
`~/.cache/posthog-gateway/s3s-fs-<version>/bin`, outside the checkout so a fresh clone reuses it),
serving a directory as buckets on a free loopback port.

Each top-level directory of its data root is a bucket; the fixture creates the test bucket as one.
Requests must be signed (SigV4) with the access key and secret below.
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.services.base import HOST, Service, ServiceError, free_port

S3S_VERSION = "0.14.1"
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
BUILD_ROOT = USER_CACHE / "posthog-gateway" / f"s3s-fs-{S3S_VERSION}"
BINARY = BUILD_ROOT / "bin" / "s3s-fs"
ACCESS_KEY = "gateway-test"
SECRET_KEY = "gateway-test-secret"
BUCKET = "recordings"


def answers_http(url: str) -> bool:
    """Whether anything answers HTTP at `url` (an S3 error for an unsigned request counts)."""
    try:
        with contextlib.closing(urllib.request.urlopen(url, timeout=1)):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@dataclass(kw_only=True)
class S3Server(Service):
    """s3s-fs over `root/data`, with one bucket (`recordings`) created empty."""

    name = "s3"
    port: int = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def addresses(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint_url, "bucket": BUCKET}

    def start(self) -> None:
        if not BINARY.exists():
            raise ServiceError(f"{BINARY} missing; run scripts/install-system-deps")
        self.port = self.port or free_port()
        data = self.root / "data"
        (data / BUCKET).mkdir(parents=True, exist_ok=True)
        self._spawn([str(BINARY), "--host", HOST, "--port", str(self.port), "--access-key", ACCESS_KEY,
                     "--secret-key", SECRET_KEY, str(data)])
        self._wait(lambda: answers_http(self.endpoint_url), timeout=20)
