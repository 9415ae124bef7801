"""deploy/k8s/: every manifest validates (strictly: no unknown fields) against Kubernetes' own JSON schemas,
shipped offline by PyPI's kubernetes-validate, and the pieces fit together: selectors, probes on the
gateway's health routes, a grace period above the drain, a spool volume at the data dir, an env that
parses as a gateway config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.settings import ServeSettings, add_arguments, env_name, settings_from_args

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The oldest Kubernetes still commonly run, and the newest the schema package knows.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def documents() -> list[dict[str, Any]]:
    docs = [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"no manifests in {MANIFESTS}"
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] == kind]


def only(kind: str) -> dict[str, Any]:
    (doc,) = by_kind(kind)
    return doc


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_matches_the_kubernetes_schema(version: str) -> None:
    for doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_catches_a_mistake() -> None:
    statefulset = only("StatefulSet")
    broken = {**statefulset, "spec": {**statefulset["spec"], "replica": 2}}  # typo of `replicas`
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def container() -> dict[str, Any]:
    (gateway,) = only("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return gateway


def settings() -> ServeSettings:
    env = {item["name"]: item["value"] for item in container()["env"]}
    known = {env_name(name) for name in ServeSettings.__dataclass_fields__}
    assert set(env) <= known, set(env) - known  # an unknown GATEWAY_* name would silently do nothing
    parser = argparse.ArgumentParser()
    add_arguments(parser, ServeSettings)
    return settings_from_args(parser.parse_args([]), ServeSettings, environ=env)


def test_selectors_and_references_match() -> None:
    statefulset = only("StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in by_kind("Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        assert all(port["targetPort"] == "http" for port in service["spec"]["ports"])
    assert only("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    headless = next(s for s in by_kind("Service") if s["spec"].get("clusterIP") == "None")
    assert statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
    target = only("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", statefulset["metadata"]["name"])


def test_probes_use_the_health_routes_on_the_gateway_port() -> None:
    gateway = container()
    (port,) = gateway["ports"]
    assert port["name"] == "http" and port["containerPort"] == settings().port
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/_readiness", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/_liveness", "port": "http"}


def test_grace_period_outlasts_prestop_and_drain() -> None:
    pod = only("StatefulSet")["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + settings().shutdown_timeout


def test_spool_is_on_a_persistent_volume_at_the_data_dir_and_fits_it() -> None:
    statefulset = only("StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(settings().data_dir)
    assert not statefulset["spec"]["template"]["spec"].get("volumes")  # no emptyDir for the spool
    size = claim["spec"]["resources"]["requests"]["storage"]
    assert size.endswith("Gi") and settings().spool_max_bytes < int(size.removesuffix("Gi")) * 1024**3


def test_workers_match_the_cpu_request_the_hpa_scales_on() -> None:
    assert settings().workers == int(container()["resources"]["requests"]["cpu"])
    (metric,) = only("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
