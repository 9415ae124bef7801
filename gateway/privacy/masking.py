"""Value masking: e-mail addresses, card numbers (Luhn-checked) and operator regexes in string values.

One combined regex per policy, one pass per string; nested dicts and lists are walked. Only string
values are masked (numbers such as epoch millis are never card numbers here), and the keys capture
needs for identity and routing (`denylist.PROTECTED`) are left alone, as is replay snapshot data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from gateway.privacy.denylist import PERSON_KEYS, PROTECTED

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
# 13-19 digits, optionally grouped by spaces or dashes, starting like a card network IIN (2-6).
CARD = r"(?<![\d-])[2-6](?:[ -]?\d){12,18}(?![\d-])"
MASKS = {"email": "[email]", "card": "[card]"}
PATTERN_MASK = "[masked]"

Replace = Callable[[re.Match[str]], str]
Substitute = Callable[[Replace, str], str]


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


class ValueMasker:
    """Replaces sensitive substrings with a mask; `apply` returns the replacements per rule."""

    def __init__(self, emails: bool = False, cards: bool = False, patterns: Iterable[str] = ()) -> None:
        parts = []
        if emails:
            parts.append(f"(?P<email>{EMAIL})")
        if cards:
            parts.append(f"(?P<card>{CARD})")
        for index, pattern in enumerate(patterns):
            re.compile(pattern)  # a bad pattern fails here, on its own
            parts.append(f"(?P<pattern{index}>{pattern})")
        self._regex = re.compile("|".join(parts)) if parts else None

    def __bool__(self) -> bool:
        return self._regex is not None

    def apply(self, event: dict[str, Any]) -> dict[str, int]:
        """Mask an event's properties and its `$set`/`$set_once` values in place; count per rule."""
        counts: dict[str, int] = {}
        if self._regex is None:
            return counts

        def replace(match: re.Match[str]) -> str:
            text = match.group()
            rule = match.lastgroup or ""
            if rule == "card" and not luhn_valid(text.replace(" ", "").replace("-", "")):
                return text
            rule = rule if rule in MASKS else "pattern"
            counts[rule] = counts.get(rule, 0) + 1
            return MASKS.get(rule, PATTERN_MASK)

        substitute = self._regex.sub
        _mask_dict(event["properties"], substitute, replace)
        for key in PERSON_KEYS:
            values = event.get(key)
            if isinstance(values, dict):
                _mask_dict(values, substitute, replace)
        return counts


def _mask_dict(values: dict[str, Any], substitute: Substitute, replace: Replace) -> None:
    for key, item in values.items():
        if key not in PROTECTED and isinstance(item, str | dict | list):
            values[key] = _mask(item, substitute, replace)


def _mask(value: Any, substitute: Substitute, replace: Replace) -> Any:
    if isinstance(value, str):
        return substitute(replace, value)
    if isinstance(value, dict):
        _mask_dict(value, substitute, replace)
        return value
    if isinstance(value, list):
        return [_mask(item, substitute, replace) if isinstance(item, str | dict | list) else item
                for item in value]
    return value
