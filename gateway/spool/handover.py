"""Spool hand-over: move what a dead node's spools still hold to another node's data dir.

`export_spools` writes every spool of a stopped gateway's data dir into one tar file:

    <kind>/worker-N/<segment>.seg       the valid frames of each segment, byte for byte (an encrypted
                                         segment stays encrypted; a torn tail is left out)
    <kind>/worker-N/cursor-<name>.json   each reader's position (e.g. how far Kafka got)
    manifest.json                        last: export id, every file's size and SHA-256, record counts

`import_spools` unpacks it into a staging directory of the target data dir, checks it (manifest
present and matching: no truncation or damage; every record decodes with the target's keys), then
renames each spool into place as a new `<kind>/worker-N` (N ≥ IMPORT_WORKER_BASE) with a
`handover.json` marker. A gateway started on that data dir adopts it as a spool of a worker that no
longer exists (layout.orphaned_spools) and replays it from the exported cursors; `gateway sink
--data-dir` drains it like any other. The marker (export id + source spool) makes a second import of
the same file a refusal, and an interrupted import resumable.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import socket
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.spool.crypto import Keyring, SpoolKeyError
from gateway.spool.errors import SpoolError, SpoolLocked
from gateway.spool.format import HEADER_SIZE
from gateway.spool.layout import KIND_DIRS, KINDS, SpoolId, spools
from gateway.spool.locks import PURGE_JOURNAL, PURGE_LOCK, WRITE_LOCK, FileLock, is_locked
from gateway.spool.reader import CURSOR_PREFIX
from gateway.spool.segment import Stop, fsync_directory, list_segments, scan_segment, segment_name

FORMAT = "gateway-spool-export"
VERSION = 1
MANIFEST = "manifest.json"
MARKER = "handover.json"
IMPORT_LOCK = "spool-import.lock"
IMPORT_WORKER_BASE = 1000
_MEMBER = re.compile(rf"^({'|'.join(KINDS)})/worker-(\d+)/(\d{{20}}\.seg|{CURSOR_PREFIX}[A-Za-z0-9_.-]+\.json)$")
_COPY_CHUNK = 1 << 20


class HandoverError(SpoolError):
    """The export or import cannot be done; `exit_code` 2: fix the input or flags, 1: retry later."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(slots=True)
class HandoverResult:
    export_id: str
    records: int = 0
    spools: dict[str, Any] = field(default_factory=dict)  # source spool → records (export), its directory (import)
    skipped: list[str] = field(default_factory=list)  # source spools imported before (resumed import)


# -- export ---------------------------------------------------------------------------------------


def export_spools(data_dir: Path, out: Path) -> HandoverResult:
    """Write every spool of `data_dir` to `out` (atomically: a partial file never has the final name)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise HandoverError(f"--data-dir {data_dir} is not a directory")
    if out.exists():
        raise HandoverError(f"--out {out} exists already: choose a new file")
    found = spools(data_dir)
    if not found:
        raise HandoverError(f"no spool in {data_dir} (expected spool/worker-N or upstream-spool/worker-N)")
    result = HandoverResult(export_id=str(uuid.uuid4()))
    manifest: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "export_id": result.export_id,
        "source": {"host": socket.gethostname(), "data_dir": str(data_dir.resolve())},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "spools": {},
    }
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file, tarfile.open(fileobj=file, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for spool, directory in found:
                with _quiesced(spool, directory):
                    manifest["spools"][spool.name] = _export_one(tar, spool, directory)
                result.records += manifest["spools"][spool.name]["records"]
            _add(tar, MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            tar.close()
            file.flush()
            os.fsync(file.fileno())
        os.rename(tmp, out)
        fsync_directory(out.parent.resolve())
    except OSError as exc:
        raise HandoverError(f"cannot write {out}: {exc}", exit_code=1) from exc
    finally:
        tmp.unlink(missing_ok=True)
    result.spools = {name: spool["records"] for name, spool in manifest["spools"].items()}
    return result


@contextlib.contextmanager
def _quiesced(spool: SpoolId, directory: Path) -> Iterator[None]:
    """Hold the write lock and every reader's lock: no gateway, replayer or purge changes the spool."""
    held: list[FileLock] = []
    try:
        for path in (directory / WRITE_LOCK, *sorted(directory.glob(f"{CURSOR_PREFIX}*.lock"))):
            lock = FileLock(path)
            try:
                lock.acquire()
            except SpoolLocked as exc:
                raise HandoverError(f"spool {spool.name} is in use ({exc}): stop the gateway or sink using "
                                    f"{directory} first", exit_code=1) from None
            held.append(lock)
        if is_locked(directory / PURGE_LOCK) or (directory / PURGE_JOURNAL).exists():
            raise HandoverError(f"spool {spool.name}: a purge is running or was interrupted; run `gateway gdpr "
                                "purge-spool` again to finish it first", exit_code=1)
        yield
    finally:
        for lock in held:
            lock.release()


