"""`gateway recordings`: README documents every flag, `--check` shows effective settings, bad settings exit 2."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli_docs import README, documented_flags, long_flags, readme_section, sub_parser
from tests.support.inprocess import free_port
from tests.support.processes import run_gateway


def test_readme_documents_every_recordings_flag() -> None:
    section = readme_section(README.read_text(), "## Session recordings (`gateway recordings`)")
    documented = documented_flags(section)
    documented |= {"--older-than-days", "--out"}  # described in the text above the table
    for command in ("sink", "export", "expire"):
        flags = long_flags(sub_parser("recordings", command))
        assert flags - documented == set(), f"gateway recordings {command} flags missing from README.md"


def test_check_shows_effective_settings_with_the_secret_redacted(tmp_path: Path) -> None:
    result = run_gateway("recordings", "sink", "--check", "--data-dir", str(tmp_path),
                         "--s3-secret-access-key", "hunter2", "--block-max-bytes", "4M")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert f"recordings_storage = {str(tmp_path / 'recordings')!r}".replace("'", '"') in result.stdout
    assert "block_max_bytes = 4194304" in result.stdout


def test_bad_settings_exit_2_with_one_line() -> None:
    result = run_gateway("recordings", "sink", "--recordings-storage", "s3://", "--check")
    assert result.returncode == 2
    assert result.stderr.strip() == "gateway: error: recordings_storage (s3://): s3:// needs a bucket: s3://BUCKET/PREFIX"
    result = run_gateway("recordings", "sink", "--block-max-bytes", "lots")
    assert result.returncode == 2
    assert "block_max_bytes (lots): expected a size" in result.stderr


def test_clickhouse_unreachable_at_sink_start_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "spool" / "worker-0").mkdir(parents=True)
    (tmp_path / "spool" / "worker-0" / "write.lock").touch()
    closed = f"http://127.0.0.1:{free_port()}"
    result = run_gateway("recordings", "sink", "--data-dir", str(tmp_path), "--clickhouse", closed)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gateway: error: --clickhouse ({closed}): cannot reach "
                                                   "ClickHouse: connection lost"), result.stderr
