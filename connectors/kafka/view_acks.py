"""Acknowledgements from an API on another host, through a Kafka topic beside the view topic.

An API that reads the view from Kafka (``serve --view kafka://...``) has no alert log to write an
acknowledgement to. It produces it instead to ``<view topic>.acks`` (:class:`KafkaAckWriter`:
key = the alert id, value = ``{"alert_id", "by", "time_ns"}``, ``by`` the token's name), and
every process of a dataflow whose view is on Kafka follows that topic (:class:`KafkaAckInbox`).
With a data directory (a ``local_store`` sink), it records each one there through the
``record`` function it is given (the dataflow gives :func:`~dte_stream.alerts.store.acknowledge`,
so that this connector imports nothing of the alert kernel), exactly as ``dte-stream alerts ack``
on that host would (the ``acknowledged`` event in the alert log, the line its shards read; an alert this
host's log does not hold belongs to another host, and is left to it); without one, it hands them
to its shards directly. Either way the shard that holds the alert acknowledges it, and the
alert's row, with ``acked_by``, goes back to the view topic.

The inbox reads every partition from the beginning (acknowledgements sent while the dataflow
was down are applied when it starts) but skips those older than :data:`MAX_AGE_S` when it
starts: an alert id names a twin and a rule, so a stale acknowledgement would otherwise take a
later episode of the same alert.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from dte_stream.connectors.kafka.client import (
    LOG,
    ErrorLog,
    check_cluster,
    error_text,
    make_client,
    topic_partitions,
    whole_topic_config,
)
from dte_stream.errors import ConfigError, ConnectorError, StoreError
from dte_stream.spec.view import KafkaViewSpec
from dte_stream.times import NS_PER_S

__all__ = ["MAX_AGE_S", "KafkaAckInbox", "KafkaAckWriter", "MergedAcks", "acks_topic"]

#: Acknowledgements older than this when the dataflow starts are skipped (seconds).
MAX_AGE_S = 600.0
#: How long an acknowledgement of an alert this host's alert log does not hold is tried again.
RETRY_S = 30.0


class RecordAck(Protocol):
    """Records an acknowledgement in a data directory's alert log; raises ConfigError or
    StoreError when it cannot (an unknown alert id starts its message with "unknown alert")."""

    def __call__(self, data_dir: Path, alert_id: str, by: str, now_ns: int) -> object: ...


#: Parses one acks-topic value into ``{"alert_id", "by", "time_ns"}``, or None when it is not one.
ParseAck = Callable[[bytes | None], dict[str, Any] | None]


def acks_topic(spec: KafkaViewSpec) -> str:
    """The acknowledgements topic of a view topic: ``<topic>.acks``."""
    return f"{spec.topic}.acks"


class KafkaAckWriter:
    """The API's end: acknowledgements to the acks topic, each waited for (the caller answers after)."""

    def __init__(self, spec: KafkaViewSpec) -> None:
        self.spec = spec
        self.topic = acks_topic(spec)
        self._errors = ErrorLog(f"alert acknowledgements ({self.topic})")
        self._producer = make_client(Producer, spec, spec.producer_config(), self._errors)
        self._lock = threading.Lock()

    def send(self, alert_id: str, by: str, time_ns: int) -> None:
        """Produce one acknowledgement and wait for it; :class:`ConnectorError` when it is not delivered."""
        outcome: list[KafkaError | None] = []
        value = orjson.dumps({"alert_id": alert_id, "by": by, "time_ns": time_ns})
        with self._lock:
            try:
                self._producer.produce(
                    self.topic, value, alert_id.encode(), on_delivery=lambda err, _msg: outcome.append(err)
                )
            except (BufferError, KafkaException) as exc:
                raise ConnectorError(
                    f"cannot send the acknowledgement to topic {self.topic!r}: {exc}"
                ) from None
            self._producer.flush(self.spec.delivery_timeout)
        if not outcome or outcome[0] is not None:
            reason = error_text(outcome[0]) if outcome and outcome[0] is not None else "no answer in time"
            raise ConnectorError(
                f"the acknowledgement did not reach topic {self.topic!r} at Kafka "
                f"{self.spec.bootstrap_servers}: {reason}"
            )


