"""The container image as the deploy files run it: the Dockerfile's final stage and its env, and a
command checked the way a container of the image would read it (`gateway ARGV --check`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import dockerfile

from tests.support.processes import REPO_ROOT, gateway_env

DOCKERFILE = REPO_ROOT / "Dockerfile"


def instructions() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def final_stage() -> list[dockerfile.Command]:
    commands = instructions()
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return commands[last_from:]


def image_env() -> dict[str, str]:
    """ENV of the final stage (`ENV A=1 B=2` parses to a flat key, value, key, value tuple)."""
    env: dict[str, str] = {}
    for command in final_stage():
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    return env


def gateway_check(argv: list[str], environment: Mapping[str, object], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`gateway ARGV --check` as a container of the image runs it: the image's env, then its own."""
    env = {**gateway_env(), **image_env(), **{name: str(value) for name, value in environment.items()}}
    return subprocess.run([sys.executable, "-m", "gateway", *argv, "--check"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)
