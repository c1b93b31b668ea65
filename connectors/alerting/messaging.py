"""Alert events to message brokers: an MQTT topic (paho-mqtt) and a Kafka topic (confluent-kafka).

Both send the event's JSON (:meth:`AlertEvent.to_json_dict`). The connection is opened
lazily, in the dispatcher's thread, on the first event, so a broker that is down never
delays the dataflow's start; a failed connection is an attempt that failed and is retried
with the notifier's backoff.

* MQTT (:class:`MqttNotifier`): one client (clean session) from the MQTT connector's
  :class:`~dte_stream.connectors.mqtt._client.MqttConnection`, which reconnects on its own.
  An attempt publishes only while connected and, with QoS 1, returns once the broker
  acknowledged (bounded by ``publish_timeout``).
* Kafka (:class:`KafkaNotifier`): one producer, key = the alert id (one alert's events stay
  in one partition, in order); an attempt returns once the delivery callback reported
  success, bounded by ``delivery_timeout``.

An attempt that timed out may still arrive later, so a retry can deliver an event twice:
receivers drop repeats by ``(alert_id, sequence)``.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

import orjson

from dte_stream.batches import AlertEvent
from dte_stream.connectors.alerting.errors import DeliveryError
from dte_stream.errors import ConfigError, ConnectorError
from dte_stream.spec.mqtt import OutputTopic, escape_level
from dte_stream.spec.notify import MQTT_TOPIC_FIELDS, KafkaNotifierSpec, MqttNotifierSpec

__all__ = ["KafkaNotifier", "MqttNotifier", "alert_record", "alert_topic", "event_json"]


def event_json(event: AlertEvent) -> bytes:
    """The MQTT message and Kafka record value: the event's JSON."""
    return orjson.dumps(event.to_json_dict())


def alert_topic(template: str, event: AlertEvent) -> str:
    """The MQTT topic of ``event`` from a topic template; values escaped (see ``escape_level``).

    >>> e = AlertEvent("p/1/hot", "p/1", "pump", "hot", "firing", "critical", 0, 0)
    >>> alert_topic("dte/alerts/{twin_id}/{rule}/{state}", e)
    'dte/alerts/p%2F1/hot/firing'
    """
    parts = OutputTopic.parse(template, allowed=MQTT_TOPIC_FIELDS).parts
    values = {
        "twin_id": event.twin_id,
        "twin_type": event.twin_type,
        "rule": event.rule,
        "state": event.state,
        "severity": event.severity,
    }
    topic = "".join(p if i % 2 == 0 else escape_level(values[p[1:-1]]) for i, p in enumerate(parts))
    return "%24" + topic[1:] if topic.startswith("$") else topic


def alert_record(event: AlertEvent) -> tuple[bytes, bytes]:
    """The Kafka ``(key, value)`` of ``event``: the alert id (UTF-8) and the event's JSON.

    >>> alert_record(AlertEvent("p-1/hot", "p-1", "pump", "hot", "firing", "critical", 0, 0))[0]
    b'p-1/hot'
    """
    return event.alert_id.encode(), event_json(event)


