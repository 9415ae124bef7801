"""Value masking: e-mail addresses, card numbers (Luhn-checked) and operator regexes in string values.

One combined regex per policy, one pass per string; nested dicts and lists are walked. Only string
values are masked (numbers such as epoch millis are never card numbers here), and the keys capture
needs for identity and routing (`denylist.PROTECTED`) are left alone, as is replay snapshot data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.privacy.denylist import PERSON_KEYS, PROTECTED

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
# 13-19 digits, optionally grouped by spaces or dashes, starting like a card network IIN (2-6). The
# "not preceded by a digit or dash" rule is checked on the match: a leading lookbehind would stop
# `re` from scanning for the first character quickly.
CARD = r"[2-6]\d(?:[ -]?\d){11,17}(?![\d-])"
PATTERN_MASK = "[masked]"

Replace = Callable[[re.Match[str]], str]


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


def _is_card(match: re.Match[str]) -> bool:
    start = match.start()
    if start and match.string[start - 1] in "0123456789-":
        return False
    return luhn_valid(match.group().replace(" ", "").replace("-", ""))


@dataclass(frozen=True, slots=True)
class MaskRule:
    """One masking rule; `hint` is a substring every match contains, so `in` can skip the regex."""

    name: str
    regex: re.Pattern[str]
    mask: str
    hint: str | None = None
    check: Callable[[re.Match[str]], bool] | None = None


class ValueMasker:
    """Replaces sensitive substrings with a mask; `apply` returns the replacements per rule."""

    def __init__(self, emails: bool = False, cards: bool = False, patterns: Iterable[str] = ()) -> None:
        rules = []
        if emails:
            rules.append(MaskRule("email", re.compile(EMAIL), "[email]", hint="@"))
        if cards:
            rules.append(MaskRule("card", re.compile(CARD), "[card]", check=_is_card))
        rules += [MaskRule("pattern", re.compile(pattern), PATTERN_MASK) for pattern in patterns]
        self.rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def apply(self, events: Iterable[dict[str, Any]]) -> dict[str, int]:
        """Mask events' properties and `$set`/`$set_once` values in place; count replacements per rule."""
        counts = dict.fromkeys((rule.name for rule in self.rules), 0)
        rules = [(rule.hint, rule.regex.sub, _replacer(rule, counts)) for rule in self.rules]

        def mask_text(text: str) -> str:
            for hint, substitute, replace in rules:
                if hint is None or hint in text:
                    text = substitute(replace, text)
            return text

        for event in events:
            _mask_dict(event["properties"], mask_text)
            for key in PERSON_KEYS:
                values = event.get(key)
                if isinstance(values, dict):
                    _mask_dict(values, mask_text)
        return {rule: count for rule, count in counts.items() if count}


def _replacer(rule: MaskRule, counts: dict[str, int]) -> Replace:
    name, mask, check = rule.name, rule.mask, rule.check

    def replace(match: re.Match[str]) -> str:
        if check is not None and not check(match):
            return match.group()
        counts[name] += 1
        return mask

    return replace


def _mask_dict(values: dict[str, Any], mask_text: Callable[[str], str]) -> None:
    for key, item in values.items():
        if key not in PROTECTED and isinstance(item, str | dict | list):
            values[key] = _mask(item, mask_text)


def _mask(value: Any, mask_text: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        _mask_dict(value, mask_text)
        return value
    return [_mask(item, mask_text) if isinstance(item, str | dict | list) else item for item in value]
