"""deploy/: alert rules pass promtool (syntax and unit tests), and alerts and dashboard use real metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

import gateway.metrics.clickhouse
import gateway.metrics.recordings
import gateway.metrics.serve
import gateway.metrics.sink
from gateway.spool.collector import SpoolCollector
from tests.support.processes import REPO_ROOT, require_tool

ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "gateway-dashboard.json"
PROMETHEUS_BUILTINS = {"up"}
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan"}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
             "summary": ("_sum", "_count", "")}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside labels, ranges and grouping, not calls."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\$\w+", "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+\w+", " ", expr)
    names = re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {name for name in names if name.lower() not in _KEYWORDS}


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    exprs += [re.sub(r"label_values\((\w+),.*\)", r"\1", definition) for definition in variables]
    return exprs


def _exposed(family: Metric) -> set[str]:
    return {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}


def gateway_families() -> list[Metric]:
    """Families defined by gateway.metrics.serve, plus the spool gauges read at scrape time."""
    defined = {m._name for m in vars(gateway.metrics.serve).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    families = [family for family in REGISTRY.collect() if family.name in defined]
    return families + list(SpoolCollector(Path("/nonexistent"), 1).describe())


def registered_names() -> set[str]:
    names = set().union(*(_exposed(family) for family in REGISTRY.collect()))
    names |= set().union(*(_exposed(family) for family in gateway_families()))
    return names | PROMETHEUS_BUILTINS


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route!="x",le="1"}[5m] offset 1d))) '
            '/ on(instance) group_left(spool) b_total > 1e3 and c')
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_used_exists(source: str) -> None:
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used, "no expressions found"
    assert used - registered_names() == set(), f"{source} use metrics no code exports"


def test_dashboard_shows_every_gateway_metric() -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    missing = {family.name for family in gateway_families() if not _exposed(family) & used}
    assert missing == set(), "metrics missing from deploy/grafana/gateway-dashboard.json"


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = require_tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", ALERT_TESTS.name], capture_output=True, text=True,
                            timeout=60, cwd=ALERT_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
