"""MQTT in and out (paho-mqtt): :class:`MqttSource`, :class:`MqttSink`, :class:`MqttDeadLetterSink`.

The source subscribes with persistent sessions and QoS 1, maps topic levels to twin ids and
channels through templates, and emits :class:`~dte_stream.batches.RawBatch` items (refused
messages as dead letters in ``RawBatch.errors``); the sinks publish estimates and dead letters
as JSON. Settings: :mod:`dte_stream.spec.mqtt`; guide: docs/connectors/mqtt.md.
"""

from __future__ import annotations

from dte_stream.connectors.mqtt._routing import MessageBatcher, Route, TopicRouter
from dte_stream.connectors.mqtt.sink import (
    MqttDeadLetterSink,
    MqttSink,
    dead_letter_message,
    estimate_messages,
)
from dte_stream.connectors.mqtt.source import MqttSource

__all__ = [
    "MessageBatcher",
    "MqttDeadLetterSink",
    "MqttSink",
    "MqttSource",
    "Route",
    "TopicRouter",
    "dead_letter_message",
    "estimate_messages",
]
