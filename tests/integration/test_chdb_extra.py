"""chdb is the `posthog-gateway[chdb]` extra: without it `gateway serve` still serves, and `gateway sink` /
`gateway gdpr` on a chdb:// target stop with one line and exit 2 instead of a traceback.

"Without it" is a `sitecustomize` on PYTHONPATH that makes `import chdb` fail, as in a venv without it."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
import requests

from tests.support.processes import GatewayProcess, run_gateway


@pytest.fixture
def without_chdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateway subprocesses (gateway_env, GatewayProcess) started by the test cannot import chdb."""
    blocker = tmp_path / "no-chdb"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text('import sys\nsys.modules["chdb"] = None  # `import chdb` fails\n')
    monkeypatch.setenv("PYTHONPATH", str(blocker))


@pytest.mark.parametrize(
    "command",
    [["sink", "--init-schema"], ["gdpr", "export", "--distinct-id", "alice", "--out", "-"]],
    ids=["sink", "gdpr-export"],
)
@pytest.mark.usefixtures("without_chdb")
def test_chdb_target_without_chdb_is_one_line_and_exit_2(tmp_path: Path, command: list[str]) -> None:
    target = f"chdb://{tmp_path / 'chdb'}"
    result = run_gateway(*command, "--clickhouse", target)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"gateway: error: ClickHouse target ({target}): chdb is not installed: pip install "
        "'posthog-gateway[chdb]' (from a clone: pip install '.[chdb]')"
    ]
    assert not (tmp_path / "chdb").exists()


@pytest.mark.usefixtures("without_chdb")
def test_serve_needs_no_chdb(tmp_path: Path) -> None:
    """No module on the serving path imports chdb: with `import chdb` failing the gateway still answers 200."""
    with GatewayProcess(tmp_path / "data") as gateway:
        event = {"event": "e", "uuid": str(uuid.uuid4()), "distinct_id": "d", "properties": {"token": "phc_x"}}
        response = requests.post(gateway.url + "/e/", data=orjson.dumps(event), timeout=5)
    assert response.status_code == 200
