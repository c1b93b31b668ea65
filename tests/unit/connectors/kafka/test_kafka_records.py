"""Record -> payload mapping of the Kafka source, with stand-in message objects (no broker)."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, KafkaError

from dte_stream.codecs.base import DecodeContext
from dte_stream.connectors.kafka.records import DEAD_LETTER_RAW_BYTES, RecordMapper, new_context
from dte_stream.connectors.kafka.source import consumer_config, parse_part_key, part_key
from dte_stream.spec.kafka import KafkaSourceSpec
from dte_stream.times import now_ns

BOOT = "10.0.0.1:9092,10.0.0.2:9092"


@dataclass
class Record:
    """Answers the calls RecordMapper makes on a confluent_kafka.Message."""

    offset_: int | None
    value_: bytes | None = b"{}"
    key_: bytes | None = None
    ts: tuple[int, int] = (TIMESTAMP_CREATE_TIME, 1_700_000_000_123)
    error_: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self.error_

    def offset(self) -> int | None:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def timestamp(self) -> tuple[int, int]:
        return self.ts


def _mapper(key_is_twin_id: bool = True, max_payload_bytes: int = 100) -> RecordMapper:
    return RecordMapper(
        BOOT, "plant.sensors", 3, key_is_twin_id=key_is_twin_id, max_payload_bytes=max_payload_bytes
    )


def test_records_become_payloads_with_their_context() -> None:
    out = _mapper().map([Record(10, b'{"v":1}', b"pump-1"), Record(11, b'{"v":2}', "wärme-2".encode())])
    assert [p for p, _ in out.payloads] == [b'{"v":1}', b'{"v":2}']
    first, second = (c for _, c in out.payloads)
    assert first.source == "kafka://10.0.0.1:9092,10.0.0.2:9092/plant.sensors/3@10"
    assert second.source.endswith("/plant.sensors/3@11")
    assert (first.twin_id, second.twin_id) == ("pump-1", "wärme-2")
    assert first.channel is None
    assert first.received_ns == 1_700_000_000_123_000_000
    assert first.max_payload_bytes == 100
    assert out.errors == []
    assert out.events == []
    assert out.next_offset == 12
    assert out.at_end is False


def test_keys_that_cannot_be_twin_ids_leave_the_twin_to_the_payload() -> None:
    records = [Record(0, key_=None), Record(1, key_=b""), Record(2, key_=b"\xff\xfe"), Record(3, key_=b"ok")]
    assert [c.twin_id for _, c in _mapper().map(records).payloads] == [None, None, None, "ok"]
    assert [c.twin_id for _, c in _mapper(key_is_twin_id=False).map(records).payloads] == [None] * 4


def test_records_without_a_timestamp_get_the_wall_clock() -> None:
    before = now_ns()
    out = _mapper().map([Record(0, ts=(TIMESTAMP_NOT_AVAILABLE, -1))])
    assert before <= out.payloads[0][1].received_ns <= now_ns()


def test_null_and_oversize_records_are_dead_letters_and_are_passed() -> None:
    big = b"x" * (DEAD_LETTER_RAW_BYTES + 50)
    out = _mapper(max_payload_bytes=DEAD_LETTER_RAW_BYTES).map(
        [Record(5, None, b"k"), Record(6, big), Record(7, b"1" * DEAD_LETTER_RAW_BYTES)]
    )
    assert [c.source[-2:] for _, c in out.payloads] == ["@7"]
    null, oversize = out.errors
    assert null.source.endswith("/plant.sensors/3@5")
    assert "no value" in null.reason
    assert null.raw == b""
    assert oversize.source.endswith("@6")
    assert f"{len(big)} bytes" in oversize.reason
    assert f"max_payload_bytes={DEAD_LETTER_RAW_BYTES}" in oversize.reason
    assert oversize.raw == big[:DEAD_LETTER_RAW_BYTES]
    assert out.next_offset == 8


def test_unreadable_records_are_dead_letters_other_errors_are_events() -> None:
    bad = KafkaError(KafkaError._BAD_MSG, "checksum mismatch")
    gone = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "deleted")
    out = _mapper().map([Record(1, b"?", error_=bad), Record(2, None, error_=gone), Record(3)])
    (letter,) = out.errors
    assert letter.source.endswith("@1")
    assert "checksum mismatch" in letter.reason
    assert out.events == [gone]
    assert out.next_offset == 4  # the partition error never moves the offset by itself


def test_partition_eof_marks_the_end() -> None:
    eof = KafkaError(KafkaError._PARTITION_EOF)
    out = _mapper().map([Record(4), Record(5, error_=eof)])
    assert out.at_end
    assert out.next_offset == 5
    assert len(out.payloads) == 1


def test_records_from_the_end_offset_on_are_left_unread() -> None:
    out = _mapper().map([Record(8), Record(9), Record(10)], end_offset=10)
    assert [c.source[-2:] for _, c in out.payloads] == ["@8", "@9"]
    assert out.next_offset == 10
    assert out.at_end
    assert not _mapper().map([Record(8)], end_offset=10).at_end


def test_no_records_leave_the_offset_alone() -> None:
    out = _mapper().map([])
    assert (out.payloads, out.errors, out.next_offset, out.at_end) == ([], [], None, False)


@pytest.mark.parametrize("topic", ["a", "plant.sensors-v2_x"])
def test_part_keys_round_trip(topic: str) -> None:
    assert parse_part_key(part_key(topic, 12)) == (topic, 12)


def test_consumer_config_keeps_offsets_out_of_the_group() -> None:
    spec = KafkaSourceSpec(
        kind="kafka", bootstrap_servers=BOOT, topics=["t"], settings={"sasl.password": "pw"}, stop_at_end=True
    )
    config = consumer_config(spec)
    assert config["enable.auto.commit"] == "false"
    assert config["enable.auto.offset.store"] == "false"
    assert config["auto.offset.reset"] == "earliest"
    assert config["enable.partition.eof"] == "true"
    assert config["group.id"] == "dte-stream.kafka"
    assert config["sasl.password"] == "pw"
    assert consumer_config(spec.model_copy(update={"group_id": "ops"}))["group.id"] == "ops"


def test_fast_contexts_are_ordinary_frozen_contexts() -> None:
    made = new_context("kafka://b/t/0@1", "pump-1", 5, 7)
    assert made == DecodeContext("kafka://b/t/0@1", "pump-1", None, 5, 7)
    assert type(made) is DecodeContext
    with pytest.raises(FrozenInstanceError):
        made.source = "x"  # type: ignore[misc]


def test_clean_records_map_in_bulk_with_the_same_contexts_as_one_by_one() -> None:
    """Records without errors map into KafkaPayloads whose contexts equal the per-record ones."""
    from dte_stream.connectors.kafka.records import KafkaPayloads

    records = [Record(10 + i, b'{"v": %d}' % i, b"pump-%d" % i) for i in range(4)]
    records[2].key_ = b"\xff"  # not UTF-8: no twin id
    records[3].ts = (TIMESTAMP_NOT_AVAILABLE, -1)
    mapper = RecordMapper(BOOT, "sensors", 3, key_is_twin_id=True, max_payload_bytes=100)
    out = mapper.map(records)
    assert isinstance(out.payloads, KafkaPayloads)
    assert (out.next_offset, out.at_end, out.errors) == (14, False, [])
    one_by_one = mapper.map([*records, Record(14, None)])  # a bad record: the per-record path
    assert not isinstance(one_by_one.payloads, KafkaPayloads)
    for (value, ctx), (value2, ctx2) in zip(out.payloads, one_by_one.payloads, strict=True):
        assert value == value2
        assert (ctx.source, ctx.twin_id, ctx.channel, ctx.max_payload_bytes) == (
            ctx2.source,
            ctx2.twin_id,
            ctx2.channel,
            ctx2.max_payload_bytes,
        )
        if ctx.source.endswith("@13"):  # no timestamp: the wall clock when mapped
            assert abs(ctx.received_ns - ctx2.received_ns) < 10**10
        else:
            assert ctx.received_ns == ctx2.received_ns
    assert mapper.map(records, end_offset=12).next_offset == 12  # the end cuts: per record


def test_consumed_messages_map_in_bulk_and_so_do_mixed_records() -> None:
    """confluent_kafka's own Message objects take the bulk path through Message's methods; a
    list that mixes them with other record objects maps to the same payloads."""
    from confluent_kafka import Message

    from dte_stream.connectors.kafka.records import KafkaPayloads

    def message(offset: int, value: bytes | None) -> Message:
        return Message(topic="sensors", partition=3, offset=offset, key=b"pump-%d" % offset, value=value,
                       timestamp=(TIMESTAMP_CREATE_TIME, 1_700_000_000_000 + offset))  # fmt: skip

    mapper = _mapper()
    out = mapper.map([message(10, b"[1]"), message(11, b"[2]")])
    assert isinstance(out.payloads, KafkaPayloads)
    assert [(p, c.twin_id, c.received_ns) for p, c in out.payloads] == [
        (b"[1]", "pump-10", 1_700_000_000_010_000_000),
        (b"[2]", "pump-11", 1_700_000_000_011_000_000),
    ]
    mixed = mapper.map([message(10, b"[1]"), Record(11, b"[2]", b"pump-11")])
    assert isinstance(mixed.payloads, KafkaPayloads)
    assert [(p, c.source[-3:]) for p, c in mixed.payloads] == [(b"[1]", "@10"), (b"[2]", "@11")]
    refused = mapper.map([message(10, None), message(11, b"x" * 101), message(12, b"[3]")])
    assert [d.reason[:25] for d in refused.errors] == [
        "Kafka record has no value",
        "Kafka record of 101 bytes",
    ]
    assert [p for p, _ in refused.payloads] == [b"[3]"]
