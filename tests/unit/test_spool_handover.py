"""`gateway spool export|import`: a dead node's spools handed over to another node's data dir, run as the
real command; bad input (truncated file, another key, the same file twice, a spool in use) is refused
with one line and leaves the target as it was."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from gateway.core.record import Record
from gateway.spool import Spool, SpoolReader, iter_records
from gateway.spool.crypto import Keyring, SpoolKey
from gateway.spool.layout import orphaned_spools, spool_dir
from gateway.spool.locks import WRITE_LOCK, FileLock
from gateway.spool.segment import list_segments, segment_name
from tests.support.processes import REPO_ROOT, gateway_env

MARKER = b"plaintext-marker-5be1"
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


def rec(n: int) -> Record:
    return Record("events", str(n).encode(), (("token", b"phc_x"), ("distinct_id", b"someone")),
                  orjson.dumps({"n": n, "marker": MARKER.decode()}))


def ring(key: bytes) -> Keyring:
    return Keyring([SpoolKey("k", key)], "test")


def numbers(records: Sequence[Record]) -> list[int]:
    return [int(r.key or b"-1") for r in records]


async def write(directory: Path, batches: Sequence[Sequence[Record]], keyring: Keyring | None) -> None:
    for batch in batches:  # one writer session per batch: one segment each
        spool = Spool(directory, fsync="never", keyring=keyring)
        await spool.open()
        await spool.append(batch)
        await spool.close()


def gateway(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "spool", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO_ROOT, env=env or gateway_env(), timeout=60)


def key_file(tmp_path: Path, key: bytes) -> Path:
    path = tmp_path / f"keys-{key[0]}"
    path.write_text(f"k:{key.hex()}\n")
    return path


def snapshot(data_dir: Path) -> dict[str, bytes]:
    """Every file under `data_dir` (lock files aside) and its content."""
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(data_dir.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A stopped node's data dir: an encrypted main spool of 3 segments with records 0-5, Kafka's cursor
    past records 0-1, and a plaintext upstream spool."""
    data = tmp_path / "node-a"
    main = spool_dir(data, 0)
    asyncio.run(write(main, [[rec(0), rec(1)], [rec(2), rec(3)], [rec(4), rec(5)]], ring(KEY_A)))
    with SpoolReader(main, "kafka", ring(KEY_A)) as reader:
        reader.commit(reader.read_batch(max_records=2))
    asyncio.run(write(spool_dir(data, 1, "upstream"), [[rec(10)]], None))
    return data


