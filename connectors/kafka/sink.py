"""Kafka sinks: estimates as JSON records keyed by twin id, dead letters keyed by source."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from dte_stream.batches import DeadLetter, EstimateBatch
from dte_stream.connectors.kafka.client import LOG, ErrorLog, connector_error, error_text, make_client
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.spec.kafka import KafkaDeadLetterSinkSpec, KafkaProducerSpec, KafkaSinkSpec

__all__ = ["KafkaDeadLetterSink", "KafkaSink", "dead_letter_record", "estimate_records"]

ItemT = TypeVar("ItemT")
SpecT = TypeVar("SpecT", bound=KafkaProducerSpec)

#: Seconds between "still waiting" log lines while the brokers do not acknowledge.
_WAIT_LOG_SECONDS = 10.0


def estimate_records(batch: EstimateBatch) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` Kafka records of a batch: one per twin, rows in batch order.

    The key is the twin id (UTF-8); the value is JSON: ``twin_id``, ``twin_type`` and
    ``estimates``, a list of ``{channel, time (RFC 3339, ns), time_ns, value, unit, estimate,
    std, innovation, nis}``. Numbers that are not finite become ``null``.

    >>> import numpy as np
    >>> b = EstimateBatch("pump", np.array(["p-1"]), np.array(["temp"]), np.array([0]),
    ...     np.array([20.5]), np.array(["C"]), np.array([20.4]), np.array([0.1]), np.array([0.1]),
    ...     np.array([np.nan]))
    >>> [(k, orjson.loads(v)["estimates"][0]["time"]) for k, v in estimate_records(b)]
    [(b'p-1', '1970-01-01T00:00:00.000000000Z')]
    """
    for twin_id, document in batch.per_twin_documents():
        yield twin_id.encode(), orjson.dumps(document)


def dead_letter_record(letter: DeadLetter) -> tuple[bytes, bytes]:
    """The ``(key, value)`` Kafka record of a dead letter: key = its source, value = its JSON."""
    return letter.source.encode(), orjson.dumps(letter.to_json_dict())


