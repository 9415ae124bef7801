"""Every metric is defined in gateway/metrics/: no other module of gateway/ creates a prometheus-client
metric or metric family."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
HOME = GATEWAY / "metrics"
PACKAGE = "prometheus_client"
METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}


def is_metric_type(name: str) -> bool:
    return name in METRIC_TYPES or name.endswith("MetricFamily")


def metric_definitions(source: str) -> Iterator[int]:
    """Lines that call a prometheus-client metric type, by any imported name (not `collections.Counter`)."""
    tree = ast.parse(source)
    names: set[str] = set()  # local names of prometheus-client metric types
    modules: set[str] = set()  # local names of prometheus-client modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
            names |= {alias.asname or alias.name for alias in node.names if is_metric_type(alias.name)}
        elif isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name for alias in node.names if alias.name.startswith(PACKAGE)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Name) and node.func.id in names)
            or (
                isinstance(node.func, ast.Attribute)
                and is_metric_type(node.func.attr)
                and ast.unparse(node.func.value) in modules
            )
        ):
            yield node.lineno


def test_metrics_are_defined_only_in_gateway_metrics() -> None:
    elsewhere = [
        f"{path.relative_to(GATEWAY.parent)}:{line}"
        for path in sorted(GATEWAY.rglob("*.py"))
        if HOME not in path.parents
        for line in metric_definitions(path.read_text())
    ]
    assert elsewhere == [], "define these metrics in gateway/metrics/"


def test_the_check_finds_definitions_by_any_name() -> None:
    source = (
        "import collections\nimport prometheus_client as pc\nfrom collections import Counter\n"
        "from prometheus_client import Gauge as G\nfrom prometheus_client.core import GaugeMetricFamily\n"
        "a = Counter()\nb = collections.Counter()\n"  # not metrics
        "c = G('x', 'y')\nd = pc.Counter('x', 'y')\ne = GaugeMetricFamily('x', 'y')\n"
    )
    assert sorted(metric_definitions(source)) == [8, 9, 10]
