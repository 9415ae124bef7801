"""Spool identities under a data dir: found by kind and worker, told apart, named back from a path."""

from __future__ import annotations

from pathlib import Path

from gateway.spool.layout import MAIN, UPSTREAM, SpoolId, identify, is_spool, orphaned_spools, spools


def test_spools_of_every_kind_are_found_and_identified(tmp_path: Path) -> None:
    for relative in ("spool/worker-0", "spool/worker-10", "spool/worker-2", "upstream-spool/worker-1",
                     "spool/not-a-worker", "chdb/worker-3"):
        (tmp_path / relative).mkdir(parents=True)
    found = spools(tmp_path)
    assert [spool.name for spool, _ in found] == ["main/worker-0", "main/worker-2", "main/worker-10",
                                                  "upstream/worker-1"]
    assert all(identify(path) == spool and spool.directory(tmp_path) == path for spool, path in found)
    assert [spool.name for spool, _ in spools(tmp_path, (UPSTREAM,))] == ["upstream/worker-1"]
    assert identify(tmp_path / "chdb" / "worker-3") is None
    assert orphaned_spools(tmp_path, MAIN, workers=2, worker=0) == [tmp_path / "spool" / "worker-2",
                                                                    tmp_path / "spool" / "worker-10"]


def test_spool_numbers_are_distinct_and_main_worker_0_is_zero() -> None:
    ids = [SpoolId(kind, worker) for kind in (MAIN, UPSTREAM) for worker in (0, 1, 7, 65535)]
    assert SpoolId(MAIN, 0).number == 0
    assert len({spool.number for spool in ids}) == len(ids)
    assert all(SpoolId.from_number(spool.number) == spool for spool in ids)


def test_a_spool_is_a_directory_a_writer_opened(tmp_path: Path) -> None:
    assert not is_spool(tmp_path / "missing") and not is_spool(tmp_path)
    (tmp_path / "write.lock").touch()
    assert is_spool(tmp_path)
