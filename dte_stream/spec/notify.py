r"""Spec models of the alert integrations (notifiers): where alert events are delivered.

A dataflow lists any number of notifiers; each is one :data:`NotifierSpec`, chosen by
``kind``:

* ``alertmanager``: Prometheus Alertmanager's v2 API (``POST {url}/api/v2/alerts``);
* ``webhook``: a JSON body per event, optionally signed with HMAC-SHA256 (see
  :class:`WebhookNotifierSpec` for the exact signed text);
* ``slack``: a Slack-compatible incoming webhook (also Mattermost, Rocket.Chat);
* ``mqtt``: one JSON message per event on a topic template;
* ``kafka``: one JSON record per event, keyed by the alert id.

Every notifier has a ``name`` (metrics and logs), ``retries`` (attempts and backoff),
``states`` (which alert states it receives) and ``queue_size`` (events waiting while it is
slow or down; more are dropped and counted). Secrets (the webhook ``secret`` and header
values, the Slack ``url`` with its token, MQTT and Kafka passwords) are ``SecretStr``: they
print as ``**********`` and never appear in validation errors.

>>> spec = NOTIFIERS.validate_python([
...     {"kind": "webhook", "name": "ops", "url": "https://hooks.example.com/dte", "secret": "s3cret"},
...     {"kind": "alertmanager", "url": "http://127.0.0.1:9093", "labels": {"env": "prod"}},
... ])
>>> [(s.kind, s.name) for s in spec], spec[0].secret
([('webhook', 'ops'), ('alertmanager', 'alertmanager')], SecretStr('**********'))
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    field_validator,
    model_validator,
)

from dte_stream.spec.base import Identifier, PositiveSeconds, SpecModel
from dte_stream.spec.kafka import KafkaProducerSpec, Topic
from dte_stream.spec.mqtt import MqttPublisherSpec, OutputTopic

__all__ = [
    "ALERT_STATES",
    "MQTT_TOPIC_FIELDS",
    "NOTIFIERS",
    "AlertmanagerNotifierSpec",
    "KafkaNotifierSpec",
    "MqttNotifierSpec",
    "NotifierList",
    "NotifierRetrySpec",
    "NotifierSpec",
    "SlackNotifierSpec",
    "WebhookNotifierSpec",
    "http_target",
]

#: Every state an alert event can have (``AlertEvent.state``).
ALERT_STATES: tuple[str, ...] = ("firing", "resolved", "acknowledged")
#: Placeholders an MQTT notifier's topic may use (values escaped, see ``escape_level``).
MQTT_TOPIC_FIELDS = ("twin_id", "twin_type", "rule", "state", "severity")

StateName = Literal["firing", "resolved", "acknowledged"]
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Headers the webhook notifier sets itself.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "x-dte-signature", "x-dte-timestamp", "connection"}
)


def http_target(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what messages show (no path, query or token).

    >>> http_target("https://hooks.slack.com/services/T0/B0/XXXX")
    'https://hooks.slack.com'
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


def _check_http_url(value: str, what: str = "url") -> str:
    """An ``http://`` or ``https://`` URL with a host and no credentials; else ValueError."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        _ = parts.port
    except ValueError:
        raise ValueError(f"{what} is not a valid http(s) URL (bad port?)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} may not hold credentials; use headers (webhook) instead")
    if _CONTROL.search(text) or " " in text:
        raise ValueError(f"{what} contains spaces or control characters")
    return text


class NotifierRetrySpec(SpecModel):
    """How one event is retried after a failed delivery (no answer, 408, 429, 5xx, broker down).

    The wait before attempt *n* + 1 is ``backoff * 2**(n-1)`` capped at ``max_backoff``, times
    a random jitter of 50-100 %; an HTTP ``Retry-After`` replaces it. ``max_attempts`` unset
    retries until delivered (or until the dispatcher closes); refusals that retrying cannot fix
    (other 4xx answers) are never retried.
    """

    max_attempts: int | None = Field(
        None, ge=1, description="attempts per event before it is dropped; unset = until delivered"
    )
    backoff: PositiveSeconds = Field(0.5, description="wait after the first failed attempt")
    max_backoff: PositiveSeconds = Field(60.0, description="longest wait between two attempts")

    @model_validator(mode="after")
    def _check_backoff(self) -> NotifierRetrySpec:
        if self.max_backoff < self.backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff} s) must be at least backoff ({self.backoff} s)"
            )
        return self


class _NotifierBase(SpecModel):
    """What every notifier has: a name, retries, the states it receives, its queue."""

    #: The states a kind receives when ``states`` is not given.
    DEFAULT_STATES: ClassVar[tuple[str, ...]] = ALERT_STATES

    name: Identifier
    retries: NotifierRetrySpec = Field(default_factory=NotifierRetrySpec)
    states: list[StateName] | None = Field(
        None, min_length=1, description="alert states to deliver; unset = the kind's default"
    )
    queue_size: int = Field(
        10_000, ge=1, le=10_000_000, description="events waiting for delivery; more are dropped and counted"
    )

    @field_validator("states")
    @classmethod
    def _unique_states(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"states must be unique, got {value}")
        return value

    def wanted_states(self) -> frozenset[str]:
        """The states this notifier delivers."""
        return frozenset(self.states if self.states is not None else self.DEFAULT_STATES)


