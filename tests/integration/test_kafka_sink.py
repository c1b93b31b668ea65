"""KafkaSink and KafkaDeadLetterSink against a real KRaft broker: the records are read back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import bytewax.operators as op
import numpy as np
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dte_stream.batches import EstimateBatch
from dte_stream.connectors.kafka import KafkaDeadLetterSink, KafkaSink
from dte_stream.metrics import METRICS
from dte_stream.readings import DeadLetter
from dte_stream.spec.kafka import KafkaDeadLetterSinkSpec, KafkaSinkSpec

pytestmark = pytest.mark.integration

T0 = 1_767_323_045_000_000_000  # 2026-01-02T03:04:05Z


@pytest.fixture(scope="module")
def admin(kafka: Any) -> Iterator[AdminClient]:
    client = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    yield client
    del client


def _topic(admin: AdminClient, partitions: int = 2) -> str:
    name = f"dte-test-out-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(30)
    return name


def _read_back(bootstrap: str, topic: str, count: int, partitions: int = 2) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dte-test-read-back"})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        got: list[Message] = []
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                got.append(msg)
        # anything beyond `count` would be a duplicate: look a little longer
        got.extend(m for m in consumer.consume(num_messages=1000, timeout=0.5) if m.error() is None)
        return got
    finally:
        consumer.close()


def _estimates(twins: list[str], start: int) -> EstimateBatch:
    n = len(twins)
    values = np.arange(start, start + n, dtype=np.float64)
    return EstimateBatch(
        twin_type="pump",
        twin_id=np.array(twins),
        channel=np.array(["temp", "flow"] * (n // 2) + ["temp"] * (n % 2)),
        time_ns=T0 + np.arange(start, start + n, dtype=np.int64) * 1_000_000_000,
        value=values,
        unit=np.array(["C"] * n),
        estimate=values + 0.5,
        std=np.full(n, 0.1),
        innovation=np.full(n, -0.5),
        nis=np.full(n, 0.25),
    )


def test_estimates_arrive_as_one_json_record_per_twin_and_batch(kafka: Any, admin: AdminClient) -> None:
    topic = _topic(admin)
    batches = [
        _estimates(["pump-1", "pump-2", "pump-1", "pompe é,=1"], 0),
        _estimates(["pump-2", "pump-2"], 10),
    ]
    spec = KafkaSinkSpec(kind="kafka", bootstrap_servers=kafka.bootstrap_servers, topic=topic, linger_ms=1)
    before = METRICS.get("kafka_records_out")
    flow = Dataflow("kafka_sink_test")
    op.output("sink_kafka", op.input("estimates", flow, TestingSource(batches)), KafkaSink(spec))
    run_main(flow)
    assert METRICS.get("kafka_records_out") - before == 4

    records = _read_back(kafka.bootstrap_servers, topic, 4)
    by_key: dict[bytes, list[dict[str, Any]]] = {}
    for msg in records:
        key = msg.key()
        value = msg.value()
        assert key is not None
        assert value is not None
        by_key.setdefault(key, []).append(orjson.loads(value))
    assert sorted(by_key) == sorted([b"pump-1", b"pump-2", "pompe é,=1".encode()])
    assert len(by_key[b"pump-2"]) == 2  # one per batch
    (pump1,) = by_key[b"pump-1"]
    assert pump1["twin_id"] == "pump-1"
    assert pump1["twin_type"] == "pump"
    assert pump1["estimates"] == [
        {
            "channel": "temp",
            "time": "2026-01-02T03:04:05.000000000Z",
            "time_ns": T0,
            "value": 0.0,
            "unit": "C",
            "estimate": 0.5,
            "std": 0.1,
            "innovation": -0.5,
            "nis": 0.25,
            "flags": 0,
            "anomaly_score": None,
        },
        {
            "channel": "temp",
            "time": "2026-01-02T03:04:07.000000000Z",
            "time_ns": T0 + 2_000_000_000,
            "value": 2.0,
            "unit": "C",
            "estimate": 2.5,
            "std": 0.1,
            "innovation": -0.5,
            "nis": 0.25,
            "flags": 0,
            "anomaly_score": None,
        },
    ]
    later = sorted(by_key[b"pump-2"], key=lambda r: r["estimates"][0]["time_ns"])
    assert [len(r["estimates"]) for r in later] == [1, 2]
    # one twin's records share a partition, so they stay in order
    assert len({m.partition() for m in records if m.key() == b"pump-2"}) == 1


def test_dead_letters_arrive_keyed_by_source(kafka: Any, admin: AdminClient) -> None:
    topic = _topic(admin)
    letters = [
        DeadLetter("kafka://x/sensors/0@5", "not JSON", b"\xff\x00", received_ns=1),
        DeadLetter("mqtt:plant/pump-1", "value is not a number", b'{"value": "high"}', received_ns=2),
    ]
    spec = KafkaDeadLetterSinkSpec(kind="kafka", bootstrap_servers=kafka.bootstrap_servers, topic=topic)
    flow = Dataflow("kafka_dead_letter_test")
    op.output("dead_letters", op.input("letters", flow, TestingSource(letters)), KafkaDeadLetterSink(spec))
    run_main(flow)

    records = _read_back(kafka.bootstrap_servers, topic, 2)
    got = {msg.key(): orjson.loads(msg.value() or b"") for msg in records}
    assert got == {letter.source.encode(): letter.to_json_dict() for letter in letters}
