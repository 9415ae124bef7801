"""Per-run bookkeeping: offset ranges, skipped and rejected offsets, the dedup token, the replay guard."""

from __future__ import annotations

from gateway.clickhouse.writer import body_chunks
from gateway.sinkworker.batch import Batch, FlushPolicy
from gateway.sinkworker.replay import ReplayGuard
from gateway.sinkworker.rows import RowEncoder
from gateway.sinkworker.teams import TeamResolver
from tests.sinkworker.helpers import TOPIC, stream

ENCODE = RowEncoder(TeamResolver({})).encode_binary


def test_runs_extend_ranges_and_keep_rows_rejects_and_skips_apart() -> None:
    messages = stream(12, partitions=2, garbage=[4])  # partition 0: offsets 0..5, index 4 is offset 2
    part0 = [m for m in messages if m.partition == 0]
    part1 = [m for m in messages if m.partition == 1]
    batch = Batch(1)
    assert batch.add_run(part0[:3], ENCODE, {1}) == (1, 0)
    assert batch.add_run(part1, ENCODE) == (0, 0)
    assert batch.add_run(part0[3:], ENCODE) == (0, 0)
    assert batch.ranges == {(TOPIC, 0): (0, 5), (TOPIC, 1): (0, 5)}
    assert [(m.partition, m.offset) for m, _ in batch.rejects] == [(0, 2)]
    assert [(e.reason) for _, e in batch.rejects] == ["invalid_json"]
    assert batch.skipped == [(TOPIC, 0, 1)]
    assert [(m.partition, m.offset) for m in batch.sources] == [
        (0, 0), *[(1, offset) for offset in range(6)], (0, 3), (0, 4), (0, 5)
    ]  # fmt: skip
    assert len(batch.rows) == 10 and batch.size == sum(map(len, batch.rows))


def test_dedup_token_names_the_rows_not_the_runs() -> None:
    messages = stream(10, partitions=1)
    whole, split, fewer = Batch(1), Batch(2), Batch(3)
    whole.add_run(messages, ENCODE)
    split.add_run(messages[:4], ENCODE)
    split.add_run(messages[4:], ENCODE)
    fewer.add_run(messages, ENCODE, {7})
    assert whole.dedup_token() == split.dedup_token() != fewer.dedup_token()


def test_replay_guard_returns_stored_offsets_until_a_run_passes_them() -> None:
    guard = ReplayGuard()
    tp = (TOPIC, 0)
    assert guard.to_check({tp: 10}) == {tp: (10, None)}
    guard.loaded({tp}, {tp: {11, 14}})
    assert guard.to_check({tp: 10}) == {}
    assert guard.stored_in(tp, 12) == {11, 14}
    assert guard.stored_in(tp, 14) == {11, 14}
    assert not guard.stored_in(tp, 20)  # forgotten once read past
    guard.reset({tp})
    assert guard.to_check({tp: 30}) == {tp: (30, None)}


def test_batches_keep_coordinates_not_message_values_and_bodies_stream_in_whole_rows() -> None:
    messages = stream(50, partitions=1)
    batch = Batch(1)
    batch.add_run(messages, ENCODE)
    assert all(not hasattr(where, "value") for where in batch.sources)
    assert batch.sources[7] == (TOPIC, 0, 7, messages[7].timestamp)
    one_kib = max(map(len, batch.rows)) * 3  # a chunk closes at the row that reaches it
    chunks = list(body_chunks(batch.rows, one_kib))
    assert len(chunks) > 5 and b"".join(chunks) == b"".join(batch.rows)
    assert all(len(chunk) < one_kib + max(map(len, batch.rows)) for chunk in chunks)
    assert list(body_chunks(b"abc")) == [b"abc"]


def test_an_old_batch_waits_for_a_backlog_to_fill_it() -> None:
    policy = FlushPolicy(max_rows=3, max_age_s=1.0)
    batch = Batch(0, created=100.0)
    assert not batch.due(policy, 200.0)  # empty
    messages = stream(3, partitions=1)
    batch.add_run(messages[:1], ENCODE)
    assert batch.due(policy, 101.5) and not batch.due(policy, 101.5, backlog=True)
    batch.add_run(messages[1:], ENCODE)
    assert batch.due(policy, 100.0, backlog=True)  # full
