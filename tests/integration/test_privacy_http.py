"""Privacy rules on real requests over HTTP, checked in what the spool (and Kafka) actually received."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests
from prometheus_client import REGISTRY

from gateway.spool import iter_records
from tests.services.kafka_broker import KafkaBroker
from tests.support.inprocess import InProcessGateway, settings_for
from tests.support.kafka import consume_all

TOKEN = "phc_privacy"
DROP_TOKEN = "phc_privacy_drop"
CLIENT = "203.0.113.77"


def privacy_settings(data_dir: Path, **overrides: object):
    return settings_for(
        data_dir,
        fsync="never",
        trusted_proxy_hops=1,
        ip_mode="truncate",
        ip_mode_token=(f"{DROP_TOKEN}=drop",),
        property_denylist=("email", "*_token"),
        mask_emails=True,
        mask_cards=True,
        mask_pattern=(r"\bSSN-\d{3}-\d{2}-\d{4}\b",),
        dnt="drop",
        inject_geoip_disable=True,
        **overrides,
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    with InProcessGateway(privacy_settings(tmp_path_factory.mktemp("privacy"))) as running:
        yield running


def stored(gateway: InProcessGateway) -> dict[str, dict]:
    """uuid → {"value": record value, "data": the event} of everything in the spool so far."""
    out = {}
    for record in iter_records(gateway.sink.spool.directory):
        value = orjson.loads(record.value)
        out[value["uuid"]] = {"record": record, "value": value, "data": orjson.loads(value["data"])}
    return out


def event(token: str = TOKEN, **properties: object) -> dict:
    return {"event": "signup", "uuid": str(uuid.uuid4()), "distinct_id": "user-1",
            "properties": {"token": token, **properties}}


def send(gateway: InProcessGateway, *events: dict, **headers: str) -> requests.Response:
    response = requests.post(gateway.url + "/batch", json={"api_key": events[0]["properties"]["token"],
                             "batch": list(events)}, headers={"X-Forwarded-For": CLIENT, **headers}, timeout=10)
    assert response.status_code == 200, response.text
    return response


def actions(rule: str) -> float:
    return REGISTRY.get_sample_value("gateway_privacy_actions_total", {"rule": rule}) or 0.0


def test_denylist_masking_ip_truncation_and_geoip(gateway: InProcessGateway) -> None:
    before = {rule: actions(rule) for rule in ("denylist", "mask_email", "mask_card", "mask_pattern")}
    sent = event(
        email="jane@example.com",
        csrf_token="secret",
        note="reach me at jane@example.com, card 4111-1111-1111-1111, id SSN-123-45-6789",
        **{"$ip": "198.51.100.23", "$set": {"email": "jane@example.com", "plan": "pro"}},
    )
    sent["$set_once"] = {"api_token": "t", "first_seen_by": "bob@example.org"}
    send(gateway, sent)
    got = stored(gateway)[sent["uuid"]]
    properties = got["data"]["properties"]
    assert got["value"]["ip"] == "203.0.113.0"
    assert properties["$ip"] == "198.51.100.0"
    assert "email" not in properties and "csrf_token" not in properties
    assert properties["note"] == "reach me at [email], card [card], id [masked]"
    assert properties["$set"] == {"plan": "pro"}
    assert got["data"]["$set_once"] == {"first_seen_by": "[email]"}
    assert properties["$geoip_disable"] is True
    assert b"jane@example.com" not in got["record"].value
    assert actions("denylist") - before["denylist"] == 4
    assert actions("mask_email") - before["mask_email"] == 2
    assert actions("mask_card") - before["mask_card"] == 1
    assert actions("mask_pattern") - before["mask_pattern"] == 1


def test_ip_dropped_per_project_and_in_cookieless_key(gateway: InProcessGateway) -> None:
    sent = event(DROP_TOKEN, **{"$ip": "198.51.100.23", "$cookieless_mode": True})
    send(gateway, sent)
    got = stored(gateway)[sent["uuid"]]
    assert got["value"]["ip"] == "" and "$ip" not in got["data"]["properties"]
    assert got["record"].key == f"{DROP_TOKEN}:".encode()


def test_dnt_and_gpc_drop_answers_200_and_stores_nothing(gateway: InProcessGateway) -> None:
    before = actions("dnt_drop")
    dnt, gpc = event(), event()
    send(gateway, dnt, DNT="1")
    send(gateway, gpc, **{"Sec-GPC": "1"})
    got = stored(gateway)
    assert dnt["uuid"] not in got and gpc["uuid"] not in got
    assert actions("dnt_drop") - before == 2


def test_dnt_anonymise(tmp_path: Path) -> None:
    with InProcessGateway(settings_for(tmp_path, fsync="never", dnt="anonymise")) as gateway:
        sent = event(**{"$ip": "198.51.100.23", "$set": {"name": "Jane"}})
        sent["$set_once"] = {"first": "x"}
        plain = event(**{"$set": {"name": "Joe"}})
        send(gateway, sent, DNT="1")
        send(gateway, plain)
        got = stored(gateway)
    anonymous = got[sent["uuid"]]
    properties = anonymous["data"]["properties"]
    assert anonymous["value"]["ip"] == ""
    assert "$ip" not in properties and "$set" not in properties and "$set_once" not in anonymous["data"]
    assert properties["$process_person_profile"] is False and properties["$geoip_disable"] is True
    kept = got[plain["uuid"]]
    assert kept["value"]["ip"] == "127.0.0.1" and kept["data"]["properties"]["$set"] == {"name": "Joe"}
    assert "$geoip_disable" not in kept["data"]["properties"]


def test_replay_snapshots_are_not_masked(gateway: InProcessGateway) -> None:
    snapshot = {"type": 3, "data": {"source": 5, "text": "jane@example.com 4111111111111111"}}
    body = [{"event": "$snapshot", "uuid": str(uuid.uuid4()), "distinct_id": "user-1",
             "properties": {"token": TOKEN, "$session_id": "s1", "$snapshot_data": [snapshot]}}]
    response = requests.post(gateway.url + "/s/", json=body, headers={"X-Forwarded-For": CLIENT}, timeout=10)
    assert response.status_code == 200
    got = stored(gateway)[body[0]["uuid"]]
    assert got["value"]["ip"] == "203.0.113.0"
    assert got["data"]["properties"]["$snapshot_items"] == [snapshot]


def test_privacy_rules_with_the_kafka_sink(kafka: KafkaBroker, tmp_path: Path) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}-main"
    settings = privacy_settings(tmp_path, kafka_bootstrap_servers=kafka.bootstrap_servers, topic_main=topic,
                                kafka_ack_timeout_ms=3000)
    sent = event(email="jane@example.com", note="jane@example.com", **{"$ip": "198.51.100.23"})
    with InProcessGateway(settings) as gateway:
        send(gateway, sent)
    [(_, record)] = consume_all(kafka.bootstrap_servers, [topic], at_least=1)
    value = orjson.loads(record.value)
    properties = orjson.loads(value["data"])["properties"]
    assert value["uuid"] == sent["uuid"] and value["ip"] == "203.0.113.0"
    assert properties["note"] == "[email]" and "email" not in properties and properties["$ip"] == "198.51.100.0"
