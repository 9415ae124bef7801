"""Privacy rules without HTTP: IP truncation, denylist globs, masking with Luhn, settings parsing."""

from __future__ import annotations

import pytest

from gateway.privacy.denylist import PropertyDenylist
from gateway.privacy.ip import IpMode, minimise_ip, token_ip_modes, truncate_ip
from gateway.privacy.masking import ValueMasker, luhn_valid
from gateway.privacy.policy import PrivacyPolicy
from gateway.settings import ConfigError
from tests.support.settings import parse_serve_settings


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:abcd:12::1", "2001:db8:abcd::"),
        ("::ffff:198.51.100.9", "198.51.100.0"),
        ("not-an-ip", ""),
    ],
)
def test_truncate_ip(address: str, expected: str) -> None:
    assert truncate_ip(address) == expected


def test_ip_modes() -> None:
    assert minimise_ip("1.2.3.4", IpMode.KEEP) == "1.2.3.4"
    assert minimise_ip("1.2.3.4", IpMode.DROP) == ""
    assert token_ip_modes(("phc_a=drop", "phc_b=truncate")) == {"phc_a": IpMode.DROP, "phc_b": IpMode.TRUNCATE}
    with pytest.raises(ValueError, match="invalid mode"):
        token_ip_modes(("phc_a=hide",))


def test_denylist_exact_globs_nested_and_protected() -> None:
    denylist = PropertyDenylist(["email", "$ip", "*_token", "distinct_id"])
    event = {
        "properties": {"email": "a@b.c", "$ip": "1.1.1.1", "api_token": "x", "distinct_id": "u", "keep": 1,
                       "$set": {"email": "a@b.c", "name": "n"}},
        "$set": {"email": "a@b.c", "csrf_token": "t"},
        "$set_once": {"plan": "pro"},
    }
    assert denylist.apply(event) == 6
    assert event["properties"] == {"distinct_id": "u", "keep": 1, "$set": {"name": "n"}}
    assert event["$set"] == {} and event["$set_once"] == {"plan": "pro"}
    assert not PropertyDenylist([])


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


def test_masking_emails_cards_patterns() -> None:
    masker = ValueMasker(emails=True, cards=True, patterns=[r"\bSSN-\d{3}\b"])
    event = {
        "properties": {
            "text": "mail john.doe+x@example.co.uk or pay 4111 1111 1111 1111, not 4111 1111 1111 1112",
            "nested": [{"v": "SSN-123"}, 5, "jane@example.org"],
            "ts": "1694769302328",  # epoch millis: never a card
            "count": 4111111111111111,  # numbers are not masked
            "distinct_id": "john@example.com",  # identity is never masked
        },
        "$set": {"email": "x@y.io"},
    }
    counts = masker.apply([event])
    props = event["properties"]
    assert props["text"] == "mail [email] or pay [card], not 4111 1111 1111 1112"
    assert props["nested"] == [{"v": "[masked]"}, 5, "[email]"]
    assert props["ts"] == "1694769302328" and props["count"] == 4111111111111111
    assert props["distinct_id"] == "john@example.com"
    assert event["$set"] == {"email": "[email]"}
    assert counts == {"email": 3, "card": 1, "pattern": 1}


def test_nothing_configured_means_no_policy(tmp_path) -> None:
    assert PrivacyPolicy.from_settings(parse_serve_settings([f"--data-dir={tmp_path}"])) is None


def test_privacy_flags_and_env(tmp_path) -> None:
    settings = parse_serve_settings(
        [f"--data-dir={tmp_path}", "--ip-mode", "truncate", "--ip-mode-token", "phc_a=drop", "--mask-emails",
         "--property-denylist", "email", "--property-denylist", "*_token", "--dnt", "anonymise"],
        environ={"GATEWAY_MASK_PATTERN": r"\d{3,5}" + "\n" + "secret", "GATEWAY_INJECT_GEOIP_DISABLE": "1"},
    )
    assert settings.ip_mode == "truncate" and settings.mask_emails and not settings.mask_cards
    assert settings.property_denylist == ("email", "*_token")
    assert settings.mask_pattern == (r"\d{3,5}", "secret") and settings.inject_geoip_disable
    assert PrivacyPolicy.from_settings(settings) is not None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ip-mode", "hide"], "ip_mode"),
        (["--ip-mode-token", "phc=nope"], "privacy"),
        (["--mask-pattern", "(unclosed"], "privacy"),
        (["--dnt", "maybe"], "dnt"),
    ],
)
def test_invalid_privacy_settings(tmp_path, argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_serve_settings([f"--data-dir={tmp_path}", *argv])
