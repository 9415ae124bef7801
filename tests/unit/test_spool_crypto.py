"""Spool encryption at rest: nothing readable on disk, rotation, loud failures, every reader with keys."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from gateway.cli import main
from gateway.core.record import Record
from gateway.sinkworker.sources import SpoolSource
from gateway.spool import Spool, SpoolReader, crypto, iter_records, spool_stats
from gateway.spool.crypto import OVERHEAD, Keyring, SpoolKey, SpoolKeyError, load_keyring, parse_keys
from gateway.spool.format import HEADER_SIZE, encode_record, header_key_id
from gateway.spool.purge import purge_spool
from gateway.spool.segment import list_segments, segment_name

MARKER = b"plaintext-marker-7f3a"
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


def rec(n: int, distinct_id: str = "someone") -> Record:
    headers = (("token", b"phc_x"), ("distinct_id", distinct_id.encode()))
    return Record("events", str(n).encode(), headers, orjson.dumps({"n": n, "marker": MARKER.decode()}))


def keyring(*keys: bytes) -> Keyring:
    return Keyring([SpoolKey(f"k{i}", key) for i, key in enumerate(keys, 1)], "test")


async def write(directory: Path, batches: Sequence[Sequence[Record]], ring: Keyring | None) -> None:
    """One writer session per batch (each starts a new segment)."""
    for batch in batches:
        spool = Spool(directory, fsync="never", keyring=ring)
        await spool.open()
        await spool.append(batch)
        await spool.close()


def on_disk(directory: Path) -> bytes:
    return b"".join((directory / segment_name(n)).read_bytes() for n in list_segments(directory))


def numbers(records: Sequence[Record]) -> list[int]:
    return [int(r.key or b"-1") for r in records]



def test_no_plaintext_on_disk_and_round_trip(tmp_path: Path) -> None:
    ring = keyring(KEY_A)
    asyncio.run(write(tmp_path, [[rec(n) for n in range(50)]], ring))
    data = on_disk(tmp_path)
    assert MARKER not in data and b"phc_x" not in data and b"events" not in data
    assert header_key_id(data[:HEADER_SIZE]) == ring.newest.key_id
    assert numbers(list(iter_records(tmp_path, keyring=ring))) == list(range(50))
    # Constant overhead per frame: nonce + tag.
    assert len(data) == HEADER_SIZE + sum(len(encode_record(rec(n))) + OVERHEAD for n in range(50))
    # Validating and counting need no key.
    assert spool_stats(tmp_path)["frames"] == 50


def test_rotation_keeps_old_segments_readable(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, [[rec(0), rec(1)]], keyring(KEY_A)))
    asyncio.run(write(tmp_path, [[rec(2)]], keyring(KEY_A, KEY_B)))  # rotated: B is newest
    first, second = list_segments(tmp_path)[:2]
    assert header_key_id((tmp_path / segment_name(first)).read_bytes()) == SpoolKey("a", KEY_A).key_id
    assert header_key_id((tmp_path / segment_name(second)).read_bytes()) == SpoolKey("b", KEY_B).key_id
    with SpoolReader(tmp_path, "r", keyring=keyring(KEY_A, KEY_B)) as reader:
        assert numbers(reader.read_batch().records) == [0, 1, 2]
    # Dropping the old key too early fails loudly on its segment instead of skipping it.
    with pytest.raises(SpoolKeyError, match="not among the configured spool keys"):
        list(iter_records(tmp_path, keyring=keyring(KEY_B)))
    # Which segments still need the old key (to know when it can go): no key needed to tell.
    assert spool_stats(tmp_path, keyring(KEY_A, KEY_B))["keys"] == {"k1": 1, "k2": 1}
    assert spool_stats(tmp_path)["keys"] == {f"{SpoolKey('a', KEY_A).key_id:08x}": 1,
                                             f"{SpoolKey('b', KEY_B).key_id:08x}": 1}


def test_wrong_or_missing_key_fails_loudly_and_drops_nothing(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, [[rec(n) for n in range(5)]], keyring(KEY_A)))
    with pytest.raises(SpoolKeyError, match="no spool encryption keys are configured"):
        list(iter_records(tmp_path))
    with pytest.raises(SpoolKeyError, match="not among"):
        list(iter_records(tmp_path, keyring=keyring(KEY_B)))
    # Same fingerprint, different material (a forged header or corrupted key file): the tag check catches it.
    (number,) = list_segments(tmp_path)
    path = tmp_path / segment_name(number)
    data = bytearray(path.read_bytes())
    data[12:16] = SpoolKey("b", KEY_B).key_id.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolKeyError, match="does not authenticate"):
        list(iter_records(tmp_path, keyring=keyring(KEY_B)))
    # A writer opening after that neither truncates nor sets anything aside: recovery needs no key.
    asyncio.run(write(tmp_path, [[rec(9)]], keyring(KEY_B)))
    assert spool_stats(tmp_path)["frames"] == 6


def test_torn_tail_of_encrypted_segment_is_recovered_without_keys(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, [[rec(n) for n in range(3)]], keyring(KEY_A)))
    (number,) = list_segments(tmp_path)
    with open(tmp_path / segment_name(number), "ab") as file:
        file.write(encode_record(rec(99), SpoolKey("a", KEY_A))[:-5])
    asyncio.run(write(tmp_path, [[rec(3)]], keyring(KEY_A)))
    assert numbers(list(iter_records(tmp_path, keyring=keyring(KEY_A)))) == [0, 1, 2, 3]


def test_plaintext_segments_stay_readable_after_turning_encryption_on(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, [[rec(0)]], None))
    asyncio.run(write(tmp_path, [[rec(1)]], keyring(KEY_A)))
    assert numbers(list(iter_records(tmp_path, keyring=keyring(KEY_A)))) == [0, 1]


def test_a_reader_uses_only_the_keyring_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(write(tmp_path, [[rec(n) for n in range(4)]], keyring(KEY_A)))
    monkeypatch.setenv(crypto.ENV_KEYS, KEY_A.hex())  # no hidden process keyring picks these up
    with SpoolReader(tmp_path, "kafka") as reader, pytest.raises(SpoolKeyError, match="no spool encryption keys"):
        reader.read_batch()
    with SpoolReader(tmp_path, "kafka", keyring(KEY_A)) as reader:
        assert numbers(reader.read_batch().records) == [0, 1, 2, 3]


def test_sink_worker_spool_source_positions_with_encryption(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, [[rec(n) for n in range(4)]], keyring(KEY_A)))
    source = SpoolSource(tmp_path, keyring=keyring(KEY_A))

    async def run() -> list[int]:
        await source.start(None)  # type: ignore[arg-type]
        messages = await source.fetch(0.01, 10)
        # The offset of the last message is the end of the segment's last frame, minus one.
        (number,) = list_segments(tmp_path)
        assert messages[-1].offset + 1 == (tmp_path / segment_name(number)).stat().st_size
        return [int(m.key or b"-1") for m in messages]

    assert asyncio.run(run()) == [0, 1, 2, 3]


def test_purge_re_seals_with_the_segment_key(tmp_path: Path) -> None:
    ring = keyring(KEY_A)
    asyncio.run(write(tmp_path, [[rec(n, "victim" if n % 2 else "other") for n in range(6)]], ring))
    result = purge_spool(tmp_path, lambda r: r.header("distinct_id") == b"victim", ring)
    assert result.removed == 3
    assert MARKER not in on_disk(tmp_path)
    assert numbers(list(iter_records(tmp_path, keyring=ring))) == [0, 2, 4]


def test_key_file_and_env_formats(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-11\nold:{KEY_A.hex()}\nnew:{base64.b64encode(KEY_B).decode()}  # current\n")
    ring = load_keyring(path, environ={})
    assert ring is not None and [k.label for k in ring.keys] == ["old", "new"] and ring.newest.label == "new"
    env = load_keyring(environ={crypto.ENV_KEYS: f"{KEY_A.hex()},{base64.urlsafe_b64encode(KEY_B).decode()}"})
    assert env is not None and [k.key_id for k in env.keys] == [k.key_id for k in ring.keys]
    assert load_keyring(environ={}) is None
    with pytest.raises(SpoolKeyError, match="not 32 bytes"):
        parse_keys("k:" + base64.b64encode(os.urandom(16)).decode(), "test")
    with pytest.raises(SpoolKeyError, match="same key"):
        parse_keys(f"a:{KEY_A.hex()}\nb:{KEY_A.hex()}", "test")
    with pytest.raises(SpoolKeyError, match="use one"):
        load_keyring(path, environ={crypto.ENV_KEYS: KEY_A.hex()})


def test_cli_spool_dump_and_purge_with_a_key_file(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    directory = tmp_path / "spool" / "worker-0"
    directory.mkdir(parents=True)
    asyncio.run(write(directory, [[rec(n, "victim" if n == 1 else "other") for n in range(3)]], keyring(KEY_A)))
    keys = tmp_path / "keys"
    keys.write_text(f"k1:{KEY_A.hex()}\n")
    assert main(["spool", "dump", "--data-dir", str(tmp_path), "--spool-encryption-key-file", str(keys)]) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    assert [orjson.loads(orjson.loads(line)["value"])["n"] for line in lines] == [0, 1, 2]
    assert main(["spool", "dump", "--data-dir", str(tmp_path)]) == 1
    assert b"no spool encryption keys" in capsysbinary.readouterr().err
    assert main(["gdpr", "purge-spool", "--distinct-id", "victim", "--data-dir", str(tmp_path),
                 "--audit-log", str(tmp_path / "audit.jsonl"), "--spool-encryption-key-file", str(keys)]) == 0
    assert numbers(list(iter_records(directory, keyring=keyring(KEY_A)))) == [0, 2]


def test_writer_refuses_to_open_when_a_retained_segment_key_is_missing(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, [[rec(0)]], keyring(KEY_A)))
    with pytest.raises(SpoolKeyError, match="not among"):
        asyncio.run(write(tmp_path, [[rec(1)]], keyring(KEY_B)))
    assert numbers(list(iter_records(tmp_path, keyring=keyring(KEY_A)))) == [0]


def test_bad_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    from gateway.http.components import check_components
    from gateway.settings import ConfigError, ServeSettings

    bad = tmp_path / "keys"
    bad.write_text("k1:not-a-key\n")
    for path in (bad, tmp_path / "missing"):
        with pytest.raises(ConfigError, match="spool_encryption_key_file"):
            check_components(ServeSettings(data_dir=tmp_path, spool_encryption_key_file=path))