class MqttNotifier:
    """Publishes each event's JSON on the topic rendered from ``spec.topic``."""

    refresh_interval: float | None = None

    def __init__(self, spec: MqttNotifierSpec) -> None:
        self.spec = spec
        self.who = f"notifier {spec.name}"
        self._conn: Any = None  # MqttConnection once connected (paho is imported lazily)
        self._lock = threading.Lock()
        self._refused: dict[int, str] = {}  # message id -> the broker's reason (MQTT 5)

    def _connection(self) -> Any:
        if self._conn is not None and self._conn.running:
            return self._conn
        from dte_stream.connectors.mqtt._client import MqttConnection

        client_id = (
            f"{self.spec.client_id}-alerts"
            if self.spec.client_id
            else f"dte-alerts-{self.spec.name}-{secrets.token_hex(3)}"
        )
        conn = MqttConnection(self.spec, client_id=client_id, who=self.who, clean_start=True)
        conn.client.on_publish = self._on_publish
        try:
            conn.start()  # closes itself when it fails
        except (ConnectorError, ConfigError) as exc:
            raise DeliveryError(str(exc), retryable=not isinstance(exc, ConfigError)) from None
        self._conn = conn
        return conn

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            from dte_stream.connectors.mqtt._client import reason_text

            with self._lock:
                self._refused[mid] = reason_text(reason)

    def deliver(self, event: AlertEvent) -> None:
        conn = self._connection()
        if conn.fatal is not None:  # e.g. another client took the client id: start afresh
            reason = conn.fatal
            self.close()
            raise DeliveryError(f"{self.who}: MQTT broker {self.spec.url}: {reason}")
        if not conn.connected:
            raise DeliveryError(
                f"{self.who}: not connected to the MQTT broker {self.spec.url} (reconnecting)"
            )
        info = conn.client.publish(
            alert_topic(self.spec.topic, event), event_json(event), self.spec.qos, self.spec.retain
        )
        if info.rc != 0:
            raise DeliveryError(f"{self.who}: the MQTT client did not send the message (rc={info.rc})")
        if self.spec.qos:
            try:
                info.wait_for_publish(self.spec.publish_timeout)  # returns None, not a flag
            except (RuntimeError, ValueError) as exc:
                raise DeliveryError(f"{self.who}: {exc}") from None
            with self._lock:
                refused = self._refused.pop(info.mid, None)
            if not info.is_published():
                raise DeliveryError(
                    f"{self.who}: no acknowledgement from the MQTT broker {self.spec.url} within "
                    f"publish_timeout={self.spec.publish_timeout:g} s"
                )
            if refused:
                raise DeliveryError(f"{self.who}: the MQTT broker {self.spec.url} refused it: {refused}")

    def refresh(self) -> None:
        """Nothing to resend (use ``retain`` to keep the latest state per topic)."""

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class KafkaNotifier:
    """Produces each event's JSON to ``spec.topic`` keyed by its alert id."""

    refresh_interval: float | None = None

    def __init__(self, spec: KafkaNotifierSpec) -> None:
        self.spec = spec
        self.who = f"notifier {spec.name}"
        self._producer: Any = None
        self._errors: Any = None
        self._outcome: list[Any] = []

    def _make_producer(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            from dte_stream.connectors.kafka.client import ErrorLog, make_client

            self._errors = ErrorLog(self.who)
            try:
                self._producer = make_client(Producer, self.spec, self.spec.producer_config(), self._errors)
            except ConfigError as exc:
                raise DeliveryError(str(exc), retryable=False) from None
        return self._producer

    def _on_delivery(self, error: Any, _message: Any) -> None:
        self._outcome.append(error)

    def deliver(self, event: AlertEvent) -> None:
        from confluent_kafka import KafkaException

        from dte_stream.connectors.kafka.client import error_text

        producer = self._make_producer()
        key, value = alert_record(event)
        self._outcome = []
        where = f"topic {self.spec.topic!r} at Kafka {self.spec.bootstrap_servers}"
        try:
            producer.produce(self.spec.topic, value, key, on_delivery=self._on_delivery)
        except BufferError:
            producer.poll(0.1)
            raise DeliveryError(f"{self.who}: the producer's queue is full ({where})") from None
        except KafkaException as exc:
            raise DeliveryError(f"{self.who}: cannot send to {where}: {error_text(exc)}") from None
        left = producer.flush(self.spec.delivery_timeout + 1.0)
        if left or not self._outcome:
            raise DeliveryError(
                f"{self.who}: not acknowledged by {where} within delivery_timeout="
                f"{self.spec.delivery_timeout:g} s (is it reachable?)"
            )
        error = self._outcome[0]
        if error is not None:
            raise DeliveryError(f"{self.who}: not delivered to {where}: {error_text(error)}")
        self._errors.clear()

    def refresh(self) -> None:
        """Nothing to resend."""

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(self.spec.delivery_timeout)
