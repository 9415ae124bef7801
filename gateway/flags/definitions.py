"""Flag definitions as served by PostHog's `/flags/definitions`, and which of them the gateway can evaluate.

A flag is evaluated locally only when its answer depends on nothing but the request: the distinct_id or
group key (bucketing) and the properties the SDK sent. Anything needing server-side state (cohorts, flag
dependencies, experience continuity, device-id bucketing, feature enrollment, runtime or environment
restrictions, date/semver operators) makes
the flag "remote", and any request touching a remote flag is forwarded whole to the upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

# Operators evaluated locally (gateway/flags/evaluate.py); any other operator makes the flag remote.
LOCAL_OPERATORS = frozenset({
    "exact", "is_not", "is_set", "is_not_set", "icontains", "not_icontains", "regex", "not_regex",
    "gt", "gte", "lt", "lte",
})


@dataclass(frozen=True, slots=True)
class Definitions:
    """One project's flags (by key), group type names by index, and the keys of flags needing the server."""

    flags: Mapping[str, Mapping[str, Any]]
    group_types: Mapping[str, str]
    remote: frozenset[str] = field(default_factory=frozenset)
    property_matching_version: int = 1

    @classmethod
    def parse(cls, body: bytes) -> Definitions:
        """Definitions from a `/flags/definitions` answer; raises ValueError when it is not one."""
        data = orjson.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("flags"), list):
            raise ValueError("not a flag definitions document")
        flags = {flag["key"]: flag for flag in data["flags"] if isinstance(flag, dict) and "key" in flag}
        group_types = {str(k): str(v) for k, v in (data.get("group_type_mapping") or {}).items()}
        version = data.get("property_matching_version", 1)
        remote = frozenset(key for key, flag in flags.items() if not _locally_evaluable(flag, group_types, version))
        return cls(flags, group_types, remote, version)


def _locally_evaluable(flag: Mapping[str, Any], group_types: Mapping[str, str], version: object) -> bool:
    """Whether the request alone decides this flag; a definition of an unexpected shape is left to the server."""
    try:
        return _request_decides(flag, group_types, version)
    except (AttributeError, TypeError):
        return False


def _request_decides(flag: Mapping[str, Any], group_types: Mapping[str, str], version: object) -> bool:
    if not flag.get("active"):
        return True  # inactive flags are false whatever their filters say
    filters = flag.get("filters") or {}
    if version not in (1, 2) or flag.get("ensure_experience_continuity") or filters.get("feature_enrollment"):
        return False
    if "device_id" in (flag.get("bucketing_identifier"), filters.get("bucketing_identifier")):
        return False
    if flag.get("evaluation_runtime") not in (None, "all") or flag.get("evaluation_tags"):
        return False  # the server picks these by the caller's runtime and evaluation environments
    aggregation = filters.get("aggregation_group_type_index")
    if aggregation is not None and str(aggregation) not in group_types:
        return False
    if not all(isinstance(filters.get(name) or {}, dict) for name in ("payloads", "holdout", "multivariate")):
        return False
    exclusion = (filters.get("holdout") or {}).get("exclusion_percentage")
    if exclusion is not None and not _is_number(exclusion):
        return False
    variants = (filters.get("multivariate") or {}).get("variants") or []
    if not all(isinstance(v.get("key"), str) and _is_number(v.get("rollout_percentage")) for v in variants):
        return False
    for condition in filters.get("groups") or []:
        rollout = condition.get("rollout_percentage")
        if rollout is not None and not _is_number(rollout):
            return False
        if condition.get("aggregation_group_type_index", aggregation) != aggregation:
            return False  # mixed person/group targeting
        for prop in condition.get("properties") or []:
            if prop.get("type") in ("cohort", "flag") or (prop.get("operator") or "exact") not in LOCAL_OPERATORS:
                return False
            if not isinstance(prop.get("key"), str):
                return False
    return True


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
