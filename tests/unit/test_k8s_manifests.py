"""deploy/k8s/: every manifest validates (strictly: no unknown fields) against Kubernetes' own JSON schemas,
shipped offline by PyPI's kubernetes-validate, and the pieces fit together: selectors, probes on the
gateway's health routes, a grace period above the drain, a spool volume at the data dir, an env that
parses as a gateway config, and sink workers whose args and env the real CLI accepts."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.settings import ServeSettings, add_arguments, env_name, settings_from_args
from tests.support.image import gateway_check

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


# What the Secrets the manifests name hold, for checking the env built from them.
SECRET_SAMPLES = {("posthog-gateway-clickhouse", "url"): "http://gateway:sample@clickhouse:8123"}
WORKER_PORT_SETTINGS = {"posthog-gateway-sink": "metrics_port", "posthog-gateway-recordings": "recordings_http_port"}


def deployment(name: str) -> dict[str, Any]:
    (doc,) = [doc for doc in by_kind("Deployment") if doc["metadata"]["name"] == name]
    return doc


def worker(name: str) -> dict[str, Any]:
    (container,) = deployment(name)["spec"]["template"]["spec"]["containers"]
    return container


def worker_env(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for item in container["env"]:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = SECRET_SAMPLES[(ref["name"], ref["key"])]
        else:
            env[item["name"]] = item["value"]
    return env


@pytest.mark.parametrize("name", sorted(WORKER_PORT_SETTINGS))
def test_sink_workers_run_what_the_cli_accepts_on_their_container_port(name: str, tmp_path: Path) -> None:
    spec = deployment(name)["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    container = worker(name)
    result = gateway_check(container["args"], worker_env(container), tmp_path)
    assert result.returncode == 0, result.stderr
    effective = result.stdout
    # The Kafka the gateways write to.
    assert f'kafka_bootstrap_servers = "{settings().kafka_bootstrap_servers}"  # env' in effective
    assert 'database = "posthog"  # env' in effective
    assert re.search(r'^clickhouse(_url)? = .*"http://gateway:<redacted>@clickhouse:8123".*# env$', effective, re.M)
    (port,) = container["ports"]
    assert f"{WORKER_PORT_SETTINGS[name]} = {port['containerPort']}  # env" in effective
    # Control: a setting the command does not have is refused, as the pod's start would be.
    refused = gateway_check(container["args"], {**worker_env(container), "GATEWAY_NO_SUCH_SETTING": "1"}, tmp_path)
    assert refused.returncode == 2


@pytest.mark.parametrize("name", sorted(WORKER_PORT_SETTINGS))
def test_sink_workers_are_ready_while_storing_and_alive_while_their_loop_answers(name: str) -> None:
    container = worker(name)
    (port,) = container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": port["name"]}


def test_sink_grace_period_outlasts_its_shutdown_timeout() -> None:
    pod = deployment("posthog-gateway-sink")["spec"]["template"]["spec"]
    timeout = float(worker_env(worker("posthog-gateway-sink"))["GATEWAY_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > timeout


def test_recordings_blocks_are_on_the_claimed_volume_at_the_data_dir() -> None:
    spec = deployment("posthog-gateway-recordings")["spec"]
    (claim,) = by_kind("PersistentVolumeClaim")
    (volume,) = spec["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    container = worker("posthog-gateway-recordings")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[volume["name"]] == worker_env(container)["GATEWAY_DATA_DIR"]
    # One pod at a time may hold a ReadWriteOnce volume: no rolling update overlapping two.
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