def _export_one(tar: tarfile.TarFile, spool: SpoolId, directory: Path) -> dict[str, Any]:
    files: dict[str, Any] = {}
    records = 0
    key_ids: set[int] = set()
    for number in list_segments(directory):
        path = directory / segment_name(number)
        scan = scan_segment(path, decode=False)
        if scan.stop is Stop.CORRUPT and scan.end == HEADER_SIZE and scan.count == 0:
            continue  # an invalid header: nothing a reader could deliver either
        records += scan.count
        if scan.key_id:
            key_ids.add(scan.key_id)
        with open(path, "rb") as source:  # the valid prefix only: readers stop at the first bad frame too
            files[segment_name(number)] = _add_stream(tar, f"{spool.name}/{segment_name(number)}", source, scan.end)
    for path in sorted(directory.glob(f"{CURSOR_PREFIX}*.json")):
        data = path.read_bytes()
        files[path.name] = _add(tar, f"{spool.name}/{path.name}", data)
    return {"records": records, "key_ids": sorted(key_ids), "files": files}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> dict[str, Any]:
    return _add_stream(tar, name, io.BytesIO(data), len(data))


def _add_stream(tar: tarfile.TarFile, name: str, source: IO[bytes], size: int) -> dict[str, Any]:
    digest = _Hashing(source)
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, digest)
    return {"size": size, "sha256": digest.hexdigest()}