class _ProducerPartition(StatelessSinkPartition[ItemT], Generic[ItemT, SpecT]):
    """One worker's producer: produces a batch's records, then waits for their acknowledgement.

    A full local queue (``BufferError``) is served by polling, which slows the dataflow down
    rather than dropping records. Delivery failures (librdkafka gave up after
    ``delivery_timeout``) are counted in ``kafka_delivery_errors`` and raised as
    :class:`ConnectorError` on the dataflow thread.
    """

    def __init__(self, spec: SpecT, who: str) -> None:
        self._spec = spec
        self._who = who
        self._errors = ErrorLog(who)
        self._producer: Producer | None = make_client(Producer, spec, spec.producer_config(), self._errors)
        self._failed = 0
        self._first_failure: KafkaError | None = None

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._failed += 1
            if self._first_failure is None:
                self._first_failure = error

    def _records(self, items: list[ItemT]) -> Iterator[tuple[bytes, bytes]]:
        raise NotImplementedError

    def write_batch(self, items: list[ItemT]) -> None:
        producer = self._producer
        if producer is None:
            raise ConnectorError(f"{self._who}: written to after close")
        topic = self._spec.topic
        sent = 0
        for key, value in self._records(items):
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=self._on_delivery)
                    break
                except BufferError:  # the local queue is full: let the brokers catch up
                    producer.poll(0.1)
                except KafkaException as exc:
                    raise connector_error(
                        f"{self._who}: cannot send to topic {topic!r}", self._spec, exc
                    ) from None
            sent += 1
        self._await_delivery()
        METRICS.add("kafka_records_out", sent)

    def _await_delivery(self) -> None:
        """Wait until every record sent is acknowledged or failed; raise on failures.

        librdkafka fails a record after ``delivery_timeout`` (``message.timeout.ms``), so this
        ends; the loop logs while it waits so a stalled broker is visible.
        """
        producer = self._producer
        if producer is None:
            return
        waited = 0.0
        while (left := producer.flush(_WAIT_LOG_SECONDS)) > 0:
            waited += _WAIT_LOG_SECONDS
            LOG.warning(
                "%s: %d records not yet acknowledged by Kafka at %s after %.0f s",
                self._who,
                left,
                self._spec.bootstrap_servers,
                waited,
            )
            self._errors.raise_fatal(self._spec)
            if waited > self._spec.delivery_timeout + 2 * _WAIT_LOG_SECONDS:
                raise ConnectorError(
                    f"{self._who}: {left} records not delivered to Kafka at {self._spec.bootstrap_servers} "
                    f"within {self._spec.delivery_timeout:g} s"
                )
        self._raise_failures()
        self._errors.clear()

    def _raise_failures(self) -> None:
        if self._failed:
            METRICS.add("kafka_delivery_errors", self._failed)
            failed, first = self._failed, self._first_failure
            self._failed, self._first_failure = 0, None
            reason = error_text(first) if first is not None else "unknown"
            raise ConnectorError(
                f"{self._who}: {failed} records were not delivered to topic {self._spec.topic!r} "
                f"at Kafka {self._spec.bootstrap_servers}: {reason}"
            )

    def close(self) -> None:
        """Flush what is left (bounded by ``delivery_timeout``); fail loudly if it cannot."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        left = producer.flush(self._spec.delivery_timeout)
        if left:
            METRICS.add("kafka_delivery_errors", left)
            raise ConnectorError(
                f"{self._who}: {left} records not delivered to Kafka at {self._spec.bootstrap_servers} "
                f"within {self._spec.delivery_timeout:g} s of closing (is the broker reachable?)"
            )
        self._raise_failures()


class _EstimatePartition(_ProducerPartition[EstimateBatch, KafkaSinkSpec]):
    def _records(self, items: list[EstimateBatch]) -> Iterator[tuple[bytes, bytes]]:
        for item in items:
            if not isinstance(item, EstimateBatch):
                raise ConnectorError(f"{self._who}: items must be EstimateBatch, got {type(item).__name__}")
            yield from estimate_records(item)


class _DeadLetterPartition(_ProducerPartition[DeadLetter, KafkaDeadLetterSinkSpec]):
    def _records(self, items: list[DeadLetter]) -> Iterator[tuple[bytes, bytes]]:
        for item in items:
            if not isinstance(item, DeadLetter):
                raise ConnectorError(f"{self._who}: items must be DeadLetter, got {type(item).__name__}")
            yield dead_letter_record(item)


class KafkaSink(DynamicSink[EstimateBatch]):
    """Estimates to ``spec.topic``: one JSON record per twin per batch, key = twin id.

    One producer per worker. Every ``write_batch`` waits until the brokers acknowledged its
    records (``acks``), so with Bytewax recovery delivery is at-least-once: a resumed
    dataflow sends the estimates of the replayed epochs again (same key, same content).
    Records of one twin keep their order in a partition (the key decides the partition).
    Failures to deliver raise :class:`ConnectorError`; ``close`` waits at most
    ``delivery_timeout`` for what is left.
    """

    def __init__(self, spec: KafkaSinkSpec) -> None:
        self.spec = spec

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _EstimatePartition:
        """Build the partition of one worker, with its own producer."""
        return _EstimatePartition(self.spec, f"sink {self.spec.name} (worker {worker_index})")


class KafkaDeadLetterSink(DynamicSink[DeadLetter]):
    """Dead letters to ``spec.topic``: JSON of :meth:`DeadLetter.to_json_dict`, key = source.

    Same delivery as :class:`KafkaSink`: acknowledged before ``write_batch`` returns,
    at-least-once with Bytewax recovery.
    """

    def __init__(self, spec: KafkaDeadLetterSinkSpec) -> None:
        self.spec = spec

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        """Build the partition of one worker, with its own producer."""
        return _DeadLetterPartition(self.spec, f"dead letters to Kafka (worker {worker_index})")
