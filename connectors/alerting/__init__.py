"""Alert integrations: alert events to Alertmanager, webhooks, Slack, MQTT and Kafka.

:class:`AlertDispatcher` takes the notifier specs (:mod:`dte_stream.spec.notify`) and
delivers every :class:`~dte_stream.batches.AlertEvent` handed to ``send`` to each
notifier in the background, with retries; a notifier's failures are logged and counted,
never raised into the dataflow. The payload builders are public so that receivers and tests
can see exactly what is sent. Guide: docs/alerting.md.
"""

from __future__ import annotations

from dte_stream.connectors.alerting.alertmanager import AlertmanagerNotifier, alertmanager_alert
from dte_stream.connectors.alerting.dispatcher import (
    AlertDispatcher,
    Notifier,
    backoff_delay,
    make_notifier,
    metric_name,
)
from dte_stream.connectors.alerting.errors import DeliveryError
from dte_stream.connectors.alerting.messaging import KafkaNotifier, MqttNotifier, alert_record, alert_topic
from dte_stream.connectors.alerting.slack import SlackNotifier, slack_payload
from dte_stream.connectors.alerting.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookNotifier,
    signature,
    verify_signature,
    webhook_body,
)

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "AlertDispatcher",
    "AlertmanagerNotifier",
    "DeliveryError",
    "KafkaNotifier",
    "MqttNotifier",
    "Notifier",
    "SlackNotifier",
    "WebhookNotifier",
    "alert_record",
    "alert_topic",
    "alertmanager_alert",
    "backoff_delay",
    "make_notifier",
    "metric_name",
    "signature",
    "slack_payload",
    "verify_signature",
    "webhook_body",
]
