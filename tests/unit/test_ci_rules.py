"""The CI rule (tests/conftest.py): without ../shared the conformance tests skip with one line, and with
$GATEWAY_REQUIRE_SHARED=1 (.ci/run) any skip, or a run without tests, fails the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import conformance

REPO = Path(__file__).resolve().parents[2]


def run_pytest(tmp_path: Path, source: str, require: bool) -> subprocess.CompletedProcess[str]:
    """pytest on one throw-away test file, with this repository's conftest loaded as a plugin."""
    (tmp_path / "test_throwaway.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != conformance.REQUIRE_SHARED_ENV}
    if require:
        env[conformance.REQUIRE_SHARED_ENV] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


SKIPPING = "import pytest\n\ndef test_needs_data():\n    pytest.skip('no data here')\n"
SKIPPING_MODULE = "import pytest\n\npytest.skip('no data here', allow_module_level=True)\n"


def test_a_skip_is_a_skip_outside_ci(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, SKIPPING, require=False)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout


@pytest.mark.parametrize("source", [SKIPPING, SKIPPING_MODULE], ids=["in-test", "module-level"])
def test_a_skip_fails_under_require_shared(tmp_path: Path, source: str) -> None:
    result = run_pytest(tmp_path, source, require=True)
    assert result.returncode in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERRUPTED), result.stdout
    assert "skipped, but $GATEWAY_REQUIRE_SHARED is set (nothing may skip): no data here\n" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]


def test_no_tests_at_all_is_not_green(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "def helper():\n    pass\n", require=True)
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED


def test_missing_dump_skips_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(conformance.DUMP_ENV, raising=False)
    monkeypatch.delenv(conformance.REQUIRE_SHARED_ENV, raising=False)
    monkeypatch.setattr(conformance, "DEFAULT_DUMP", tmp_path / "shared" / "requests_dump.jsonl")
    with pytest.raises(pytest.skip.Exception) as skipped:
        conformance.dump_path()
    assert str(skipped.value) == (
        f"PostHog's conformance dump not found: set $GATEWAY_CONFORMANCE_DUMP or put it at {tmp_path}/shared/"
        "requests_dump.jsonl"
    )
    monkeypatch.setenv(conformance.REQUIRE_SHARED_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=r"required: \$GATEWAY_REQUIRE_SHARED is set"):
        conformance.dump_path()


def test_dump_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    dump.write_text("")
    monkeypatch.setenv(conformance.DUMP_ENV, str(dump))
    assert conformance.dump_path() == dump
    monkeypatch.setenv(conformance.DUMP_ENV, str(tmp_path / "missing.jsonl"))
    with pytest.raises(pytest.fail.Exception, match="which is not a file"):
        conformance.dump_path()
