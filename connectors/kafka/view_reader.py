"""Following the twin view topic into a local table: the API on another host reads from it.

:class:`KafkaViewReader` reads every partition of the view topic from the beginning (compaction
has left the latest record of each twin) into a :class:`~dte_stream.view.store.TwinView` of its
own (a private SQLite file), then follows the topic live. The API reads that table exactly as it
reads a dataflow's view on the same host: lists, search, one twin and Server-Sent Events work
unchanged, with the change counter of the local table.

Readiness (``/readyz``): the part ``view:<topic>`` is not ready until the reader has reached
the end offsets the partitions had when it started (the whole view as of then), and says why
(no broker, no topic yet, how far it is). A record that is not a view record
(:func:`~dte_stream.view.messages.decode`) is counted in ``dte_view_records_rejected_total``
by reason, logged the first time its kind of fault occurs, written to ``dead_letters`` when
given, and skipped; the reader goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from dte_stream.connectors.kafka.client import (
    LOG,
    ErrorLog,
    error_text,
    make_client,
    topic_partitions,
    whole_topic_config,
)
from dte_stream.errors import StoreError
from dte_stream.metrics import METRICS, reason_class
from dte_stream.readiness import READINESS, Readiness
from dte_stream.readings import DeadLetter
from dte_stream.spec.view import KafkaViewSpec
from dte_stream.view.messages import ViewRecordError, decode
from dte_stream.view.store import TwinView

__all__ = ["KafkaViewReader", "ViewApplier"]

#: Seconds between attempts while the brokers or the topic are missing.
RETRY_S = 2.0

Record = tuple[int, int, bytes | None, bytes | None]  # partition, offset, key, value


class ViewApplier:
    """Decodes view records and writes them to a :class:`TwinView` (engine- and driver-free).

    Records of one call are reduced to the latest per key (what compaction keeps), then written
    in one transaction for twins and alerts. Bad records are counted, logged once per kind of
    fault, dead-lettered and skipped.
    """

    def __init__(
        self, view: TwinView, source: str, dead_letters: Callable[[list[DeadLetter]], None] | None = None
    ) -> None:
        self.view = view
        self.source = source
        self.dead_letters = dead_letters
        self.applied = 0
        self.rejected = 0
        self._logged: set[str] = set()

    def apply(self, records: list[Record]) -> int:
        """Write ``records`` to the view; returns how many were applied."""
        latest: dict[tuple[str, str], dict[str, Any] | None] = {}
        letters: list[DeadLetter] = []
        for partition, offset, key, value in records:
            try:
                message = decode(key, value)
            except ViewRecordError as exc:
                letters.append(self._reject(str(exc), partition, offset, key, value))
                continue
            latest[(message.kind, message.key)] = message.value
        twins = [v for (kind, _), v in latest.items() if kind == "twin" and v is not None]
        gone = [k for (kind, k), v in latest.items() if kind == "twin" and v is None]
        alerts = [v for (kind, _), v in latest.items() if kind == "alert" and v is not None]
        types = [v for (kind, _), v in latest.items() if kind == "type" and v is not None]
        gone_alerts = [k for (kind, k), v in latest.items() if kind == "alert" and v is None]
        if twins or alerts:
            self.view.put(twins, None, alerts)
        if gone:
            self.view.remove(gone)
        if gone_alerts:
            self.view.remove_alerts(gone_alerts)
        if types:
            self.view.put_types(types)
        applied = len(records) - len(letters)
        self.applied += applied
        if letters and self.dead_letters is not None:
            self.dead_letters(letters)
        return applied

    def _reject(
        self, reason: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> DeadLetter:
        self.rejected += 1
        kind = reason_class(reason)
        METRICS.add_reasons("view_records_rejected", [reason])
        if kind not in self._logged:
            self._logged.add(kind)
            LOG.warning(
                "%s: partition %d offset %d is not a twin view record (%s); skipped, further ones "
                "like it are counted in dte_view_records_rejected_total",
                self.source,
                partition,
                offset,
                reason,
            )
        raw = (key or b"") + b"\t" + (value or b"")
        return DeadLetter(f"{self.source}/{partition}@{offset}", reason, raw[:65536])


class KafkaViewReader:
    """A thread that follows the view topic of ``spec`` into ``view``; :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        spec: KafkaViewSpec,
        view: TwinView,
        *,
        readiness: Readiness = READINESS,
        dead_letters: Callable[[list[DeadLetter]], None] | None = None,
        batch_size: int = 2000,
        poll_s: float = 0.1,
    ) -> None:
        self.spec = spec
        self.view = view
        self.readiness = readiness
        self.name = f"view:{spec.topic}"
        self.applier = ViewApplier(view, f"twin view topic {spec.topic}", dead_letters)
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dte-view-reader", daemon=True)
        self._errors = ErrorLog(f"twin view reader ({spec.topic})")
        readiness.expect(self.name, f"reading the twin view topic {spec.topic!r} from the start")

    def start(self) -> KafkaViewReader:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        config = whole_topic_config(self.spec, "dte-view-reader")  # each reader reads all
        try:
            consumer = make_client(Consumer, self.spec, config, self._errors)
        except Exception as exc:  # a refused setting: say it where the operator looks
            self.readiness.failed(self.name, str(exc))
            LOG.error("%s", exc)
            return
        try:
            partitions = self._partitions(consumer)
            if partitions is None:
                return
            ends = self._end_offsets(consumer, partitions)
            if ends is None:
                return
            consumer.assign([TopicPartition(self.spec.topic, p, OFFSET_BEGINNING) for p in partitions])
            self._follow(consumer, ends)
        finally:
            consumer.close()

    def _wait(self, reason: str) -> bool:
        """Report ``reason`` as not ready and wait before the next attempt; False when stopping."""
        self.readiness.failed(self.name, reason)
        return not self._stop.wait(RETRY_S)

    def _partitions(self, consumer: Consumer) -> list[int] | None:
        topic, servers = self.spec.topic, self.spec.bootstrap_servers
        while True:
            try:
                found = topic_partitions(consumer, topic, self.spec.startup_timeout)
                if found is not None:
                    return found
                reason = (
                    f"topic {topic!r} does not exist yet at Kafka {servers} "
                    "(a dataflow with view: kafka creates it)"
                )
            except KafkaException as exc:
                reason = f"no Kafka broker answers at {servers}: {error_text(exc)}"
            if not self._wait(reason):
                return None

    def _end_offsets(self, consumer: Consumer, partitions: list[int]) -> dict[int, tuple[int, int]] | None:
        while True:
            try:
                return {
                    p: consumer.get_watermark_offsets(
                        TopicPartition(self.spec.topic, p), timeout=self.spec.startup_timeout
                    )
                    for p in partitions
                }
            except KafkaException as exc:
                if not self._wait(f"cannot read the end offsets of {self.spec.topic!r}: {error_text(exc)}"):
                    return None

    def _follow(self, consumer: Consumer, ends: dict[int, tuple[int, int]]) -> None:
        """Consume in batches until stopped; report readiness once the start's end offsets are reached."""
        behind = {p: high for p, (low, high) in ends.items() if high > low}
        total = sum(high - low for low, high in ends.values())
        self._report(behind, total)
        while not self._stop.is_set():
            messages: list[Message] = consumer.consume(num_messages=self.batch_size, timeout=self.poll_s)
            records: list[Record] = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        METRICS.add("kafka_consumer_errors")
                        self._errors(error)
                    continue
                partition, offset = message.partition(), message.offset()
                records.append((partition or 0, offset or 0, message.key(), message.value()))
                if partition in behind and (offset or 0) + 1 >= behind[partition]:
                    del behind[partition]
            if records:
                self._errors.clear()
                try:
                    self.applier.apply(records)
                except StoreError as exc:  # the local table: nothing to go on with
                    self.readiness.failed(self.name, str(exc))
                    LOG.error("%s: %s", self.applier.source, exc)
                    return
                METRICS.add("view_records_in", len(records))
            if not self.caught_up.is_set():
                if behind:
                    for tp in consumer.position([TopicPartition(self.spec.topic, p) for p in behind]):
                        if tp.offset >= 0 and tp.offset >= behind[tp.partition]:
                            del behind[tp.partition]  # compaction left a gap at the end
                self._report(behind, total)

    def _report(self, behind: dict[int, int], total: int) -> None:
        if behind:
            self.readiness.failed(
                self.name,
                f"catching up with the twin view topic {self.spec.topic!r}: "
                f"{self.applier.applied} of up to {total} records read, {len(behind)} partitions to go",
            )
        elif not self.caught_up.is_set():
            self.caught_up.set()
            self.readiness.ok(self.name, f"caught up: {self.applier.applied} records as of start")
            LOG.info(
                "twin view topic %r read to its end as of start (%d records, %d rejected); following it",
                self.spec.topic,
                self.applier.applied,
                self.applier.rejected,
            )
