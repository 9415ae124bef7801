"""PostHog's compatibility dump replayed over HTTP into the spool: 16/16 accepted, 88/88 records equal, in order."""

from __future__ import annotations

import pytest

from gateway.core.record import Record
from gateway.spool import iter_records
from tests.support.conformance import assert_record_matches, expected_records, replay
from tests.support.inprocess import InProcessGateway, settings_for


@pytest.fixture(scope="module")
def replayed(
    conformance_cases: list[dict], tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[dict], list[Record]]:
    cases = conformance_cases
    clock: dict = {"now": None}
    settings = settings_for(tmp_path_factory.mktemp("conformance"), trusted_proxy_hops=1)
    with InProcessGateway(settings, clock=lambda: clock["now"]) as gateway:
        replay(cases, gateway.url, clock)
    return cases, list(iter_records(gateway.sink.spool.directory))


def test_every_request_accepted_and_every_event_recorded(replayed: tuple[list[dict], list[Record]]) -> None:
    cases, records = replayed
    assert len(cases) == 16
    assert len(records) == len(expected_records(cases)) == 88


def test_records_match_django_output_in_order(replayed: tuple[list[dict], list[Record]]) -> None:
    cases, records = replayed
    for record, (case, expected) in zip(records, expected_records(cases), strict=True):
        assert_record_matches(record, case, expected)