def test_export_then_import_replays_from_the_exported_cursor(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "node-b"
    asyncio.run(write(spool_dir(target, 0), [[rec(100)]], ring(KEY_A)))  # the target's own spool
    export = tmp_path / "handover.tar"

    exported = gateway("export", "--data-dir", source, "--out", export)
    assert exported.returncode == 0, exported.stderr
    assert orjson.loads(exported.stdout)["records"] == 7
    assert MARKER not in export.read_bytes().split(b"upstream/")[0]  # encrypted records stay encrypted

    imported = gateway("import", "--data-dir", target, export, "--spool-encryption-key-file", key_file(tmp_path, KEY_A))
    assert imported.returncode == 0, imported.stderr
    assert orjson.loads(imported.stdout)["spools"] == {
        "main/worker-0": str(spool_dir(target, 1000)), "upstream/worker-1": str(spool_dir(target, 1000, "upstream"))}
    # Adopted by the target's gateway like the spool of a worker that no longer exists, read from its cursor.
    assert orphaned_spools(target, "main", workers=1, worker=0) == [spool_dir(target, 1000)]
    with SpoolReader(spool_dir(target, 1000), "kafka", ring(KEY_A)) as reader:
        assert numbers(reader.read_batch().records) == [2, 3, 4, 5]
    assert numbers(iter_records(spool_dir(target, 1000, "upstream"))) == [10]
    assert numbers(iter_records(spool_dir(target, 0), keyring=ring(KEY_A))) == [100]
    assert not [p for p in target.iterdir() if p.name.startswith(".spool-import")]


def test_a_torn_tail_is_left_out_and_a_killed_writer_does_not_block_export(source: Path, tmp_path: Path) -> None:
    main = spool_dir(source, 0)
    newest = main / segment_name(list_segments(main)[-1])
    with open(newest, "ab") as file:
        file.write(b"\x40\x00\x00\x00torn")  # a frame the killed writer never finished
    export = tmp_path / "handover.tar"
    assert gateway("export", "--data-dir", source, "--out", export).returncode == 0
    target = tmp_path / "node-b"
    keys = key_file(tmp_path, KEY_A)
    assert gateway("import", "--data-dir", target, export, "--spool-encryption-key-file", keys).returncode == 0
    assert numbers(iter_records(spool_dir(target, 1000), keyring=ring(KEY_A))) == [0, 1, 2, 3, 4, 5]


def test_export_refuses_a_spool_in_use(source: Path, tmp_path: Path) -> None:
    lock = FileLock(spool_dir(source, 0) / WRITE_LOCK)  # as a running gateway holds it
    lock.acquire()
    try:
        result = gateway("export", "--data-dir", source, "--out", tmp_path / "handover.tar")
    finally:
        lock.release()
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "spool main/worker-0 is in use" in result.stderr and f"(pid {os.getpid()})" in result.stderr
    assert not list(tmp_path.glob("*handover.tar*"))


def test_export_usage_errors(tmp_path: Path, source: Path) -> None:
    missing = gateway("export", "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "x.tar")
    assert (missing.returncode, missing.stderr.count("\n")) == (2, 1)
    assert "is not a directory" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = gateway("export", "--data-dir", tmp_path / "empty", "--out", tmp_path / "x.tar")
    assert empty.returncode == 2 and "no spool in" in empty.stderr
    (tmp_path / "taken.tar").write_bytes(b"keep")
    taken = gateway("export", "--data-dir", source, "--out", tmp_path / "taken.tar")
    assert taken.returncode == 2 and "exists already" in taken.stderr
    assert (tmp_path / "taken.tar").read_bytes() == b"keep"


@pytest.fixture
def export_and_target(source: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    export = tmp_path / "handover.tar"
    assert gateway("export", "--data-dir", source, "--out", export).returncode == 0
    target = tmp_path / "node-b"
    asyncio.run(write(spool_dir(target, 0), [[rec(100)]], ring(KEY_A)))
    return export, target, key_file(tmp_path, KEY_A)


def assert_refused(result: subprocess.CompletedProcess[str], code: int, reason: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("gateway spool import: ") and reason in result.stderr


@pytest.mark.parametrize("where", ["in a segment", "before the manifest", "in the manifest"])
def test_a_truncated_file_imports_nothing(export_and_target: tuple[Path, Path, Path], where: str) -> None:
    export, target, keys = export_and_target
    data = export.read_bytes()
    manifest_header = data.index(b"manifest.json") // 512 * 512  # tar headers start on 512-byte blocks
    at = {"in a segment": data.index(b"GWSPOOL") + 100, "before the manifest": manifest_header,
          "in the manifest": data.index(b'"export_id"')}[where]
    cut = export.with_name("cut.tar")
    cut.write_bytes(data[:at])
    before = snapshot(target)
    result = gateway("import", "--data-dir", target, cut, "--spool-encryption-key-file", keys)
    assert_refused(result, 2, "nothing imported")
    assert snapshot(target) == before


def test_damaged_or_foreign_files_import_nothing(export_and_target: tuple[Path, Path, Path], tmp_path: Path) -> None:
    export, target, keys = export_and_target
    before = snapshot(target)
    data = bytearray(export.read_bytes())
    data[data.index(b"GWSPOOL") + 40] ^= 0xFF  # one bit of a segment: the manifest's SHA-256 no longer matches
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    assert_refused(gateway("import", "--data-dir", target, damaged, "--spool-encryption-key-file", keys), 2, "damaged")
    other = tmp_path / "notes.txt"
    other.write_text("not an export\n" * 100)
    assert_refused(gateway("import", "--data-dir", target, other, "--spool-encryption-key-file", keys), 2,
                   "not a spool export")
    assert snapshot(target) == before


def test_a_file_from_another_key_imports_nothing(export_and_target: tuple[Path, Path, Path], tmp_path: Path) -> None:
    export, target, _ = export_and_target
    before = snapshot(target)
    other_key = key_file(tmp_path, KEY_B)
    assert_refused(gateway("import", "--data-dir", target, export, "--spool-encryption-key-file", other_key), 2,
                   "give --spool-encryption-key-file the source node's keys")
    assert_refused(gateway("import", "--data-dir", target, export), 2, "no spool encryption keys")
    assert snapshot(target) == before


def test_importing_the_same_file_twice_imports_it_once(export_and_target: tuple[Path, Path, Path]) -> None:
    export, target, keys = export_and_target
    assert gateway("import", "--data-dir", target, export, "--spool-encryption-key-file", keys).returncode == 0
    before = snapshot(target)
    assert_refused(gateway("import", "--data-dir", target, export, "--spool-encryption-key-file", keys), 1,
                   "was imported into")
    assert snapshot(target) == before
    assert sorted(p.name for p in (target / "spool").iterdir()) == ["worker-0", "worker-1000"]
