"""Where the spools of a data directory live: every spool kind, every worker, one place.

    <data-dir>/spool/worker-N            kind "main": the embedded sink's log, Kafka's failover buffer
    <data-dir>/upstream-spool/worker-N   kind "upstream": events waiting for the upstream PostHog

A spool is identified by (kind, worker). Stats, dump, metrics, GDPR purge and the sink's spool
source find spools here, so a new kind is visible to all of them at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.spool.locks import WRITE_LOCK
from gateway.spool.segment import SUFFIX

MAIN = "main"
UPSTREAM = "upstream"
KIND_DIRS = {MAIN: "spool", UPSTREAM: "upstream-spool"}  # kind → directory under the data dir
KINDS = tuple(KIND_DIRS)
_WORKER_DIR = re.compile(r"^worker-(\d+)$")
_WORKER_BITS = 16


@dataclass(frozen=True, slots=True, order=True)
class SpoolId:
    """Which spool: its kind and the worker that writes it."""

    kind: str
    worker: int

    @property
    def name(self) -> str:
        """`main/worker-0`: unique within a data dir, for logs and output keys."""
        return f"{self.kind}/worker-{self.worker}"

    @property
    def number(self) -> int:
        """A small integer unique per spool; main/worker-0 is 0 (what single-spool sinks always used)."""
        return KINDS.index(self.kind) << _WORKER_BITS | self.worker

    @classmethod
    def from_number(cls, number: int) -> SpoolId:
        return cls(KINDS[number >> _WORKER_BITS], number & ((1 << _WORKER_BITS) - 1))

    def directory(self, data_dir: Path) -> Path:
        return Path(data_dir) / KIND_DIRS[self.kind] / f"worker-{self.worker}"


def spool_dir(data_dir: Path, worker: int, kind: str = MAIN) -> Path:
    return SpoolId(kind, worker).directory(data_dir)


def spools(data_dir: Path, kinds: Iterable[str] = KINDS) -> list[tuple[SpoolId, Path]]:
    """Every worker spool directory of the given kinds under `data_dir`, in (kind, worker) order."""
    found = []
    for kind in kinds:
        root = Path(data_dir) / KIND_DIRS[kind]
        if not root.is_dir():
            continue
        for path in root.iterdir():
            match = _WORKER_DIR.match(path.name)
            if match and path.is_dir():
                found.append((SpoolId(kind, int(match[1])), path))
    return sorted(found)


def identify(directory: Path) -> SpoolId | None:
    """The identity of a spool directory laid out as above (None for a directory elsewhere)."""
    directory = Path(directory).resolve()
    match = _WORKER_DIR.match(directory.name)
    for kind, name in KIND_DIRS.items():
        if match and directory.parent.name == name:
            return SpoolId(kind, int(match[1]))
    return None


def is_spool(directory: Path) -> bool:
    """Whether `directory` holds a spool (a writer opened it: it has its lock file or a segment)."""
    directory = Path(directory)
    return directory.is_dir() and (
        (directory / WRITE_LOCK).exists() or any(directory.glob(f"*{SUFFIX}"))
    )


def orphaned_spools(data_dir: Path, kind: str, workers: int, worker: int) -> list[Path]:
    """Spools of workers that no longer exist (a previous run had more); worker j goes to j mod N."""
    return [path for spool, path in spools(data_dir, (kind,))
            if spool.worker >= workers and spool.worker % workers == worker]
