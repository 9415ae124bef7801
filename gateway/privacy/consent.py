"""Browser privacy signals: `DNT: 1` (Do Not Track) and `Sec-GPC: 1` (Global Privacy Control).

Modes: `ignore` (default); `drop` — answer 200 but store nothing (counted); `anonymise` — store the
event without the IP and without anything that builds a person profile: `$set`/`$set_once` are
removed, `$ip` is removed, and `$process_person_profile: false` plus `$geoip_disable: true` are set
(PostHog's own switches for anonymous events).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from gateway.privacy.denylist import PERSON_KEYS


class ConsentMode(StrEnum):
    IGNORE = "ignore"
    DROP = "drop"
    ANONYMISE = "anonymise"


def opted_out(headers: Mapping[str, str]) -> bool:
    """True when the request carries `DNT: 1` or `Sec-GPC: 1`."""
    return headers.get("DNT", "").strip() == "1" or headers.get("Sec-GPC", "").strip() == "1"


def anonymise_event(event: dict[str, Any]) -> None:
    """Strip what identifies or profiles a person, keeping the event itself (in place)."""
    properties = event["properties"]
    for key in PERSON_KEYS:
        event.pop(key, None)
        properties.pop(key, None)
    properties.pop("$ip", None)
    properties["$process_person_profile"] = False
    properties["$geoip_disable"] = True
