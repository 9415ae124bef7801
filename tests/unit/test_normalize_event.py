"""Events keep capture's fields in capture's order: as they are when already in that shape, else copied."""

from __future__ import annotations

import re

import pytest

from gateway.capture.errors import RequestParsingError
from gateway.capture.parse import normalize_event

UUID = "0190a3b2-7c1d-7e4f-8a9b-0c1d2e3f4a5b"


def test_event_in_capture_shape_is_kept_as_it_is() -> None:
    event = {"uuid": UUID, "event": "$pageview", "properties": {"a": 1}, "timestamp": "2026-12-01T00:00:00Z"}
    assert normalize_event(event, engage=False) is event


def test_server_sdk_event_is_copied_in_capture_order_without_the_fields_capture_drops() -> None:
    event = {"event": "signup", "distinct_id": "u1", "properties": {"plan": "pro"}, "timestamp": "t",
             "uuid": UUID.upper(), "type": "capture", "library": "posthog-node", "$token": "phc_x", "offset": 5,
             "$set": {"a": 1}}
    normalized = normalize_event(event, engage=False)
    assert list(normalized.items()) == [
        ("token", "phc_x"), ("distinct_id", "u1"), ("uuid", UUID), ("event", "signup"),
        ("properties", {"plan": "pro"}), ("timestamp", "t"), ("offset", 5), ("$set", {"a": 1}),
    ]


def test_aliases_missing_fields_and_engage_defaults() -> None:
    normalized = normalize_event({"api_key": "phc_k", "$distinct_id": 7, "uuid": ""}, engage=True)
    assert normalized == {"token": "phc_k", "distinct_id": 7, "uuid": None, "event": "$identify", "properties": {}}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "event must be an object"),
        ({"event": "e", "token": 5}, "token must be a string"),
        ({"event": "e", "uuid": 5}, "uuid must be a string"),
        ({"event": "e", "uuid": "nope"}, "invalid uuid 'nope'"),
        ({"event": 5}, "event name must be a string"),
        ({"event": "e", "properties": []}, "properties must be an object"),
        ({"event": "e", "timestamp": 5}, "timestamp must be a string"),
        ({"event": "e", "offset": True}, "offset must be an integer"),
        ({"event": "e", "$set_once": "x"}, "$set_once must be an object"),
        # in capture's key order, but a field of the wrong type: the copy's checks apply
        ({"uuid": UUID, "event": "e", "properties": {}, "offset": 1.5}, "offset must be an integer"),
    ],
)
def test_wrong_types_are_refused(event: object, message: str) -> None:
    with pytest.raises(RequestParsingError, match=re.escape(f"failed to parse request: {message}")):
        normalize_event(event, engage=False)
