"""prometheus-client multiprocess mode for `gateway serve`: one scrape of any worker shows them all.

The library picks its value storage when it is first imported, so `multiprocess_metrics` runs in the
parent before that (this module imports nothing from it at top level). Every process then writes its
samples to mmap files in a fresh directory; the scraping worker merges them (`MultiProcessCollector`,
gateway/metrics/export.py) and a dead worker's live gauges are dropped with `mark_process_dead`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def multiprocess_metrics() -> Iterator[Path]:
    """Enable multiprocess mode for this process and the workers it forks.

    A directory given in PROMETHEUS_MULTIPROC_DIR is used (its stale *.db files removed); otherwise a
    fresh temporary one is created and removed on exit, so no run ever sums a previous run's counters.
    """
    if "prometheus_client.values" in sys.modules:
        raise RuntimeError("prometheus_client was imported before multiprocess metrics were enabled")
    given = os.environ.get(MULTIPROC_ENV)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield directory
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)
            del os.environ[MULTIPROC_ENV]


def is_multiprocess() -> bool:
    return MULTIPROC_ENV in os.environ


def process_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters keep counting toward the totals)."""
    if is_multiprocess():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
