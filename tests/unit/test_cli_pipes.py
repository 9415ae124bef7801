"""Commands that print records (`spool dump`, `gdpr export --out -`) piped into a reader that stops
early (`| head`): they stop quietly, as `cat` does, instead of printing a BrokenPipeError traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO_ROOT, gateway_env
from tests.support.spools import fill_worker_spools


def test_spool_dump_into_head_stops_without_a_traceback(tmp_path: Path) -> None:
    fill_worker_spools(tmp_path, 1, 2000)
    dump = subprocess.Popen([sys.executable, "-m", "gateway", "spool", "dump", "--data-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=gateway_env(), cwd=REPO_ROOT)
    assert dump.stdout is not None and dump.stderr is not None
    assert dump.stdout.readline().startswith(b'{"spool":"main/worker-0"')
    dump.stdout.close()  # what `head -1` does once it has its line
    assert dump.wait(60) == 1
    assert dump.stderr.read() == b""
