"""Evaluate flags the way PostHog's SDKs do locally (posthog-python `feature_flags.py`), bucket for bucket.

Bucketing: sha1 of `<flag key>.<distinct_id or group key>` (plus salt "variant" for variants), first 15
hex digits over 0xFFFFFFFFFFFFFFF. Where the SDK would carry on past an inconclusive condition, this
evaluator stops and raises `Inconclusive` instead: the server (which knows stored person properties)
might match that condition, so the request is forwarded rather than answered differently.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_LONG_SCALE = float(0xFFFFFFFFFFFFFFF)
_NUMERIC = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Regex syntax Python and the flags service (Rust) agree on; anything else is left to the server.
_SAFE_REGEX = re.compile(r"(?:[A-Za-z0-9 _\-@.^$*+?|()/:,#%&=~'\"!<>]|\\[.\-+*?()\[\]{}/\\|^$dDwWsS]"
                         r"|\[\^?(?:[A-Za-z0-9 _\-@./:]|\\[dDwWsS])+\]|\{[0-9]+(?:,[0-9]*)?\})*")

FlagValue = bool | str


class Inconclusive(Exception):
    """The flag's value depends on something the request did not carry: ask the upstream."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A flag's value and why: a FlagsV2 reason code and the deciding condition's index (if any)."""

    value: FlagValue
    reason: str
    condition_index: int | None = None


def bucket(key: str, bucketing_value: str, salt: str = "", separator: str = ".") -> float:
    """PostHog's deterministic hash of a flag key and identifier into [0, 1]."""
    digest = hashlib.sha1(f"{key}{separator}{bucketing_value}{salt}".encode()).hexdigest()
    return int(digest[:15], 16) / _LONG_SCALE


def evaluate_flag(
    flag: Mapping[str, Any],
    distinct_id: str,
    person_properties: Mapping[str, Any],
    groups: Mapping[str, Any],
    group_properties: Mapping[str, Mapping[str, Any]],
    group_types: Mapping[str, str],
    matching_version: int = 1,
) -> Evaluation:
    """One locally evaluable flag (see definitions.py) for one request; raises Inconclusive."""
    filters = flag.get("filters") or {}
    aggregation = filters.get("aggregation_group_type_index")
    if aggregation is None:
        bucketing_value, properties = distinct_id, person_properties
    else:
        group_name = group_types[str(aggregation)]
        if group_name not in groups:
            return Evaluation(False, "no_group_type")
        group_key, sent = groups[group_name], group_properties.get(group_name) or {}
        if isinstance(group_key, bool) or not isinstance(group_key, (str, int)) or not isinstance(sent, dict):
            raise Inconclusive("group key or properties of an unexpected type")
        bucketing_value, properties = str(group_key), {"$group_key": group_key, **sent}
    holdout = _holdout_variant(filters, bucketing_value)
    if holdout is not None:
        return Evaluation(holdout, "holdout_condition_value")
    out_of_rollout: int | None = None
    for index, condition in enumerate(filters.get("groups") or []):
        if not all(_match_property(prop, properties, matching_version) for prop in condition.get("properties") or []):
            continue
        rollout = condition.get("rollout_percentage")
        if rollout is not None and bucket(flag["key"], bucketing_value) > rollout / 100:
            out_of_rollout = index if out_of_rollout is None else out_of_rollout
            if filters.get("early_exit"):
                break
            continue
        variants = (filters.get("multivariate") or {}).get("variants") or []
        override = condition.get("variant")
        if override and override in [variant["key"] for variant in variants]:
            return Evaluation(override, "condition_match", index)
        return Evaluation(_variant(flag["key"], variants, bucketing_value) or True, "condition_match", index)
    if out_of_rollout is not None:
        return Evaluation(False, "out_of_rollout_bound", out_of_rollout)
    return Evaluation(False, "no_condition_match")


def payload_of(flag: Mapping[str, Any], value: FlagValue) -> Any:
    """The payload stored for a flag's value ("true" for boolean flags, else the variant), or None."""
    payloads = (flag.get("filters") or {}).get("payloads") or {}
    return payloads.get(str(value).lower() if isinstance(value, bool) else value)


