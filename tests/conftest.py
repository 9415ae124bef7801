"""Project-wide pytest configuration: the real-service fixtures, the conformance dump, and the CI rule
that nothing skips (with $GATEWAY_REQUIRE_SHARED=1, as .ci/run sets it, a skip is reported as a failure)."""

from __future__ import annotations

import pytest

from tests.services.fixtures import (
    clickhouse_cluster,
    clickhouse_http_url,
    kafka,
    kafka_cluster,
    redis_url,
    s3_server,
    session_services,
)
from tests.support.conformance import REQUIRE_SHARED_ENV, conformance_cases, require_shared

__all__ = [
    "clickhouse_cluster", "clickhouse_http_url", "conformance_cases", "kafka", "kafka_cluster", "redis_url",
    "s3_server", "session_services",
]


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped, but ${REQUIRE_SHARED_ENV} is set (nothing may skip): {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if require_shared() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    if require_shared() and report.skipped:
        _as_failure(report)
    return report
