"""/metrics over real HTTP: one scrape of a multi-worker gateway counts every worker's requests."""

from __future__ import annotations

import importlib.metadata
import platform
import uuid
from pathlib import Path

import orjson
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.inprocess import InProcessGateway, free_port, settings_for
from tests.support.processes import GatewayProcess
from tests.support.waiting import wait_for

TOKEN = "phc_metrics_token"


MAIN_0 = (("kind", "main"), ("spool", "worker-0"))


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, keyed by (name, sorted labels)."""
    text = requests.get(url + "/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def capture(url: str, count: int) -> None:
    """`count` requests, each on a new connection (so SO_REUSEPORT spreads them over the workers)."""
    for _ in range(count):
        body = {"event": "e", "distinct_id": "d", "uuid": str(uuid.uuid4()), "api_key": TOKEN}
        response = requests.post(url + "/e/", data=orjson.dumps(body), headers={"Connection": "close"}, timeout=5)
        assert response.status_code == 200, response.text


def test_one_scrape_counts_requests_served_by_every_worker(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data", "--workers", "2") as gateway:
        capture(gateway.url, 40)
        # Workers fold their hot-path counters into the shared metrics about once a second.
        requests_200 = ("gateway_http_requests_total", (("route", "events"), ("status", "200")))
        wait_for(lambda: samples(gateway.url)[requests_200] == 40, timeout=5, what="every worker's counts")
        for _ in range(4):  # whichever worker answers the scrape, it reports the whole group
            scrape = samples(gateway.url)
            assert scrape[("gateway_http_requests_total", (("route", "events"), ("status", "200")))] == 40
            assert scrape[("capture_events_ingested_total", (("route", "events"),))] == 40
            assert scrape[("capture_event_batch_size_count", (("route", "events"),))] == 40
            build = (("python", platform.python_version()), ("version", importlib.metadata.version("posthog-gateway")))
            assert scrape[("gateway_build_info", build)] == 1
            spooled = {s: scrape[("gateway_spool_bytes", (("kind", "main"), ("spool", s)))]
                       for s in ("worker-0", "worker-1")}
            assert all(size > 0 for size in spooled.values()), f"one worker served everything: {spooled}"
            assert scrape[("gateway_spool_max_bytes", MAIN_0)] > 0
            assert ("gateway_in_flight_requests", ()) in scrape


def test_single_process_scrape_has_spool_gauges_and_readiness_detail(tmp_path: Path) -> None:
    with InProcessGateway(settings_for(tmp_path)) as gateway:
        capture(gateway.url, 3)
        scrape = samples(gateway.url)
        assert scrape[("capture_events_ingested_total", (("route", "events"),))] >= 3
        assert scrape[("gateway_spool_bytes", MAIN_0)] > 0
        assert scrape[("gateway_spool_segments", MAIN_0)] >= 1
        ready = requests.get(gateway.url + "/_readiness", timeout=5)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "ready": True, "detail": "spool", "flags_served": False}
        assert requests.get(gateway.url + "/_liveness", timeout=5).json() == {"status": "ok"}


def test_spool_gauges_cover_the_upstream_spool(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, upstream=f"http://127.0.0.1:{free_port()}", upstream_ack_timeout_ms=200)
    with InProcessGateway(settings) as gateway:  # the upstream is a closed port: events wait in its spool
        capture(gateway.url, 3)
        scrape = samples(gateway.url)
        assert scrape[("gateway_spool_bytes", (("kind", "upstream"), ("spool", "worker-0")))] > 0
        assert scrape[("gateway_spool_max_bytes", (("kind", "upstream"), ("spool", "worker-0")))] > 0