class _Hashing:
    """A reader that hashes what passes through it (tar reads exactly `size` bytes)."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# -- import ---------------------------------------------------------------------------------------


def import_spools(data_dir: Path, archive: Path, keyring: Keyring | None) -> HandoverResult:
    """Unpack `archive` into new spools of `data_dir` (see module doc); the target is untouched on error."""
    data_dir = Path(data_dir)
    if not archive.is_file():
        raise HandoverError(f"{archive} is not a file")
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(data_dir / IMPORT_LOCK)
    try:
        lock.acquire()
    except SpoolLocked as exc:
        raise HandoverError(f"another import into {data_dir} is running ({exc})", exit_code=1) from None
    staging = Path(tempfile.mkdtemp(prefix=".spool-import-", dir=data_dir))
    try:
        manifest = _unpack(archive, staging)
        result = HandoverResult(export_id=manifest["export_id"])
        imported = _imported(data_dir, result.export_id)
        for name, spool in manifest["spools"].items():
            if name in imported:
                result.skipped.append(name)
                continue
            _check_keys(name, spool, keyring, archive)
            try:
                result.records += _check_readable(staging / name, spool, keyring, archive)
            except SpoolKeyError as exc:
                raise HandoverError(f"{archive}: spool {name}: {exc}: nothing imported") from None
        if not set(manifest["spools"]) - imported.keys():
            where = ", ".join(f"{name} → {imported[name]}" for name in sorted(imported))
            raise HandoverError(f"{archive} (export {result.export_id}) was imported into {data_dir} already "
                                f"({where}): nothing imported", exit_code=1)
        for name in manifest["spools"]:
            if name not in imported:
                result.spools[name] = str(_move_into_place(data_dir, staging / name, name, manifest))
        return result
    except OSError as exc:
        raise HandoverError(f"cannot import {archive} into {data_dir}: {exc}", exit_code=1) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()


def _unpack(archive: Path, staging: Path) -> dict[str, Any]:
    """Extract the spool files (checking every name) and return the manifest after matching it."""
    sums: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    try:
        with tarfile.open(archive, mode="r|") as tar:
            for member in tar:
                if manifest is not None:
                    raise HandoverError(f"{archive}: unexpected {member.name!r} after the manifest")
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise HandoverError(f"{archive}: {member.name!r} is not a regular file")
                if member.name == MANIFEST:
                    manifest = orjson.loads(source.read())
                    continue
                if not _MEMBER.match(member.name):
                    raise HandoverError(f"{archive}: unexpected member {member.name!r}: not a spool export")
                target = staging / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                sums[member.name] = _write_file(source, target)
    except (tarfile.TarError, EOFError) as exc:
        raise HandoverError(f"{archive} is truncated or not a spool export ({exc}): nothing imported") from None
    except orjson.JSONDecodeError:
        raise HandoverError(f"{archive}: the manifest is not valid JSON: nothing imported") from None
    if manifest is None:
        raise HandoverError(f"{archive} has no manifest: truncated (an export ends with it): nothing imported")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise HandoverError(f"{archive} is not a spool export of version {VERSION}")
    listed = {f"{spool}/{name}": entry for spool, entry in manifest["spools"].items()
              for name, entry in entry["files"].items()}
    if listed.keys() != sums.keys():
        missing = sorted(listed.keys() - sums.keys()) or sorted(sums.keys() - listed.keys())
        raise HandoverError(f"{archive} does not match its manifest ({missing[0]}): nothing imported")
    for name, entry in listed.items():
        if sums[name] != entry:
            raise HandoverError(f"{archive}: {name} is damaged (size or SHA-256 differs): nothing imported")
    return manifest


def _write_file(source: IO[bytes], target: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with open(target, "wb") as out:
        while chunk := source.read(_COPY_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def _check_keys(name: str, spool: dict[str, Any], keyring: Keyring | None, archive: Path) -> None:
    known = {key.key_id for key in keyring.keys} if keyring else set()
    for key_id in spool["key_ids"]:
        if key_id not in known:
            have = f"the keys of {keyring.source}" if keyring else "no spool encryption keys"
            raise HandoverError(f"{archive}: spool {name} is encrypted with key id {key_id:08x}, and this node has "
                                f"{have}: give --spool-encryption-key-file the source node's keys; nothing imported")


def _check_readable(directory: Path, spool: dict[str, Any], keyring: Keyring | None, archive: Path) -> int:
    """Decode every record with the target's keys: what cannot be replayed here is refused now."""
    records = 0
    for number in list_segments(directory):
        scan = scan_segment(directory / segment_name(number), keyring=keyring)  # SpoolKeyError: other key
        if scan.stop is not Stop.END:
            raise HandoverError(f"{archive}: segment {directory.name}/{segment_name(number)} is damaged "
                                f"({scan.stop.value}): nothing imported")
        records += scan.count
    if records != spool["records"]:
        raise HandoverError(f"{archive}: {records} records, the manifest says {spool['records']}: nothing imported")
    return records


def _imported(data_dir: Path, export_id: str) -> dict[str, str]:
    """Source spools of export `export_id` already in `data_dir`: source name → spool directory."""
    found = {}
    for spool, directory in spools(data_dir):
        with contextlib.suppress(OSError, orjson.JSONDecodeError, TypeError, KeyError):
            marker = orjson.loads((directory / MARKER).read_bytes())
            if marker["export_id"] == export_id:
                found[marker["source_spool"]] = spool.name
    return found


def _move_into_place(data_dir: Path, staged: Path, name: str, manifest: dict[str, Any]) -> Path:
    """Rename a checked spool to a new worker directory of its kind, marker included (one atomic step)."""
    kind = name.split("/", 1)[0]
    marker = {"export_id": manifest["export_id"], "source_spool": name, "source": manifest["source"],
              "exported_at": manifest["created_at"], "imported_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (staged / MARKER).write_bytes(orjson.dumps(marker))
    fsync_directory(staged)
    root = data_dir / KIND_DIRS[kind]
    root.mkdir(exist_ok=True)
    taken = {spool.worker for spool, _ in spools(data_dir, (kind,))}
    worker = next(n for n in range(IMPORT_WORKER_BASE, 1 << 16) if n not in taken)
    target = SpoolId(kind, worker).directory(data_dir)
    os.rename(staged, target)  # fails (EEXIST/ENOTEMPTY) rather than merging into an existing spool
    fsync_directory(root)
    return target
