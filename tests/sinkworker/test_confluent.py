"""The confluent-kafka source's message handling without a broker (the group behaviour runs against a real
Kafka in tests/integration/test_sink_group.py and test_sink_clickhouse.py)."""

from __future__ import annotations

from confluent_kafka import KafkaError, Message

from gateway.sinkworker.batch import Batch
from gateway.sinkworker.confluent import KafkaMessage, _latest_reads
from gateway.sinkworker.rows import RowEncoder
from gateway.sinkworker.teams import TeamResolver
from tests.sinkworker.helpers import TOKEN, captured_value, record


def message(partition: int, offset: int, value: bytes = b"v") -> Message:
    return Message(topic="t", partition=partition, offset=offset, value=value, key=b"k",
                   headers=[("token", b"x")], timestamp=(1, 1_694_769_302_328))  # fmt: skip


def offsets(found: list[Message]) -> list[tuple[int, int]]:
    return [(m.partition(), m.offset()) for m in found]


def test_reads_repeated_after_a_rebalance_in_one_consume_are_dropped() -> None:
    """Partition 0 was revoked and assigned again inside one consume(): its reading restarted at the
    committed offset 10, so 10..12 read before the rebalance come again; partition 1 did not restart."""
    found = [message(0, 10), message(1, 5), message(0, 11), message(0, 12), message(1, 6),
             message(0, 10), message(0, 11), message(1, 7), message(0, 12), message(0, 13)]  # fmt: skip
    assert offsets(_latest_reads(found)) == [(1, 5), (1, 6), (0, 10), (0, 11), (1, 7), (0, 12), (0, 13)]
    in_order = [message(0, 1), message(1, 1), message(0, 2)]
    assert _latest_reads(in_order) is in_order
    error = Message(topic="t", partition=0, offset=-1, error=KafkaError(KafkaError._TRANSPORT))
    assert error in _latest_reads([message(0, 3), error, message(0, 3)])


def test_a_consumed_message_encodes_and_dead_letters_like_a_consumer_record() -> None:
    value = captured_value(3, properties={"$elements_chain": "a", "x": 1})
    source = message(2, 41, value)
    consumed = KafkaMessage(source.topic(), source.partition(), source.offset(), source.timestamp()[1], source.value(),
                            source)  # fmt: skip
    assert (consumed.key, list(consumed.headers)) == (b"k", [("token", b"x")])  # what the DLQ forwards
    encoder = RowEncoder(TeamResolver({TOKEN: 42}))
    reference = record(value, offset=41, partition=2, topic="t")  # written at 1_694_769_302_328
    assert encoder.encode_binary(consumed) == encoder.encode_binary(reference)
    batch = Batch(0)
    batch.add_run([consumed], encoder.encode_binary)
    assert batch.ranges == {("t", 2): (41, 41)} and batch.sources[0].timestamp == 1_694_769_302_328