class AlertmanagerNotifierSpec(_NotifierBase):
    """Prometheus Alertmanager: ``POST {url}/api/v2/alerts``, one alert per event.

    Labels are the event's :meth:`~dte_stream.batches.AlertEvent.all_labels` over the
    spec's extra ``labels``; annotations carry ``message``, ``value``, ``alert_id`` (and
    ``acked_by``). A firing alert is sent with ``endsAt`` = now + ``firing_ttl`` and sent again
    every ``resend_interval`` while it fires, as Prometheus does: if dte-stream stops, the
    alert resolves itself in Alertmanager after ``firing_ttl``. A resolved event sends
    ``endsAt`` = the time it ended, which resolves it at once.
    """

    DEFAULT_STATES: ClassVar[tuple[str, ...]] = ("firing", "resolved")

    kind: Literal["alertmanager"]
    name: Identifier = "alertmanager"
    url: str = Field(description="Alertmanager's base URL, e.g. http://127.0.0.1:9093")
    timeout: PositiveSeconds = Field(10.0, description="per request")
    labels: dict[str, str] = Field(
        default_factory=dict, description="extra labels; the event's labels win on a clash"
    )
    resend_interval: PositiveSeconds = Field(60.0, description="how often firing alerts are sent again")
    firing_ttl: PositiveSeconds = Field(
        300.0, description="endsAt of a firing alert is now + this (renewed by every resend)"
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _check_http_url(value).rstrip("/")

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"label name {key[:60]!r}: Alertmanager wants [A-Za-z_][A-Za-z0-9_]*")
        return value

    @model_validator(mode="after")
    def _check_ttl(self) -> AlertmanagerNotifierSpec:
        if self.firing_ttl < 2 * self.resend_interval:
            raise ValueError(
                f"firing_ttl ({self.firing_ttl:g} s) must be at least twice resend_interval "
                f"({self.resend_interval:g} s), or firing alerts would resolve between two resends"
            )
        return self


class WebhookNotifierSpec(_NotifierBase):
    """A generic webhook: ``POST url`` with the event's JSON (``AlertEvent.to_json_dict``).

    With a ``secret``, every request carries ``X-DTE-Timestamp: <unix seconds>`` and
    ``X-DTE-Signature: sha256=<hex>``, the lowercase hex HMAC-SHA256, keyed by the secret's
    UTF-8 bytes, of the exact bytes ``<timestamp> "." <body>`` (the timestamp header's ASCII
    digits, a dot, the raw request body). Receivers recompute it, compare in constant time and
    refuse timestamps older than a few minutes (replays); each retry is signed anew.
    ``headers`` (e.g. ``Authorization``) are secrets too: their values never print.
    """

    kind: Literal["webhook"]
    name: Identifier = "webhook"
    url: str = Field(description="http(s) URL that receives the POST")
    secret: SecretStr | None = Field(None, description="HMAC-SHA256 key: ${DTE_WEBHOOK_SECRET}")
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="extra request headers")
    timeout: PositiveSeconds = Field(10.0, description="per request")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("secret is empty; leave it out for unsigned requests")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key, item in value.items():
            if not _HEADER_NAME.match(key):
                raise ValueError(f"{key[:60]!r} is not an HTTP header name")
            if key.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {key!r} is set by the notifier")
            if _CONTROL.search(item.get_secret_value()):
                raise ValueError(f"the value of header {key!r} contains control characters")
        return value


class SlackNotifierSpec(_NotifierBase):
    """A Slack-compatible incoming webhook: text plus an attachment coloured by severity.

    The ``url`` holds the webhook's token, so it is a secret: messages show only its host.
    """

    DEFAULT_STATES: ClassVar[tuple[str, ...]] = ("firing", "resolved")

    kind: Literal["slack"]
    name: Identifier = "slack"
    url: SecretStr = Field(description="the incoming-webhook URL: ${DTE_SLACK_WEBHOOK_URL}")
    timeout: PositiveSeconds = Field(10.0, description="per request")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        return SecretStr(_check_http_url(value.get_secret_value()))


class MqttNotifierSpec(_NotifierBase, MqttPublisherSpec):
    """One JSON message per event (``AlertEvent.to_json_dict``) on ``topic``.

    ``topic`` may use ``{twin_id}``, ``{twin_type}``, ``{rule}``, ``{state}`` and ``{severity}``;
    values are escaped so they never add a level or a wildcard. Connection settings (url, TLS,
    credentials, QoS, retain) are those of the MQTT sinks (:class:`MqttPublisherSpec`).
    """

    kind: Literal["mqtt"]
    name: Identifier = "mqtt"
    topic: str = Field("dte/alerts/{twin_id}/{rule}", description="topic template")

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        OutputTopic.parse(value, allowed=MQTT_TOPIC_FIELDS)
        return value


class KafkaNotifierSpec(_NotifierBase, KafkaProducerSpec):
    """One JSON record per event on ``topic``, key = the alert id (so an alert keeps its order).

    Connection settings are those of the Kafka sinks (:class:`KafkaProducerSpec`).
    """

    kind: Literal["kafka"]
    name: Identifier = "kafka"
    topic: Topic = "dte.alerts"
    delivery_timeout: PositiveSeconds = Field(
        10.0, description="how long one attempt waits for the brokers before it is retried"
    )


NotifierSpec = Annotated[
    AlertmanagerNotifierSpec | WebhookNotifierSpec | SlackNotifierSpec | MqttNotifierSpec | KafkaNotifierSpec,
    Field(discriminator="kind"),
]


def _unique_names(value: list[NotifierSpec]) -> list[NotifierSpec]:
    names = [spec.name for spec in value]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"notifier names must be unique; give each its own name: {', '.join(twice)}")
    return value


#: A dataflow's notifiers: a list with unique names.
NotifierList = Annotated[list[NotifierSpec], AfterValidator(_unique_names)]
#: Validates a list of notifier specs (for the loader and tests).
#: Errors never echo the input (it may hold secrets).
NOTIFIERS: TypeAdapter[list[NotifierSpec]] = TypeAdapter(
    NotifierList, config=ConfigDict(hide_input_in_errors=True)
)
