"""Local flag evaluation over real HTTP: the gateway polls definitions from a fake PostHog and answers
/flags and /decide itself, bucket for bucket what the `posthog` SDK's own local evaluation answers."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from posthog import Posthog

from tests.support.fake_posthog import FLAGS_V2, FakePostHog
from tests.support.inprocess import InProcessGateway, settings_for
from tests.support.waiting import wait_for

TOKEN = "phc_local_flags"
COHORT_TOKEN = "phc_with_cohorts"
KEY = "phs_secret_key"


CHECKOUT_PAYLOADS = {"control": '"c"', "test-a": '{"price":10}', "test-b": '{"price":12}'}


def _flag(flag_id: int, key: str, groups: list[dict], **filters: Any) -> dict:
    return {
        "id": flag_id, "key": key, "name": f"{key} flag", "version": 2, "active": filters.pop("active", True),
        "ensure_experience_continuity": False, "filters": {"groups": groups, **filters},
    }


DEFINITIONS = {
    "flags": [
        _flag(1, "nobody", [{"properties": [], "rollout_percentage": 0}]),
        _flag(2, "rollout-37", [{"properties": [], "rollout_percentage": 37}]),
        _flag(3, "everyone", [{"properties": [], "rollout_percentage": 100}], payloads={"true": '{"banner":"hi"}'}),
        _flag(
            4, "checkout",
            [
                {"properties": [{"key": "email", "operator": "icontains", "value": "@override.example",
                                 "type": "person"}], "rollout_percentage": 100, "variant": "test-b"},
                {"properties": [], "rollout_percentage": 80},
            ],
            multivariate={"variants": [{"key": "control", "rollout_percentage": 20},
                                       {"key": "test-a", "rollout_percentage": 30},
                                       {"key": "test-b", "rollout_percentage": 50}]},
            payloads=CHECKOUT_PAYLOADS,
        ),
        _flag(
            5, "targeted",
            [
                {"properties": [{"key": "plan", "operator": "exact", "value": ["pro", "enterprise"], "type": "person"},
                                {"key": "age", "operator": "gt", "value": "30", "type": "person"}],
                 "rollout_percentage": 50},
                {"properties": [{"key": "email", "operator": "regex", "value": r"^user-[0-9]+@corp\.example$",
                                 "type": "person"}], "rollout_percentage": None},
                {"properties": [{"key": "country", "operator": "is_set", "value": "is_set", "type": "person"},
                                {"key": "score", "operator": "lt", "value": 10.5, "type": "person"}],
                 "rollout_percentage": 90},
            ],
        ),
        _flag(
            6, "beta-opt-in",
            [{"properties": [{"key": "beta", "operator": "exact", "value": ["true"], "type": "person"},
                             {"key": "plan", "operator": "is_not", "value": "free", "type": "person"}],
              "rollout_percentage": 100}],
        ),
        _flag(
            7, "company-flag",
            [
                {"properties": [{"key": "industry", "operator": "exact", "value": "tech", "type": "group",
                                 "group_type_index": 0}], "rollout_percentage": 60},
                {"properties": [{"key": "employees", "operator": "gte", "value": 100, "type": "group",
                                 "group_type_index": 0}], "rollout_percentage": 100},
            ],
            aggregation_group_type_index=0,
        ),
        _flag(8, "retired", [{"properties": [], "rollout_percentage": 100}], active=False),
        _flag(10, "with-holdout", [{"properties": [], "rollout_percentage": 100}],
              holdout={"id": 7, "exclusion_percentage": 10}),
        _flag(
            11, "negations",
            [
                {"properties": [{"key": "email", "operator": "not_icontains", "value": "CORP", "type": "person"},
                                {"key": "score", "operator": "lte", "value": "10", "type": "person"}],
                 "rollout_percentage": None},
                {"properties": [{"key": "plan", "operator": "not_regex", "value": "^(free|team)$",
                                 "type": "person"}], "rollout_percentage": 50},
            ],
        ),
    ],
    "group_type_mapping": {"0": "company", "1": "team"},
    "cohorts": {},
}
KEYS = [flag["key"] for flag in DEFINITIONS["flags"]]
COHORT_DEFINITIONS = {
    "flags": [_flag(9, "in-cohort", [{"properties": [{"key": "id", "type": "cohort", "value": 42}],
                                      "rollout_percentage": 100}])],
    "group_type_mapping": {},
    "cohorts": {"42": {"type": "AND", "values": [{"type": "AND", "values": [
        {"key": "plan", "operator": "exact", "value": "pro", "type": "person"}]}]}},
}


def person(rng: random.Random, index: int) -> dict[str, Any]:
    """Every property any condition reads, with values on both sides of each condition."""
    domain = rng.choice(["corp.example", "override.example", "Override.EXAMPLE", "other.example"])
    return {
        "email": rng.choice([f"user-{index}@{domain}", f"someone{index}@{domain}"]),
        "plan": rng.choice(["free", "pro", "Enterprise", "team"]),
        "age": rng.choice([18, 30, 31, "45", 62.5, "unknown"]),
        "country": rng.choice(["DE", "US", None]),
        "score": rng.choice([3, 10.5, 10.49, "9", 20]),
        "beta": rng.choice([True, False, "true", "FALSE"]),
    }


def company(rng: random.Random) -> tuple[dict, dict]:
    key = f"company-{rng.randrange(500)}"
    return {"company": key}, {"company": {"industry": rng.choice(["tech", "Tech", "retail"]),
                                          "employees": rng.choice([5, 99, 100, "250"])}}


@pytest.fixture
def upstream() -> Iterator[FakePostHog]:
    with FakePostHog(flag_definitions={TOKEN: DEFINITIONS, COHORT_TOKEN: COHORT_DEFINITIONS}) as fake:
        yield fake


@pytest.fixture
def gateway(tmp_path: Path, upstream: FakePostHog) -> Iterator[InProcessGateway]:
    settings = settings_for(tmp_path, upstream=upstream.url, flags_local_token=(TOKEN, COHORT_TOKEN),
                            flags_personal_api_key=KEY, flags_poll_interval=0.2, rate_limit_ip=("off",))
    with InProcessGateway(settings) as running:
        wait_for(lambda: len(upstream.requests_to("/flags/definitions")) >= 2, timeout=10)
        yield running


def local_value(flags: dict, key: str) -> Any:
    """A FlagsV2 entry as the SDK's get_feature_flag value (an inactive flag is absent: False)."""
    entry = flags.get(key)
    if entry is None:
        return False
    return entry["variant"] or entry["enabled"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # get_feature_flag: the SDK's per-flag local API
def test_answers_equal_sdk_local_evaluation_for_10000_ids(
    gateway: InProcessGateway, upstream: FakePostHog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="posthog")  # one "no groups passed" warning per group-less call
    sdk = Posthog(TOKEN, host=upstream.url, secret_key=KEY, poll_interval=3600, send=False)
    try:
        sdk.load_feature_flags()
        rng = random.Random(20261129)
        session = requests.Session()
        local = 0
        started = time.perf_counter()
        for index in range(10_000):
            distinct_id = f"user-{index}" if index % 3 else str(rng.getrandbits(64))
            props = person(rng, index)
            groups, group_props = company(rng) if index % 2 else ({}, {})
            response = session.post(gateway.url + "/flags/?v=2", timeout=10, json={
                "token": TOKEN, "distinct_id": distinct_id, "person_properties": props,
                "groups": groups, "group_properties": group_props,
            })
            assert response.status_code == 200
            body = response.json()
            assert body["requestId"] != FLAGS_V2["requestId"], f"{distinct_id} was forwarded"
            local += 1
            for key in KEYS:
                expected = sdk.get_feature_flag(key, distinct_id, person_properties=props, groups=groups,
                                                group_properties=group_props, only_evaluate_locally=True,
                                                send_feature_flag_events=False)
                assert local_value(body["flags"], key) == expected, (key, distinct_id, props, groups, group_props)
            checkout = body["flags"]["checkout"]
            payload = CHECKOUT_PAYLOADS.get(checkout["variant"])
            assert checkout["metadata"] == {"id": 4, "version": 2, "description": "checkout flag", "payload": payload}
        elapsed = time.perf_counter() - started
    finally:
        sdk.shutdown()
    assert local == 10_000
    assert not upstream.requests_to("/flags/"), "nothing should have been forwarded"
    print(f"10000 requests x {len(KEYS)} flags compared in {elapsed:.1f} s")


def test_rollout_split_is_plausible(gateway: InProcessGateway) -> None:
    """A sanity check on top of parity: rollouts and variant splits land near their targets."""
    session = requests.Session()
    counts: dict[Any, int] = {}
    for index in range(2000):
        flags = session.post(gateway.url + "/flags?v=2", timeout=10, json={
            "token": TOKEN, "distinct_id": f"d{index}", "person_properties": {"email": f"d{index}@example.com"},
            "flag_keys": ["nobody", "rollout-37", "everyone", "checkout", "retired"]}).json()["flags"]
        for key in ("rollout-37", "checkout"):
            value = local_value(flags, key)
            counts[key, value] = counts.get((key, value), 0) + 1
        assert flags["nobody"]["reason"]["code"] == "out_of_rollout_bound"
        assert flags["everyone"]["enabled"] and flags["everyone"]["metadata"]["payload"] == '{"banner":"hi"}'
        assert "retired" not in flags
    assert 0.33 < counts["rollout-37", True] / 2000 < 0.41
    rolled_out = 2000 - counts["checkout", False]  # the second condition: 80% rollout, then 20/30/50 variants
    assert 0.76 < rolled_out / 2000 < 0.84
    assert 0.16 < counts["checkout", "control"] / rolled_out < 0.24
    assert 0.45 < counts["checkout", "test-b"] / rolled_out < 0.55


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"token": COHORT_TOKEN, "distinct_id": "d1", "person_properties": {"plan": "pro"}}, "cohort flag"),
        ({"token": TOKEN, "distinct_id": "d1", "person_properties": {"plan": "pro"}}, "age not sent"),
        ({"token": "phc_not_polled", "distinct_id": "d1"}, "no definitions for token"),
        ({"token": TOKEN}, "no distinct_id: the upstream's 400"),
    ],
)
def test_forwards_whole_request_when_server_data_is_needed(
    gateway: InProcessGateway, upstream: FakePostHog, body: dict, reason: str
) -> None:
    response = requests.post(gateway.url + "/flags/?v=2", json=body, timeout=10)
    assert response.json() == FLAGS_V2, reason
    (seen,) = upstream.requests_to("/flags/")
    assert seen.json() == body