def _variant(key: str, variants: list[Mapping[str, Any]], bucketing_value: str) -> str | None:
    hashed = bucket(key, bucketing_value, salt="variant")
    low = 0.0
    for variant in variants:
        high = low + variant["rollout_percentage"] / 100
        if low <= hashed < high:
            return variant["key"]
        low = high
    return None


def _holdout_variant(filters: Mapping[str, Any], bucketing_value: str) -> str | None:
    holdout = filters.get("holdout")
    if not holdout or holdout.get("exclusion_percentage") is None or holdout.get("id") is None:
        return None
    percentage = min(max(float(holdout["exclusion_percentage"]), 0.0), 100.0)
    if percentage != 100.0 and bucket("holdout", bucketing_value, separator="-") > percentage / 100:
        return None
    return f"holdout-{holdout['id']}"


def _match_property(prop: Mapping[str, Any], properties: Mapping[str, Any], matching_version: int) -> bool:
    key, value = prop["key"], prop.get("value")
    operator = prop.get("operator") or "exact"
    if key not in properties:
        raise Inconclusive(f"property {key!r} not sent")
    if operator in ("is_set", "is_not_set"):
        return operator == "is_set"
    actual = properties[key]
    if operator in ("gt", "gte", "lt", "lte"):
        return _compare(operator, _number(value, required=True), _number(actual))
    if operator in ("exact", "is_not"):
        matched = _exact(value, actual, matching_version)
        return matched if operator == "exact" else not matched
    if operator in ("icontains", "not_icontains"):
        needle, text = _text(value), _text(actual)
        if not (needle.isascii() and text.isascii()):
            raise Inconclusive("non-ASCII text comparison")
        found = needle.lower() in text.lower()
        return found if operator == "icontains" else not found
    found = _regex_search(str(value), _text(actual))
    return found if operator == "regex" else not found


def _compare(operator: str, limit: float | None, actual: float | None) -> bool:
    if actual is None or limit is None:
        return False
    return {"gt": actual > limit, "gte": actual >= limit, "lt": actual < limit, "lte": actual <= limit}[operator]


def _number(value: object, required: bool = False) -> float | None:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    parsed = float(value) if numeric or (isinstance(value, str) and _NUMERIC.fullmatch(value)) else None
    if parsed is not None and not math.isfinite(parsed):
        parsed = None
    if parsed is None and required:
        raise Inconclusive("numeric condition without a number")
    return parsed


def _exact(value: object, actual: object, matching_version: int) -> bool:
    actual_text = _text(actual).lower()
    if value == []:
        return _truthy(actual)
    if matching_version != 2 and _boolean_like(value):
        return _truthy(value) == _truthy(actual)
    candidates = value if isinstance(value, list) else [value]
    return actual_text in [_text(candidate).lower() for candidate in candidates]


def _text(value: object) -> str:
    """A scalar as PostHog compares it as text; lists, objects and exotic floats go to the server."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and "e" not in repr(value):
        return repr(value)
    raise Inconclusive("value is not a plain scalar")


def _boolean_like(value: object) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, str):
        return value.lower() in ("true", "false")
    if isinstance(value, list):
        return all(_boolean_like(item) for item in value)
    return False


def _truthy(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.lower() == "true"
    if isinstance(value, list):
        return all(_truthy(item) for item in value)
    return False


def _regex_search(pattern: str, text: str) -> bool:
    if pattern == "":
        return True
    if not text.isascii() or text.endswith("\n"):
        raise Inconclusive("regex on text the engines may treat differently")
    return _compile(pattern).search(text) is not None


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    """Only plain patterns (no nested quantifiers, look-arounds or word boundaries) are run locally."""
    if not _SAFE_REGEX.fullmatch(pattern) or re.search(r"\)[*+?{]|[*+?}][*+{]|[\^$(|][*+?{]", pattern):
        raise Inconclusive("regex left to the server")
    try:
        return re.compile(pattern)
    except re.error:
        raise Inconclusive("invalid regex") from None
