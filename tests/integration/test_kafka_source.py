"""KafkaSource against a real KRaft broker: every record once, keys as twin ids, partitions over
workers, restarts from Bytewax recovery, dead letters, and clear errors for unknown topics."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from bytewax.testing import TestingSink, run_main
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dte_stream import shutdown
from dte_stream.batches import RawBatch
from dte_stream.connectors.kafka import KafkaSource
from dte_stream.errors import ConnectorError
from dte_stream.spec.kafka import KafkaSourceSpec

pytestmark = pytest.mark.integration

TS_MS = 1_767_323_045_000  # 2026-01-02T03:04:05Z


def _topic(admin: AdminClient, partitions: int) -> str:
    name = f"dte-test-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(30)
    return name


def _produce(bootstrap: str, topic: str, records: list[tuple[int, bytes | None, bytes | None]]) -> None:
    """Produce ``(partition, key, value)`` records with timestamps TS_MS + index; wait for acks."""
    failures: list[Any] = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for i, (partition, key, value) in enumerate(records):
        producer.produce(
            topic,
            value,
            key,
            partition=partition,
            timestamp=TS_MS + i,
            on_delivery=lambda err, _msg: failures.append(err) if err else None,
        )
    assert producer.flush(30) == 0
    assert failures == []


def _records(prefix: str, count: int, partitions: int) -> list[tuple[int, bytes | None, bytes | None]]:
    return [
        (i % partitions, f"{prefix}-twin-{i % 7}".encode(), f'{{"n": "{prefix}-{i}"}}'.encode())
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def admin(kafka: Any) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap_servers})


def _spec(kafka: Any, topic: str, **extra: Any) -> KafkaSourceSpec:
    return KafkaSourceSpec(
        kind="kafka",
        name="plant",
        bootstrap_servers=kafka.bootstrap_servers,
        topics=[topic],
        metadata_timeout=20,
        poll_interval=0.01,
        **{"stop_at_end": True, **extra},
    )


def _flow(spec: KafkaSourceSpec, out: list[RawBatch], name: str = "kafka_test") -> Dataflow:
    flow = Dataflow(name)
    batches = op.input("source_plant", flow, KafkaSource(spec))
    op.output("out", batches, TestingSink(out))
    return flow


def _payloads(out: list[RawBatch]) -> list[tuple[bytes, Any]]:
    return [p for batch in out for p in batch.payloads]


def test_every_record_arrives_once_with_its_context_and_bad_ones_as_dead_letters(
    kafka: Any, admin: AdminClient
) -> None:
    topic = _topic(admin, 2)
    good = _records("a", 300, 2)
    bad: list[tuple[int, bytes | None, bytes | None]] = [(0, b"pump-x", None), (1, b"pump-y", b"x" * 600)]
    _produce(kafka.bootstrap_servers, topic, good + bad)

    out: list[RawBatch] = []
    group = f"dte-test-monitor-{uuid.uuid4().hex[:8]}"
    spec = _spec(kafka, topic, max_payload_bytes=500, batch_size=64, twin_type="pump", group_id=group)
    run_main(_flow(spec, out))

    assert {b.source for b in out} == {"plant"}
    assert {b.codec for b in out} == {"json"}
    assert {b.twin_type for b in out} == {"pump"}
    payloads = _payloads(out)
    assert sorted(p for p, _ in payloads) == sorted(v for _, _, v in good if v is not None)
    offsets: dict[int, list[int]] = {0: [], 1: []}
    for i, (value, context) in enumerate(sorted(payloads, key=lambda p: int(p[0][6:-2].split(b"-")[1]))):
        assert value == good[i][2]
        assert context.twin_id == good[i][1].decode()  # type: ignore[union-attr]
        assert context.received_ns == (TS_MS + i) * 1_000_000
        head, _, offset = context.source.rpartition("@")
        assert head == f"kafka://{kafka.bootstrap_servers}/{topic}/{good[i][0]}"
        offsets[good[i][0]].append(int(offset))
    assert offsets == {0: list(range(150)), 1: list(range(150))}

    letters = [d for b in out for d in b.errors]
    assert sorted(d.source for d in letters) == sorted(
        [
            f"kafka://{kafka.bootstrap_servers}/{topic}/0@150",
            f"kafka://{kafka.bootstrap_servers}/{topic}/1@150",
        ]
    )
    reasons = " | ".join(d.reason for d in letters)
    assert "no value" in reasons
    assert "600 bytes is larger than max_payload_bytes=500" in reasons

    # group_id: the offsets reached are committed to the group, for monitoring tools
    watcher = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        committed = watcher.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=20)
    finally:
        watcher.close()
    assert [tp.offset for tp in committed] == [151, 151]


def test_latest_starts_after_what_is_there(kafka: Any, admin: AdminClient) -> None:
    topic = _topic(admin, 1)
    _produce(kafka.bootstrap_servers, topic, _records("old", 20, 1))
    out: list[RawBatch] = []
    run_main(_flow(_spec(kafka, topic, starting_offset="latest"), out))
    assert _payloads(out) == []


def test_four_partitions_over_two_workers_each_record_once(kafka: Any, admin: AdminClient) -> None:
    topic = _topic(admin, 4)
    records = _records("w", 2000, 4)
    _produce(kafka.bootstrap_servers, topic, records)
    out: list[RawBatch] = []
    seen_by: dict[str, set[int]] = {}
    lock = threading.Lock()

    flow = Dataflow("kafka_two_workers")
    batches = op.input("source_plant", flow, KafkaSource(_spec(kafka, topic, batch_size=100)))

    def note_worker(_step: str, batch: RawBatch, _epoch: int, worker: int) -> None:
        with lock:
            for _, context in batch.payloads:
                seen_by.setdefault(context.source.rpartition("@")[0], set()).add(worker)

    inspected = op.inspect_debug("which_worker", batches, note_worker)
    op.output("out", inspected, TestingSink(out))
    cli_main(flow, workers_per_process=2)  # type: ignore[no-untyped-call]

    values = [p for p, _ in _payloads(out)]
    assert len(values) == len(records)
    assert sorted(values) == sorted(v for _, _, v in records if v is not None)
    assert len(seen_by) == 4
    assert all(len(workers) == 1 for workers in seen_by.values()), "a partition was read by two workers"


class _CrashingSink(DynamicSink[RawBatch]):
    """Keeps batches like TestingSink, then fails the dataflow once ``limit`` batches were written."""

    def __init__(self, out: list[RawBatch], limit: int) -> None:
        self.out = out
        self.limit = limit

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[RawBatch]:
        sink = self

        class _Part(StatelessSinkPartition[RawBatch]):
            def write_batch(self, items: list[RawBatch]) -> None:
                sink.out.extend(items)
                if len(sink.out) >= sink.limit:
                    raise RuntimeError("simulated crash")

        return _Part()


def _causes(exc: BaseException | None) -> str:
    """The messages of an exception and its causes (Bytewax wraps what a step raised)."""
    texts = []
    while exc is not None:
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(texts)


def _offsets(out: list[RawBatch]) -> list[str]:
    return [context.source for batch in out for _, context in batch.payloads]


@pytest.fixture
def recovery(tmp_path: Path) -> RecoveryConfig:
    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    return RecoveryConfig(str(db))


@pytest.fixture
def stop_flag() -> Iterator[Callable[[], None]]:
    shutdown.STOP.clear()
    yield shutdown.STOP.set
    shutdown.STOP.clear()


def test_graceful_stop_then_restart_reads_what_came_in_between_exactly_once(
    kafka: Any, admin: AdminClient, recovery: RecoveryConfig, stop_flag: Callable[[], None]
) -> None:
    topic = _topic(admin, 2)
    first = _records("one", 400, 2)
    _produce(kafka.bootstrap_servers, topic, first)

    # Run 1 tails the topic (no stop_at_end) and is stopped like SIGTERM does, once all arrived.
    out1: list[RawBatch] = []
    flow = Dataflow("kafka_restart")
    batches = op.input(
        "source_plant", flow, KafkaSource(_spec(kafka, topic, stop_at_end=False, batch_size=50))
    )

    def stop_when_complete(_step: str, _batch: RawBatch) -> None:
        if len(_payloads(out1)) + len(_batch.payloads) >= len(first):
            stop_flag()

    op.output("out", op.inspect("watch", batches, stop_when_complete), TestingSink(out1))
    timer = threading.Timer(60, stop_flag)  # never hang the suite
    timer.start()
    try:
        run_main(flow, epoch_interval=timedelta(milliseconds=200), recovery_config=recovery)
    finally:
        timer.cancel()
    shutdown.STOP.clear()
    assert len(_payloads(out1)) == len(first)

    # While it is down, more records arrive; run 2 resumes from the recovery state.
    second = _records("two", 300, 2)
    _produce(kafka.bootstrap_servers, topic, second)
    out2: list[RawBatch] = []
    run_main(_flow(_spec(kafka, topic), out2, "kafka_restart"), recovery_config=recovery)

    assert sorted(p for p, _ in _payloads(out2)) == sorted(v for _, _, v in second if v is not None)
    assert not set(_offsets(out1)) & set(_offsets(out2))


def test_crash_then_restart_delivers_every_record_at_least_once(
    kafka: Any, admin: AdminClient, recovery: RecoveryConfig
) -> None:
    topic = _topic(admin, 2)
    records = _records("c", 1000, 2)
    _produce(kafka.bootstrap_servers, topic, records)
    spec = _spec(kafka, topic, batch_size=50)

    out1: list[RawBatch] = []
    crash = Dataflow("kafka_crash")
    op.output("out", op.input("source_plant", crash, KafkaSource(spec)), _CrashingSink(out1, limit=8))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(crash, epoch_interval=timedelta(0), recovery_config=recovery)
    assert "simulated crash" in _causes(info.value)
    assert 0 < len(_payloads(out1)) < len(records)

    out2: list[RawBatch] = []
    run_main(_flow(spec, out2, "kafka_crash"), recovery_config=recovery)
    seen = _offsets(out1) + _offsets(out2)
    assert set(seen) == {
        f"kafka://{kafka.bootstrap_servers}/{topic}/{p}@{o}" for p in (0, 1) for o in range(500)
    }
    replayed = len(seen) - len(set(seen))
    assert replayed < len(records) // 2, "the restart did not resume from the recovered offsets"
    assert len(_offsets(out2)) < len(records)


def test_unknown_topic_is_a_connector_error_naming_topic_and_brokers(kafka: Any) -> None:
    spec = _spec(kafka, "dte-test-no-such-topic")
    with pytest.raises(ConnectorError) as info:
        KafkaSource(spec).list_parts()
    message = str(info.value)
    assert "'dte-test-no-such-topic' does not exist" in message
    assert kafka.bootstrap_servers in message

    with pytest.raises(BytewaxRuntimeError) as run_info:
        run_main(_flow(spec, []))
    assert "'dte-test-no-such-topic' does not exist" in _causes(run_info.value)
