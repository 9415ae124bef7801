"""Client IP minimisation: keep, truncate (IPv4 /24, IPv6 /48) or drop.

A dropped IP becomes the empty string: capture's `ip` field is a string, and PostHog ingestion only
copies it into `$ip` (and GeoIP) when it is non-empty, so "" means "no IP" downstream.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from functools import lru_cache

DROPPED_IP = ""


class IpMode(StrEnum):
    KEEP = "keep"
    TRUNCATE = "truncate"
    DROP = "drop"


@lru_cache(maxsize=8192)
def truncate_ip(address: str) -> str:
    """Zero the host part: IPv4 to its /24, IPv6 to its /48 (IPv4-mapped IPv6 as IPv4); non-IPs → ""."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return DROPPED_IP
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def minimise_ip(address: str, mode: IpMode) -> str:
    """The address as `mode` allows it to be stored."""
    if mode is IpMode.KEEP:
        return address
    if mode is IpMode.DROP:
        return DROPPED_IP
    return truncate_ip(address)


def token_ip_modes(entries: tuple[str, ...]) -> dict[str, IpMode]:
    """`TOKEN=MODE` entries → per-project IP modes; raises ValueError naming a bad entry."""
    modes = {}
    for entry in entries:
        token, sep, mode = entry.rpartition("=")
        if not sep or not token:
            raise ValueError(f"invalid entry {entry!r} (expected TOKEN=keep|truncate|drop)")
        try:
            modes[token] = IpMode(mode)
        except ValueError:
            raise ValueError(f"invalid mode in {entry!r} (expected keep, truncate or drop)") from None
    return modes
