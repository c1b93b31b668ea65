"""The Kafka source: one Bytewax partition per Kafka partition, offsets in recovery state."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from dte_stream.batches import RawBatch
from dte_stream.connectors.kafka.client import LOG, ErrorLog, connector_error, make_client, not_ready_yet
from dte_stream.connectors.kafka.records import RecordMapper
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.readiness import READINESS
from dte_stream.shutdown import stop_requested
from dte_stream.spec.kafka import KafkaSourceSpec

__all__ = ["KafkaSource", "consumer_config", "parse_part_key", "part_key"]

#: Partition-level errors after which reading cannot go on: the dataflow stops with them.
_FATAL_EVENTS = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError._FATAL,
    }
)


#: The wait after the first empty poll (seconds); it doubles up to ``poll_interval``.
_FIRST_BACKOFF = 0.001


def part_key(topic: str, partition: int) -> str:
    """The Bytewax partition key (a recovery key) of a Kafka partition: ``TOPIC/PARTITION``.

    ``/`` never occurs in a Kafka topic name, so the key is unambiguous.
    """
    return f"{topic}/{partition}"


def parse_part_key(key: str) -> tuple[str, int]:
    """The topic and partition of a key made by :func:`part_key`."""
    topic, _, partition = key.rpartition("/")
    return topic, int(partition)


def consumer_config(spec: KafkaSourceSpec) -> dict[str, str]:
    """The consumer's librdkafka configuration (secrets revealed: for the driver only).

    Offsets come from Bytewax recovery, so the group never assigns partitions and never
    auto-commits; ``auto.offset.reset=earliest`` applies only when a recovered offset no longer
    exists (deleted by retention): reading goes on from the oldest record still there.
    """
    return {
        "group.id": spec.group_id or f"dte-stream.{spec.name}",
        "enable.auto.commit": "false",
        "enable.auto.offset.store": "false",
        "auto.offset.reset": "earliest",
        "enable.partition.eof": "true" if spec.stop_at_end else "false",
        **spec.client_config(),
    }


class _KafkaPartition(StatefulSourcePartition[RawBatch, int]):
    """One Kafka partition: a consumer ``assign()``-ed at the resume offset, read in batches."""

    def __init__(self, spec: KafkaSourceSpec, topic: str, partition: int, resume: int | None) -> None:
        self._spec = spec
        self._where = f"source {spec.name}: {topic}/{partition}"
        self._errors = ErrorLog(self._where)
        self._consumer: Consumer | None = make_client(Consumer, spec, consumer_config(spec), self._errors)
        self._tp = TopicPartition(topic, partition)
        try:
            marks = self._watermarks(spec)
            if marks is None:
                raise ConnectorError(
                    f"{self._where}: no answer from Kafka at {spec.bootstrap_servers} "
                    f"within {spec.metadata_timeout:g} s while opening the partition"
                )
            low, high = marks
            start = resume if resume is not None else low if spec.starting_offset == "earliest" else high
            self._consumer.assign([TopicPartition(topic, partition, start)])
        except KafkaException as exc:
            self.close()
            raise connector_error(f"{self._where}: cannot open the partition", spec, exc) from None
        except ConnectorError:
            self.close()
            raise
        self._next = start
        self._end = high if spec.stop_at_end else None
        self._done = self._end is not None and start >= self._end
        self._empty_polls = 0
        self._committed = -1
        self._mapper = RecordMapper(
            spec.bootstrap_servers,
            topic,
            partition,
            key_is_twin_id=spec.key_is_twin_id,
            max_payload_bytes=spec.max_payload_bytes,
        )
        self._lag_key = f"{spec.name}:{topic}/{partition}"
        READINESS.ok(self._where, f"reading from offset {start}")
        LOG.info(
            "%s: reading from offset %d (%s)",
            self._where,
            start,
            "resumed" if resume is not None else spec.starting_offset,
        )

    def _watermarks(self, spec: KafkaSourceSpec) -> tuple[int, int] | None:
        """The partition's low and high offsets. A partition without a leader yet (just created,
        or its broker restarting) is asked again until ``startup_timeout`` has passed."""
        assert self._consumer is not None
        deadline = time.monotonic() + spec.startup_timeout
        while True:
            try:
                marks: tuple[int, int] | None = self._consumer.get_watermark_offsets(
                    self._tp, timeout=spec.metadata_timeout
                )
                return marks
            except KafkaException as exc:
                if not not_ready_yet(exc) or time.monotonic() >= deadline or stop_requested():
                    raise
                time.sleep(0.2)

    def next_batch(self) -> list[RawBatch]:
        if self._done or stop_requested() or self._consumer is None:
            raise StopIteration
        try:
            messages = self._consumer.consume(num_messages=self._spec.batch_size, timeout=0)
        except (KafkaException, RuntimeError) as exc:
            raise connector_error(f"{self._where}: cannot read", self._spec, exc) from None
        self._errors.raise_fatal(self._spec)
        if not messages:
            self._empty_polls += 1
            return []
        mapped = self._mapper.map(messages, self._end)
        for event in mapped.events:
            self._on_event(event)
        idle = not mapped.payloads and not mapped.errors
        self._empty_polls = self._empty_polls + 1 if idle else 0
        if mapped.next_offset is not None:
            self._next = mapped.next_offset
            self._errors.clear()
            self._track_lag(len(mapped.payloads))
            READINESS.ok(self._where, "reading")
        if mapped.at_end and self._end is not None:
            self._done = True  # emit this batch; the next call ends the partition
        if idle:
            return []
        spec = self._spec
        return [RawBatch(spec.name, spec.codec, mapped.payloads, spec.twin_type, mapped.errors)]

    def _on_event(self, event: KafkaError) -> None:
        if event.fatal() or event.code() in _FATAL_EVENTS:
            raise connector_error(f"{self._where}: cannot read", self._spec, event)
        METRICS.add("kafka_consumer_errors")
        READINESS.failed(self._where, str(event))
        self._errors(event)

    def _track_lag(self, records: int) -> None:
        METRICS.add("kafka_records_in", records)
        if self._consumer is None:
            return
        try:  # cached: the high watermark of the last fetch, no broker round trip
            marks = self._consumer.get_watermark_offsets(self._tp, cached=True)
        except KafkaException:
            return
        if marks is not None:
            METRICS.set_gauge("kafka_lag", self._lag_key, max(0, marks[1] - self._next))

    def next_awake(self) -> datetime | None:
        """Right away while records come; after empty polls, back off from 1 ms to ``poll_interval``.

        librdkafka fetches in the background, so a short gap between fetched batches must not
        cost a whole ``poll_interval`` (throughput), while an idle partition must not spin (CPU).
        """
        if not self._empty_polls:
            return None
        delay = min(self._spec.poll_interval, _FIRST_BACKOFF * (1 << min(self._empty_polls - 1, 16)))
        return datetime.now(UTC) + timedelta(seconds=delay)

    def snapshot(self) -> int:
        if self._spec.group_id is not None and self._consumer is not None and self._next != self._committed:
            # For monitoring only (lag in Kafka's tools); recovery never reads it back.
            try:
                tp = TopicPartition(self._tp.topic, self._tp.partition, self._next)
                self._consumer.commit(offsets=[tp], asynchronous=True)
                self._committed = self._next
            except KafkaException as exc:
                LOG.debug("%s: offset commit to group %s failed: %s", self._where, self._spec.group_id, exc)
        return self._next

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        READINESS.forget(self._where)
        if consumer is not None:
            consumer.close()


class KafkaSource(FixedPartitionedSource[RawBatch, int]):
    """Payloads from Kafka topics, one :class:`~dte_stream.batches.RawBatch` per consume call.

    Every Kafka partition of ``spec.topics`` is one Bytewax partition (key ``TOPIC/PARTITION``);
    Bytewax spreads them over the workers and processes. Each is read by its own consumer,
    ``assign()``-ed to it (no consumer-group rebalancing), ``batch_size`` records per
    ``consume()`` call. Record values are the payloads; the key, when present and UTF-8, is the
    twin id; records without a value or larger than ``max_payload_bytes`` travel in
    ``RawBatch.errors`` as dead letters.

    Resume state: per partition, the offset of the next record to read. Delivery:
    at-least-once through Bytewax recovery — after a crash the records read since the last
    snapshot are read again; without recovery a restart begins at ``starting_offset``.
    Offsets are not committed to Kafka, except (for monitoring only) to ``group_id`` if set.

    With ``stop_at_end`` each partition ends at its high watermark as of start (replays,
    tests); otherwise the source waits for new records, ``poll_interval`` between empty
    polls, until :func:`dte_stream.shutdown.stop_requested`.
    """

    def __init__(self, spec: KafkaSourceSpec) -> None:
        self.spec = spec

    def list_parts(self) -> list[str]:
        """Every partition of every topic, from one metadata request per topic.

        A topic the brokers do not know is a :class:`ConnectorError` naming it (the request
        never creates topics).
        """
        spec = self.spec
        errors = ErrorLog(f"source {spec.name}")
        consumer = make_client(
            Consumer, spec, {**consumer_config(spec), "allow.auto.create.topics": "false"}, errors
        )
        try:
            return [part_key(topic, p) for topic in spec.topics for p in self._partitions(consumer, topic)]
        finally:
            consumer.close()

    def _partitions(self, consumer: Consumer, topic: str) -> list[int]:
        spec = self.spec
        try:
            metadata: Any = consumer.list_topics(topic, timeout=spec.metadata_timeout)
        except KafkaException as exc:
            raise connector_error(
                f"source {spec.name}: cannot list the partitions of topic {topic!r} "
                f"within {spec.metadata_timeout:g} s",
                spec,
                exc,
            ) from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            unknown = found is None or found.error.code() in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError._UNKNOWN_TOPIC,
            )
            if unknown:
                raise ConnectorError(
                    f"source {spec.name}: topic {topic!r} does not exist at Kafka {spec.bootstrap_servers}; "
                    "create it (kafka-topics.sh --create) or fix 'topics'"
                )
            raise connector_error(f"source {spec.name}: cannot read topic {topic!r}", spec, found.error)
        return sorted(found.partitions)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        """Open the consumer of one partition at ``resume_state`` (else ``starting_offset``)."""
        topic, partition = parse_part_key(for_part)
        if topic not in self.spec.topics:
            raise ConnectorError(
                f"source {self.spec.name}: the recovery state names topic {topic!r}, "
                f"which is not in topics {self.spec.topics}; use a fresh recovery directory"
            )
        return _KafkaPartition(self.spec, topic, partition, resume_state)
