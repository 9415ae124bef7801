"""Loopback-only helpers: target validation, free ports, waiting for a server to answer HTTP."""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit


class NotLoopbackError(ValueError):
    """The target is not on this machine; this harness only ever loads loopback addresses."""


def require_loopback(url: str) -> str:
    """Return `url` without a trailing slash if its host is a loopback address, else raise.

    Load tests must never leave the machine, so names are resolved and every address checked.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotLoopbackError(f"target must be an http(s) URL, got {url!r}")
    infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_loopback:
            raise NotLoopbackError(f"{parts.hostname} resolves to {address}, which is not loopback")
    return url.rstrip("/")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout_s: float, alive: Callable[[], bool]) -> None:
    """Poll `url` until the server answers with any HTTP status.

    Raises ProcessLookupError as soon as `alive()` turns false, TimeoutError after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if not alive():
            raise ProcessLookupError(f"the server for {url} exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(0.05)
