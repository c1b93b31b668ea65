"""The twin view on a compacted Kafka topic: the writer every dataflow process uses.

:class:`KafkaViewWriter` is a :class:`~dte_stream.view.publisher.ViewWriter`: the shards'
publishers hand it the records of the twins that changed, at the pace they write the SQLite
view, and it produces them (key = twin id, value = the record; :mod:`dte_stream.view.messages`).
Producing does not wait for the brokers: the view is a cache of state, so a broker that is slow
or down must not slow the dataflow. Instead

- each record that is not delivered (librdkafka gave up after ``delivery_timeout``, or its
  local queue was full) is counted in ``dte_view_delivery_errors_total``, the outage is logged
  once (and its end once), and the twin is published again by its shard with its state of
  then (:meth:`take_undelivered`); alert rows and twin types are sent again as they were;
- the view's writer process waits a little for the deliveries of each write (:meth:`flush`),
  and for all of them at exit (:meth:`close`).

Alerts leave the topic too: a resolved alert's row is followed, :attr:`KafkaViewWriter.resolved_keep_s`
later (at the next write after that, or at exit), by a tombstone for its key, so readers
following live see it resolve and readers that start later never see it; the alerts of an
evicted twin get tombstones with the twin's.

The reader (``dte-stream serve --view kafka://...``) is :mod:`dte_stream.connectors.kafka.view_reader`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from dte_stream.connectors.kafka.client import LOG, ErrorLog, check_cluster, error_text, make_client
from dte_stream.metrics import METRICS
from dte_stream.spec.view import KafkaViewSpec
from dte_stream.view.messages import (
    ALERT_PREFIX,
    TYPE_PREFIX,
    alert_tombstone,
    encode_alert,
    encode_twin,
    encode_type,
    tombstone,
)

__all__ = ["VIEW_TOPIC_CONFIG", "KafkaViewWriter"]

#: The configuration a view topic is created with: compaction keeps the latest record per twin.
VIEW_TOPIC_CONFIG = {"cleanup.policy": "compact"}


class KafkaViewWriter:
    """Twin records, alert rows and twin types to the view topic of ``spec``; thread-safe."""

    #: How long a resolved alert stays on the topic before its tombstone (seconds).
    resolved_keep_s = 60.0

    def __init__(self, spec: KafkaViewSpec, who: str = "twin view") -> None:
        self.spec = spec
        self.who = who
        self._errors = ErrorLog(who)
        self._producer: Producer | None = make_client(Producer, spec, spec.producer_config(), self._errors)
        self._lock = threading.Lock()
        self._undelivered: set[str] = set()  # twins to publish again
        self._resend: dict[bytes, bytes | None] = {}  # alert rows, types and tombstones to send again
        self._failing = False
        self._alerts_of: dict[str, set[str]] = {}  # twin id -> its alert ids on the topic
        self._twin_of: dict[str, str] = {}
        self._resolved: dict[str, float] = {}  # alert id -> when its tombstone is due (monotonic)

    @classmethod
    def open(cls, spec: KafkaViewSpec) -> KafkaViewWriter:
        """A writer, once the brokers answer and the topic exists (created when the spec says how)."""
        check_cluster(spec, "twin view", [spec.topic], VIEW_TOPIC_CONFIG)
        _warn_unless_compacted(spec)
        return cls(spec)

    # -- the ViewWriter interface ------------------------------------------------------------

    def put(
        self, records: Sequence[dict[str, Any]], now_ns: int | None, alerts: Iterable[dict[str, Any]] = ()
    ) -> int:
        """Produce twin records (``updated_ns`` = ``now_ns``) and alert rows; returns 0 (no seq)."""
        out: list[tuple[bytes, bytes | None]] = []
        for record in records:
            if now_ns is not None:
                record["updated_ns"] = now_ns
            out.append(encode_twin(record))
        now = time.monotonic()
        for row in alerts:
            out.append(encode_alert(row))
            alert_id, twin_id = str(row["alert_id"]), str(row["twin_id"])
            self._alerts_of.setdefault(twin_id, set()).add(alert_id)
            self._twin_of[alert_id] = twin_id
            if row.get("state") == "resolved":
                self._resolved.setdefault(alert_id, now + self.resolved_keep_s)
            else:
                self._resolved.pop(alert_id, None)  # firing again
        out.extend(self._due_tombstones(now))
        self._send(out)
        return 0

    def remove(self, twin_ids: Sequence[str]) -> None:
        """Tombstones for evicted twins and their alerts: compaction drops them from the topic."""
        out: list[tuple[bytes, bytes | None]] = [tombstone(t) for t in twin_ids]
        for twin in twin_ids:
            for alert_id in sorted(self._alerts_of.pop(twin, set())):
                self._resolved.pop(alert_id, None)
                self._twin_of.pop(alert_id, None)
                out.append(alert_tombstone(alert_id))
        self._send(out)

    def _due_tombstones(self, now: float) -> list[tuple[bytes, bytes | None]]:
        """Tombstones of the resolved alerts whose time on the topic is over (all of them at ``inf``)."""
        due = [a for a, at in self._resolved.items() if at <= now]
        for alert_id in due:
            del self._resolved[alert_id]
            self._alerts_of.get(self._twin_of.pop(alert_id, ""), set()).discard(alert_id)
        return [alert_tombstone(a) for a in sorted(due)]

    def put_types(self, specs: Sequence[dict[str, Any]]) -> None:
        """The twin types (what-if on another host rebuilds the models from them)."""
        self._send([encode_type(s) for s in specs])

    # -- the AsyncViewWriter interface ----------------------------------------------------------

    def take_undelivered(self, twin_ids: Iterable[str]) -> list[str]:
        """The twins among ``twin_ids`` whose last record was not delivered (forgotten here)."""
        with self._lock:
            if not self._undelivered:
                return []
            mine = self._undelivered.intersection(twin_ids)
            self._undelivered -= mine
        return sorted(str(t) for t in mine)  # numpy ids (np.str_) as str

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the deliveries; how many records are still on the way."""
        producer = self._producer
        return 0 if producer is None else int(producer.flush(timeout))

    def close(self) -> None:
        """Deliver what is left (at most ``delivery_timeout``); say how much was not."""
        if self._resolved:
            self._send(self._due_tombstones(math.inf))
        producer, self._producer = self._producer, None
        if producer is None:
            return
        self._send_again(producer)
        left = int(producer.flush(self.spec.delivery_timeout))
        if left:
            METRICS.add("view_delivery_errors", left)
            LOG.warning(
                "%s: %d records were not delivered to topic %r at Kafka %s before the process ended",
                self.who,
                left,
                self.spec.topic,
                self.spec.bootstrap_servers,
            )

    # -- producing --------------------------------------------------------------------------------

    def _send(self, records: list[tuple[bytes, bytes | None]]) -> None:
        producer = self._producer
        if producer is None:
            return
        self._send_again(producer)
        sent = 0
        for key, value in records:
            sent += self._produce(producer, key, value)
        producer.poll(0)  # serve delivery callbacks
        if sent:
            METRICS.add("view_records_out", sent)

    def _send_again(self, producer: Producer) -> None:
        with self._lock:
            again, self._resend = self._resend, {}
        for key, value in again.items():
            self._produce(producer, key, value)

    def _produce(self, producer: Producer, key: bytes, value: bytes | None) -> int:
        try:
            producer.produce(self.spec.topic, value, key, on_delivery=self._on_delivery)
            return 1
        except BufferError:  # the local queue is full (brokers away): later, never blocking
            self._failed(key, value, "the producer's queue is full")
        except KafkaException as exc:
            self._failed(key, value, error_text(exc))
        return 0

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            if self._failing:
                with self._lock:
                    recovered, self._failing = self._failing, False
                if recovered:
                    LOG.info("%s: records reach topic %r again", self.who, self.spec.topic)
                    self._errors.clear()
            return
        self._failed(message.key() or b"", message.value(), error_text(error))

    def _failed(self, key: bytes, value: bytes | None, reason: str) -> None:
        METRICS.add("view_delivery_errors")
        with self._lock:
            first, self._failing = not self._failing, True
            if key.startswith((ALERT_PREFIX, TYPE_PREFIX)) or value is None:
                self._resend.setdefault(key, value)  # a newer record of the key wins
            else:
                self._undelivered.add(key.decode(errors="replace"))
        if first:
            LOG.warning(
                "%s: a record was not delivered to topic %r at Kafka %s (%s); the twin view there "
                "falls behind, records are sent again and failures counted in "
                "dte_view_delivery_errors_total (logged once until delivery works again)",
                self.who,
                self.spec.topic,
                self.spec.bootstrap_servers,
                reason,
            )


def _warn_unless_compacted(spec: KafkaViewSpec) -> None:
    """Log when the existing topic is not compacted: it would grow without bound and lose twins."""
    admin = make_client(AdminClient, spec, spec.client_config(), ErrorLog("twin view", quiet=True))
    resource = ConfigResource("topic", spec.topic)
    try:
        configs: Any = admin.describe_configs([resource], request_timeout=spec.startup_timeout)
        entries = configs[resource].result(spec.startup_timeout)
    except (KafkaException, KeyError) as exc:
        LOG.info("twin view: cannot read the configuration of topic %r (%s)", spec.topic, error_text(exc))
        return
    policy = entries.get("cleanup.policy")
    if policy is not None and "compact" not in str(policy.value):
        LOG.warning(
            "twin view: topic %r has cleanup.policy=%s, not compact: old twin records are deleted "
            "by time instead of kept per twin, so readers may miss twins (kafka-configs.sh "
            "--alter --entity-type topics --entity-name %s --add-config cleanup.policy=compact)",
            spec.topic,
            policy.value,
            spec.topic,
        )