def test_config_requests_are_forwarded(gateway: InProcessGateway, upstream: FakePostHog) -> None:
    response = requests.post(gateway.url + "/flags/?v=2&config=true", json={"token": TOKEN, "distinct_id": "d"},
                             timeout=10)
    assert response.json() == FLAGS_V2
    assert len(upstream.requests_to("/flags/")) == 1


def test_response_format_follows_path_and_version(gateway: InProcessGateway, upstream: FakePostHog) -> None:
    body = {"token": TOKEN, "distinct_id": "format-user", "person_properties": {
        "email": "a@override.example", "plan": "pro", "age": 40, "country": "DE", "score": 1, "beta": True}}

    def post(path: str) -> dict:
        response = requests.post(gateway.url + path, json=body, headers={"Origin": "https://app.example"}, timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        return response.json()

    enabled = {key: local_value(post("/flags?v=2")["flags"], key) for key in KEYS}
    enabled = {key: value for key, value in enabled.items() if value}
    assert enabled["checkout"] == "test-b"  # the condition's variant override
    legacy = post("/flags")
    assert legacy["featureFlags"]["checkout"] == "test-b" and legacy["featureFlags"]["nobody"] is False
    assert legacy["featureFlagPayloads"]["checkout"] == '{"price":12}'
    assert post("/decide/?v=3")["featureFlags"] == legacy["featureFlags"]
    assert post("/decide/?v=4")["flags"].keys() == post("/flags/?v=2")["flags"].keys()
    assert post("/decide/?v=2")["featureFlags"] == enabled
    assert sorted(post("/decide/")["featureFlags"]) == sorted(enabled)
    assert not upstream.requests_to("/flags/") and not upstream.requests_to("/decide/")


def test_polls_with_bearer_key_and_etag(gateway: InProcessGateway, upstream: FakePostHog) -> None:
    wait_for(lambda: len(upstream.requests_to("/flags/definitions", status=304)) >= 2, timeout=10)
    polls = upstream.requests_to("/flags/definitions")
    assert {poll.headers["Authorization"] for poll in polls} == {f"Bearer {KEY}"}
    assert {poll.raw_path.split("&")[0] for poll in polls} == {
        f"/flags/definitions?token={TOKEN}", f"/flags/definitions?token={COHORT_TOKEN}"}
    assert all("If-None-Match" in poll.headers for poll in polls[2:])
    # New definitions are picked up by the next poll.
    upstream.flag_definitions[TOKEN] = {**DEFINITIONS, "flags": [
        _flag(1, "nobody", [{"properties": [], "rollout_percentage": 100}])]}

    def nobody_is_everybody() -> bool:
        flags = requests.post(gateway.url + "/flags?v=2", json={"token": TOKEN, "distinct_id": "x"},
                              timeout=10).json()["flags"]
        return flags.keys() == {"nobody"} and flags["nobody"]["enabled"]

    wait_for(nobody_is_everybody, timeout=10)
    metrics = requests.get(gateway.url + "/metrics", timeout=10).text
    assert 'gateway_flags_answered_total{source="local"}' in metrics
    assert "gateway_flags_local_evaluation_duration_seconds_count" in metrics


def test_prefixed_and_aliased_paths_are_answered_locally(tmp_path: Path, upstream: FakePostHog) -> None:
    settings = settings_for(tmp_path, upstream=upstream.url, flags_local_token=(TOKEN,), flags_personal_api_key=KEY,
                            flags_poll_interval=0.2, prefix=("/ingest",), path_alias=("/fz=/flags",))
    body = {"token": TOKEN, "distinct_id": "d", "flag_keys": ["everyone"]}
    with InProcessGateway(settings) as gateway:
        wait_for(lambda: len(upstream.requests_to("/flags/definitions")) >= 2, timeout=10)  # the first is parsed
        for path in ("/ingest/flags/?v=2", "/fz/?v=2", "/decide?v=4"):
            flags = requests.post(gateway.url + path, json=body, timeout=10).json()["flags"]
            assert flags["everyone"]["enabled"], path
        assert requests.get(gateway.url + "/fz/definitions?token=" + TOKEN, timeout=10).json() == DEFINITIONS
    assert not upstream.requests_to("/flags/") and not upstream.requests_to("/decide")


def test_answers_locally_while_the_upstream_is_down(gateway: InProcessGateway, upstream: FakePostHog) -> None:
    """A failed poll keeps the last good definitions, so flags keep working through an upstream outage."""
    upstream.status_override = 503
    wait_for(lambda: upstream.requests_to("/flags/definitions", status=503), timeout=10)
    upstream.stop()
    response = requests.post(gateway.url + "/flags?v=2", json={"token": TOKEN, "distinct_id": "d",
                                                               "flag_keys": ["everyone"]}, timeout=10)
    assert response.status_code == 200 and response.json()["flags"]["everyone"]["enabled"]