class KafkaAckInbox:
    """A dataflow process's end: follows the acks topic; :meth:`new_for` like the file inbox.

    ``parse`` checks each value of the topic; ``record`` writes an acknowledgement to the alert
    log of ``data_dir`` (used only with a data directory).
    """

    def __init__(
        self,
        spec: KafkaViewSpec,
        parse: ParseAck,
        record: RecordAck,
        data_dir: Path | None = None,
        *,
        poll_s: float = 0.2,
    ) -> None:
        self.spec = spec
        self._parse = parse
        self._record = record
        self.data_dir = data_dir
        self.topic = acks_topic(spec)
        self.poll_s = poll_s
        self.oldest_ns = time.time_ns() - round(MAX_AGE_S * NS_PER_S)
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._seen: dict[tuple[int, str], int] = {}
        self._stop = threading.Event()
        self._errors = ErrorLog(f"alert acknowledgements ({self.topic})")
        self.skipped = 0
        self._thread = threading.Thread(target=self._run, name="dte-view-acks", daemon=True)

    @classmethod
    def open(
        cls, spec: KafkaViewSpec, parse: ParseAck, record: RecordAck, data_dir: Path | None = None
    ) -> KafkaAckInbox:
        """The inbox, once the brokers answer and the topic exists (created when the spec says how)."""
        check_cluster(spec, "alert acknowledgements", [acks_topic(spec)], {})
        inbox = cls(spec, parse, record, data_dir)
        inbox._thread.start()
        return inbox

    def new_for(self, twin_type: str, reader: object = None) -> list[dict[str, Any]]:
        """Acknowledgements ``reader`` (a shard) has not seen yet (each shard finds its own alerts)."""
        with self._lock:
            key = (id(reader), twin_type)
            start = self._seen.get(key, 0)
            self._seen[key] = len(self._pending)
            return self._pending[start:]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        config = whole_topic_config(self.spec, "dte-view-acks")  # each process reads all
        consumer = make_client(Consumer, self.spec, config, self._errors)
        try:
            partitions = self._partitions(consumer)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            waiting: list[tuple[dict[str, Any], float]] = []
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=500, timeout=self.poll_s):
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            self._errors(error)
                        continue
                    ack = self._parse(message.value())
                    if ack is None:
                        self.skipped += 1
                        LOG.warning(
                            "%s: partition %s offset %s is not an acknowledgement; skipped",
                            self.topic,
                            message.partition(),
                            message.offset(),
                        )
                    elif ack["time_ns"] >= self.oldest_ns and not self._take(ack):
                        waiting.append((ack, time.monotonic() + RETRY_S))
                if waiting:  # the alert log is written a little after the alert fires
                    waiting = self._retry(waiting)
        except KafkaException as exc:
            LOG.error("%s: cannot follow the acknowledgements: %s", self.topic, exc)
        finally:
            consumer.close()

    def _take(self, ack: dict[str, Any], first: bool = True) -> bool:
        """Hand ``ack`` on; False when this host's alert log does not hold the alert (yet)."""
        if first:
            LOG.info("%s: alert %r acknowledged by %r", self.topic, ack["alert_id"], ack["by"])
        if self.data_dir is None:
            with self._lock:
                self._pending.append(ack)
            return True
        try:  # recorded as on this host: the shards read it from the data directory
            self._record(self.data_dir, ack["alert_id"], ack["by"], ack["time_ns"])
        except (ConfigError, StoreError) as exc:
            if str(exc).startswith(("unknown alert", "no data directory")):
                return False  # not in this host's log: not yet written, or another host's alert
            LOG.info("%s: not recorded: %s", self.topic, exc)  # resolved or acknowledged already
        return True

    def _retry(self, waiting: list[tuple[dict[str, Any], float]]) -> list[tuple[dict[str, Any], float]]:
        """Try the waiting acknowledgements again; those still unknown after :data:`RETRY_S` are
        another host's (or of an alert never logged here) and are dropped."""
        now, left = time.monotonic(), []
        for ack, until in waiting:
            if self._take(ack, first=False):
                continue
            if now < until:
                left.append((ack, until))
            else:
                LOG.info(
                    "%s: alert %r is not in this host's alert log: left to others",
                    self.topic,
                    ack["alert_id"],
                )
        return left

    def _partitions(self, consumer: Consumer) -> list[int]:
        """The topic's partitions, once its metadata has them (a topic just created may not yet)."""
        while not self._stop.is_set():
            try:
                found = topic_partitions(consumer, self.topic, self.spec.startup_timeout)
                if found is not None:
                    return found
            except KafkaException as exc:
                LOG.debug("%s: no metadata yet: %s", self.topic, error_text(exc))
            self._stop.wait(1.0)
        return []


class MergedAcks:
    """Acknowledgements from several inboxes (the data directory's and the Kafka topic's)."""

    def __init__(self, *inboxes: Any) -> None:
        self.inboxes = [i for i in inboxes if i is not None]

    def new_for(self, twin_type: str, reader: object = None) -> list[dict[str, Any]]:
        return [ack for inbox in self.inboxes for ack in inbox.new_for(twin_type, reader)]
