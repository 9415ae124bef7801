"""`gateway recordings`: README documents every flag, `--check` shows effective settings, bad settings exit 2."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from gateway.cli import build_parser
from tests.support.processes import run_gateway

README = Path(__file__).resolve().parents[2] / "README.md"


def sub_parser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_readme_documents_every_recordings_flag() -> None:
    text = README.read_text()
    section = text[text.index("## Session recordings (`gateway recordings`)"):]
    section = section[:section.index("\n## ", 1)]
    documented = {flag for line in section.splitlines() if line.startswith("| `-")
                  for flag in re.findall(r"--[a-z][a-z0-9-]*", line.split("|")[1])}
    documented |= {"--older-than-days", "--out"}  # described in the text above the table
    for command in ("sink", "export", "expire"):
        flags = {option for action in sub_parser("recordings", command)._actions
                 for option in action.option_strings if option.startswith("--") and option != "--help"}
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
