"""Local flag evaluation decisions: what is answered here, what goes to the upstream, in which format."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest
from posthog.feature_flags import _hash

from gateway.flags.answer import answer, request_json, response_format
from gateway.flags.definitions import Definitions
from gateway.flags.evaluate import Inconclusive, bucket, evaluate_flag

TOKEN = "phc_unit"


def flag(key: str, properties: list[dict], rollout: float | None = 100, **extra: Any) -> dict:
    filters = extra.pop("filters", {})
    return {"id": 1, "key": key, "active": True, "filters": {
        "groups": [{"properties": properties, "rollout_percentage": rollout}], **filters}, **extra}


def prop(key: str, operator: str, value: Any = None, **extra: Any) -> dict:
    return {"key": key, "operator": operator, "value": value, "type": "person", **extra}


def parse(*flags: dict, group_types: dict | None = None) -> Definitions:
    return Definitions.parse(orjson.dumps({"flags": list(flags), "group_type_mapping": group_types or {}}))


@pytest.mark.parametrize("distinct_id", ["", "user-1", "ünïcode", "12345678901234567890", "a" * 200])
def test_bucket_is_posthogs_hash(distinct_id: str) -> None:
    assert bucket("flag-key", distinct_id) == _hash("flag-key", distinct_id)
    assert bucket("flag-key", distinct_id, salt="variant") == _hash("flag-key", distinct_id, salt="variant")


@pytest.mark.parametrize(
    ("definition", "why"),
    [
        (flag("f", [{"key": "id", "type": "cohort", "value": 3}]), "cohort"),
        (flag("f", [{"key": "other", "type": "flag", "value": True, "operator": "flag_evaluates_to"}]), "dependency"),
        (flag("f", [], ensure_experience_continuity=True), "experience continuity"),
        (flag("f", [prop("signup", "is_date_before", "2024-01-01")]), "date operator"),
        (flag("f", [prop("app", "semver_gt", "1.2.3")]), "semver operator"),
        (flag("f", [], bucketing_identifier="device_id"), "device-id bucketing"),
        (flag("f", [], filters={"aggregation_group_type_index": 5}), "unknown group type"),
        (flag("f", [], filters={"feature_enrollment": True}), "early access enrollment"),
        (flag("f", [], evaluation_runtime="client"), "runtime-scoped"),
        (flag("f", [], evaluation_tags=["web"]), "environment-scoped"),
        (flag("f", [], filters={"holdout": {"id": 1, "exclusion_percentage": "ten"}}), "malformed holdout"),
        (flag("f", [], filters={"payloads": ["not", "a", "map"]}), "malformed payloads"),
        ({"key": "f", "active": True, "filters": {"groups": ["not a condition"]}}, "malformed condition"),
    ],
)
def test_flags_needing_the_server_are_remote(definition: dict, why: str) -> None:
    assert parse(definition).remote == {"f"}, why


def test_a_remote_flag_forwards_the_whole_request_unless_not_asked_for() -> None:
    definitions = {TOKEN: parse(flag("local", []), flag("cohort", [{"key": "id", "type": "cohort", "value": 3}]))}
    request = {"token": TOKEN, "distinct_id": "d"}
    assert answer(definitions, "/flags", {"v": "2"}, request) is None
    only_local = answer(definitions, "/flags", {"v": "2"}, {**request, "flag_keys": ["local", {"odd": 1}]})
    assert only_local is not None and list(only_local["flags"]) == ["local"]


@pytest.mark.parametrize(
    ("definition", "properties"),
    [
        (flag("f", [prop("plan", "exact", "pro")]), {}),  # not sent: stored properties might match
        (flag("f", [prop("plan", "is_not_set", "is_not_set")]), {}),
        (flag("f", [prop("email", "regex", r"(a+)+$")]), {"email": "aaa"}),  # nested quantifiers
        (flag("f", [prop("email", "regex", r"\bword")]), {"email": "a word"}),  # word boundaries differ
        (flag("f", [prop("email", "regex", "^x$")]), {"email": "x\n"}),
        (flag("f", [prop("name", "icontains", "É")]), {"name": "éclair"}),  # case folding beyond ASCII
        (flag("f", [prop("tags", "exact", "a")]), {"tags": ["a", "b"]}),  # list values
        (flag("f", [prop("age", "gt", "old")]), {"age": 3}),  # a filter that is no number
    ],
)
def test_inconclusive_matches_go_upstream(definition: dict, properties: dict) -> None:
    with pytest.raises(Inconclusive):
        evaluate_flag(definition, "d", properties, {}, {}, {})
    request = {"token": TOKEN, "distinct_id": "d", "person_properties": properties}
    assert answer({TOKEN: parse(definition)}, "/flags", {"v": "2"}, request) is None


def test_an_inconclusive_condition_is_not_skipped() -> None:
    """The SDK would try the next condition; the server may match the first one on stored properties."""
    definition = flag("f", [prop("plan", "exact", "pro")])
    definition["filters"]["groups"].append({"properties": [], "rollout_percentage": 100})
    with pytest.raises(Inconclusive):
        evaluate_flag(definition, "d", {}, {}, {}, {})


def test_group_flag_without_the_group_is_false_and_buckets_by_group_key() -> None:
    definition = flag("g", [], rollout=50, filters={"aggregation_group_type_index": 0})
    assert evaluate_flag(definition, "d", {}, {}, {}, {"0": "company"}).reason == "no_group_type"
    for key in ("acme", "globex", "initech", "umbrella"):
        result = evaluate_flag(definition, "any-person", {}, {"company": key}, {}, {"0": "company"})
        assert result.value is (bucket("g", key) <= 0.5)


@pytest.mark.parametrize(
    ("path", "version", "expected"),
    [
        ("/flags", None, "FlagsV1"), ("/flags", "1", "FlagsV1"), ("/flags", "2", "FlagsV2"), ("/flags", "9", "FlagsV2"),
        ("/decide", None, "DecideV1"), ("/decide", "2", "DecideV2"), ("/decide", "3", "FlagsV1"),
        ("/decide", "4", "FlagsV2"), ("/decide", "x", None), ("/flags", "-1", None),
    ],
)
def test_response_format(path: str, version: str | None, expected: str | None) -> None:
    assert response_format(path, {} if version is None else {"v": version}) == expected


def test_request_bodies_plain_or_gzipped_else_forwarded() -> None:
    body = b'{"token":"phc","distinct_id":"d"}'
    assert request_json(body, "", {}) == {"token": "phc", "distinct_id": "d"}
    assert request_json(gzip.compress(body), "", {}) == {"token": "phc", "distinct_id": "d"}
    assert request_json(b"data=eyJ0b2tlbiI6InBoYyJ9", "", {}) is None  # form/base64: the upstream's job
    assert request_json(b"[1]", "", {}) is None
    assert request_json(gzip.compress(b'{"a":"' + b"x" * 2_000_000 + b'"}'), "", {}) is None  # inflates too far
    assert request_json(gzip.compress(body)[:-4], "", {}) is None  # truncated


@pytest.mark.parametrize(
    ("query", "extra"),
    [({"v": "2", "config": "true"}, {}), ({"v": "2"}, {"disable_flags": True}),
     ({"v": "2", "only_evaluate_survey_feature_flags": "true"}, {}), ({"v": "2"}, {"evaluation_contexts": ["web"]}),
     ({"v": "2"}, {"distinct_id": ""}), ({"v": "2"}, {"distinct_id": 1.5}),
     ({"v": "2"}, {"person_properties": "not an object"})],
)
def test_requests_only_the_server_can_answer(query: dict, extra: dict) -> None:
    definitions = {TOKEN: parse(flag("f", []))}
    assert answer(definitions, "/flags", query, {"token": TOKEN, "distinct_id": "d", **extra}) is None
