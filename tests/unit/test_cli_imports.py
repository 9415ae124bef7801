"""Building the CLI must not import prometheus_client: `gateway serve` enables multiprocess metrics
first, which only works before the library is imported."""

from __future__ import annotations

import subprocess
import sys


def test_cli_parser_does_not_import_prometheus_client() -> None:
    code = "import sys, gateway.cli; gateway.cli.build_parser(); print('prometheus_client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
