"""MQTT sinks: estimates as one JSON message per twin per batch, dead letters as JSON.

Topics come from :class:`~dte_stream.spec.mqtt.OutputTopic` (ids escaped, so an id can never
add a level or a wildcard). Every ``write_batch`` waits, bounded by ``publish_timeout``, until
the broker acknowledged its QoS 1 messages, so Bytewax counts a batch as written only when
the broker has it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import orjson
import paho.mqtt.client as mqtt
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from paho.mqtt.reasoncodes import ReasonCode

from dte_stream.batches import DeadLetter, EstimateBatch
from dte_stream.connectors.mqtt._client import LOG, MqttConnection, reason_text
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.spec.mqtt import MqttDeadLetterSinkSpec, MqttPublisherSpec, MqttSinkSpec, OutputTopic

__all__ = ["MqttDeadLetterSink", "MqttSink", "dead_letter_message", "estimate_messages"]

ItemT = TypeVar("ItemT")
SpecT = TypeVar("SpecT", bound=MqttPublisherSpec)

#: Messages published before waiting for their acknowledgements (paho ids are 16 bits).
_CHUNK = 20_000
#: Seconds between "still waiting" log lines while the broker does not acknowledge.
_WAIT_LOG_SECONDS = 10.0


def estimate_messages(batch: EstimateBatch, topic: OutputTopic) -> Iterator[tuple[str, bytes]]:
    """``(topic, JSON)`` messages of a batch: one per twin, its rows in batch order.

    The JSON has ``twin_id``, ``twin_type`` and ``estimates``: a list of ``{channel, time
    (RFC 3339, ns), time_ns, value, unit, estimate, std, innovation, nis}``. Numbers that are
    not finite become ``null``.

    >>> import numpy as np
    >>> b = EstimateBatch("pump", np.array(["p/1"]), np.array(["temp"]), np.array([0]),
    ...     np.array([20.5]), np.array(["C"]), np.array([20.4]), np.array([0.1]), np.array([0.1]),
    ...     np.array([np.nan]))
    >>> [(t, orjson.loads(p)["estimates"][0]["nis"]) for t, p in
    ...  estimate_messages(b, OutputTopic.parse("dte/{twin_type}/{twin_id}/estimates"))]
    [('dte/pump/p%2F1/estimates', None)]
    """
    for twin_id, document in batch.per_twin_documents():
        yield topic.render(batch.twin_type, twin_id), orjson.dumps(document)


def dead_letter_message(letter: DeadLetter) -> bytes:
    """The JSON of a dead letter (:meth:`DeadLetter.to_json_dict`)."""
    return orjson.dumps(letter.to_json_dict())


class _PublisherPartition(StatelessSinkPartition[ItemT], Generic[ItemT, SpecT]):
    """One worker's client: publishes a batch, then waits for the broker's acknowledgements.

    While the connection is down paho keeps the messages and sends them after it reconnects;
    the wait for acknowledgements is bounded by ``publish_timeout``, after which the batch
    fails with a :class:`ConnectorError` (as do messages the broker refuses, MQTT 5).
    """

    def __init__(self, spec: SpecT, client_id: str, who: str) -> None:
        self._spec = spec
        self._who = who
        self._qos = spec.qos
        self._retain = spec.retain
        self._pending: set[int] = set()  # QoS 1 message ids sent, not yet acknowledged
        self._early: set[int] = set()  # ids acknowledged before they were noted as pending
        self._lock = threading.Condition()
        self._refused = 0
        self._first_refusal: ReasonCode | None = None
        self._conn = MqttConnection(spec, client_id=client_id, who=who, clean_start=True)
        self._conn.client.on_publish = self._on_publish
        self._conn.client.max_inflight_messages_set(spec.max_inflight)
        self._conn.start()
        self._open = True

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        if not self._qos:
            return
        with self._lock:
            if mid in self._pending:
                self._pending.discard(mid)
            else:  # acknowledged before write_batch noted it as pending
                self._early.add(mid)
            if reason.is_failure:
                self._refused += 1
                self._first_refusal = self._first_refusal or reason
            if not self._pending:
                self._lock.notify_all()

    def _messages(self, items: list[ItemT]) -> Iterator[tuple[str, bytes]]:
        raise NotImplementedError

    def write_batch(self, items: list[ItemT]) -> None:
        if not self._open:
            raise ConnectorError(f"{self._who}: written to after close")
        self._conn.check()
        publish = self._conn.client.publish
        qos, retain = self._qos, self._retain
        sent = lost = 0
        for topic, payload in self._messages(items):
            # Not under self._lock: paho holds its own lock while it calls on_publish.
            info = publish(topic, payload, qos, retain)
            if qos:
                with self._lock:
                    if info.mid in self._early:
                        self._early.discard(info.mid)
                    else:
                        self._pending.add(info.mid)
            elif info.rc != mqtt.MQTT_ERR_SUCCESS:
                lost += 1
            sent += 1
            if len(self._pending) >= _CHUNK:
                self._await_acks()
        self._await_acks()
        METRICS.add("mqtt_messages_out", sent)
        if lost:
            METRICS.add("mqtt_publish_errors", lost)
            LOG.warning("%s: %d QoS 0 messages were dropped while disconnected", self._who, lost)

    def _await_acks(self) -> None:
        """Wait until every pending message is acknowledged; raise on timeout or refusal."""
        timeout = self._spec.publish_timeout
        deadline = time.monotonic() + timeout
        next_log = time.monotonic() + _WAIT_LOG_SECONDS
        with self._lock:
            while self._pending:
                now = time.monotonic()
                if now >= deadline:
                    left = len(self._pending)
                    METRICS.add("mqtt_publish_errors", left)
                    raise ConnectorError(
                        f"{self._who}: {left} messages not acknowledged by the MQTT broker "
                        f"{self._spec.url} within publish_timeout={timeout:g} s (is it reachable?)"
                    )
                if now >= next_log:
                    LOG.warning(
                        "%s: %d messages wait for the broker's acknowledgement", self._who, len(self._pending)
                    )
                    next_log = now + _WAIT_LOG_SECONDS
                self._lock.wait(min(deadline, next_log) - now)
            refused, first = self._refused, self._first_refusal
            self._refused, self._first_refusal = 0, None
        if refused and first is not None:
            METRICS.add("mqtt_publish_errors", refused)
            raise ConnectorError(
                f"{self._who}: the MQTT broker {self._spec.url} refused {refused} messages: "
                f"{reason_text(first)}"
            )

    def close(self) -> None:
        """Wait for what is unacknowledged (bounded by ``publish_timeout``), then disconnect."""
        if not self._open:
            return
        self._open = False
        try:
            self._await_acks()
        finally:
            self._conn.close()


class _EstimatePartition(_PublisherPartition[EstimateBatch, MqttSinkSpec]):
    def __init__(self, spec: MqttSinkSpec, client_id: str, who: str) -> None:
        self._topic = OutputTopic.parse(spec.topic)
        super().__init__(spec, client_id, who)

    def _messages(self, items: list[EstimateBatch]) -> Iterator[tuple[str, bytes]]:
        for item in items:
            if not isinstance(item, EstimateBatch):
                raise ConnectorError(f"{self._who}: items must be EstimateBatch, got {type(item).__name__}")
            yield from estimate_messages(item, self._topic)


class _DeadLetterPartition(_PublisherPartition[DeadLetter, MqttDeadLetterSinkSpec]):
    def _messages(self, items: list[DeadLetter]) -> Iterator[tuple[str, bytes]]:
        topic = self._spec.topic
        for item in items:
            if not isinstance(item, DeadLetter):
                raise ConnectorError(f"{self._who}: items must be DeadLetter, got {type(item).__name__}")
            yield topic, dead_letter_message(item)


def _client_id(spec: MqttPublisherSpec, name: str, flow_name: str | None, worker_index: int) -> str:
    """``{client_id}-{worker}``; by default ``dte-{flow}-{name}-{worker}-{random}``.

    A sink needs no session, so the default adds a random part: two runs of one dataflow
    (or a dataflow and its source of the same name) never take each other's connection.
    """
    if spec.client_id:
        return f"{spec.client_id}-{worker_index}"
    return "-".join(
        ["dte", *([flow_name] if flow_name else []), name, str(worker_index), secrets.token_hex(3)]
    )


class MqttSink(DynamicSink[EstimateBatch]):
    """Estimates to MQTT: one JSON message per twin per batch, topic from ``spec.topic``.

    One client per worker (clean session). Each ``write_batch`` returns once the broker
    acknowledged its messages (QoS 1), so with Bytewax recovery delivery is at-least-once:
    a resumed dataflow publishes the estimates of replayed epochs again. A twin's messages
    keep their order. ``retain`` makes the broker keep the latest estimate per topic.

    >>> from dte_stream.spec.mqtt import MqttSinkSpec
    >>> sink = MqttSink(MqttSinkSpec(kind="mqtt", url="mqtt://127.0.0.1:1883"))
    >>> sink.spec.topic
    'dte/{twin_type}/{twin_id}/estimates'
    """

    def __init__(self, spec: MqttSinkSpec, *, flow_name: str | None = None) -> None:
        self.spec = spec
        self.flow_name = flow_name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _EstimatePartition:
        """Connect the client of one worker; a broker that refuses is a ConnectorError."""
        client_id = _client_id(self.spec, self.spec.name, self.flow_name, worker_index)
        return _EstimatePartition(self.spec, client_id, f"sink {self.spec.name} (client {client_id})")


class MqttDeadLetterSink(DynamicSink[DeadLetter]):
    """Dead letters to MQTT: the JSON of :meth:`DeadLetter.to_json_dict` on ``spec.topic``.

    Same delivery as :class:`MqttSink`: acknowledged before ``write_batch`` returns.
    """

    def __init__(self, spec: MqttDeadLetterSinkSpec, *, flow_name: str | None = None) -> None:
        self.spec = spec
        self.flow_name = flow_name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        """Connect the client of one worker."""
        client_id = _client_id(self.spec, self.spec.name, self.flow_name, worker_index)
        return _DeadLetterPartition(self.spec, client_id, f"dead letters to MQTT (client {client_id})")
