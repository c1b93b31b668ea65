"""Spec models of the MQTT connector: the source, the estimates sink, the dead-letter sink.

Every MQTT spec shares :class:`MqttConnectionSpec`: the broker ``url`` (``mqtt://host:port`` or
``mqtts://host:port``), the client id, the protocol (``"5"`` or ``"3.1.1"``), user name and
password, TLS files and the keepalive/reconnect timings. The password is a ``SecretStr``: it
prints as ``**********`` in reprs, logs and validation errors; write it in a spec as
``${MQTT_PASSWORD}`` so it never sits in a file.

Topics (subscription filters, source templates, output topics) are checked when a spec is
loaded, by :mod:`dte_stream.spec.mqtt_topics`; their classes are re-exported here.

>>> spec = MqttSourceSpec(kind="mqtt", url="mqtt://127.0.0.1:1883", password="hunter2",
...     username="dte", subscriptions=[{"topic": "plant/+/pump/#",
...                                     "template": "plant/{site}/pump/{twin}/{channel}"}])
>>> spec.password
SecretStr('**********')
>>> spec.subscriptions[0].parsed_template().match("plant/north/pump/p-1/temp")
('p-1', 'temp')
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from dte_stream.codecs.base import MAX_PAYLOAD_BYTES
from dte_stream.spec.base import Identifier, PositiveSeconds, Seconds, SpecModel
from dte_stream.spec.mqtt_topics import (
    CONTROL_CHARACTERS,
    OutputTopic,
    TopicFilter,
    TopicTemplate,
    escape_level,
)

__all__ = [
    "SESSION_NEVER_EXPIRES",
    "MqttConnectionSpec",
    "MqttDeadLetterSinkSpec",
    "MqttPublisherSpec",
    "MqttSinkSpec",
    "MqttSourceSpec",
    "MqttSpoolSpec",
    "MqttSubscriptionSpec",
    "MqttTlsSpec",
    "OutputTopic",
    "TopicFilter",
    "TopicTemplate",
    "escape_level",
]

#: ``session_expiry`` value (seconds) that MQTT 5 reads as "never expires".
SESSION_NEVER_EXPIRES = 0xFFFFFFFF
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")


def _protocol_text(value: object) -> object:
    """Accept YAML numbers (``protocol: 5``) and common spellings of the two versions."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        return {"5.0": "5", "v5": "5", "311": "3.1.1", "v3.1.1": "3.1.1"}.get(value.strip(), value.strip())
    return value


def _session_seconds(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() == "never":
        return float(SESSION_NEVER_EXPIRES)
    return value


Protocol = Annotated[Literal["3.1.1", "5"], BeforeValidator(_protocol_text)]
SessionExpiry = Annotated[Seconds, BeforeValidator(_session_seconds), Field(le=SESSION_NEVER_EXPIRES)]
CodecName = Literal["json", "senml", "line_protocol", "csv"]


class MqttTlsSpec(SpecModel):
    """TLS for ``mqtts://``: the CA to trust, the client certificate, the hostname check.

    Without ``ca_file`` the system's CAs are trusted. ``cert_file`` with ``key_file`` is the
    client certificate for brokers that require one (``key_file`` may be left out when the
    certificate file holds the key too).
    """

    ca_file: Path | None = Field(None, description="CA certificates (PEM) to trust; unset = system CAs")
    cert_file: Path | None = Field(None, description="client certificate (PEM)")
    key_file: Path | None = Field(None, description="client private key (PEM)")
    key_password: SecretStr | None = Field(None, description="password of an encrypted key_file")
    check_hostname: bool = Field(True, description="the broker's certificate must name the url's host")

    @model_validator(mode="after")
    def _check(self) -> MqttTlsSpec:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file is set without tls.cert_file; set both for a client certificate")
        if self.key_password is not None and self.cert_file is None:
            raise ValueError("tls.key_password is set without tls.cert_file")
        return self


class MqttConnectionSpec(SpecModel):
    """What every MQTT spec shares: the broker, who we are, security, timing.

    ``url`` is ``mqtt://host[:port]`` (default port 1883) or ``mqtts://host[:port]`` (TLS,
    default port 8883). Credentials never go into the url: use ``username`` and ``password``.
    """

    url: str = Field(description="mqtt://host:port or mqtts://host:port")
    client_id: str | None = Field(
        None, min_length=1, max_length=200, description="client id prefix; unset = derived from the names"
    )
    protocol: Protocol = Field("5", description='"5" (MQTT 5) or "3.1.1"')
    username: str | None = Field(None, min_length=1)
    password: SecretStr | None = Field(None, description="from the environment: ${MQTT_PASSWORD}")
    tls: MqttTlsSpec | None = Field(None, description="TLS files and checks; needs an mqtts:// url")
    keepalive: PositiveSeconds = Field(60.0, le=65535, description="ping interval when idle")
    connect_timeout: PositiveSeconds = Field(
        10.0, description="how long the first connection may take (retried while the broker is unreachable)"
    )
    reconnect_min_delay: PositiveSeconds = Field(1.0, description="first wait after losing the connection")
    reconnect_max_delay: PositiveSeconds = Field(60.0, description="longest wait between reconnect attempts")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        text = value.strip()
        m = _URL.match(text)
        if not m or m.group("scheme").lower() not in ("mqtt", "mqtts"):
            raise ValueError(f"{value[:80]!r} is not an MQTT url; use mqtt://host:port or mqtts://host:port")
        rest = m.group("rest")
        if "@" in rest:
            raise ValueError(
                "the url may not hold credentials; set 'username', and 'password' from the "
                "environment (${MQTT_PASSWORD})"
            )
        if rest.endswith("/"):
            rest = rest[:-1]
        if "/" in rest or "?" in rest or "#" in rest:
            raise ValueError(f"{value[:80]!r}: the url is only mqtt://host:port (no path, no query)")
        host, port = rest, ""
        if rest.startswith("["):
            end = rest.find("]")
            host, port = rest[: end + 1], rest[end + 2 :] if rest[end + 1 : end + 2] == ":" else ""
        elif ":" in rest:
            host, _, port = rest.rpartition(":")
        if not host or not _HOST.match(host):
            raise ValueError(f"{value[:80]!r}: {host!r} is not a host name or address")
        scheme = m.group("scheme").lower()
        if port:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{value[:80]!r}: port {port!r} is not a number from 1 to 65535")
        else:
            port = "8883" if scheme == "mqtts" else "1883"
        return f"{scheme}://{host}:{int(port)}"

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str | None) -> str | None:
        if value is not None and (CONTROL_CHARACTERS.search(value) or value != value.strip()):
            raise ValueError(f"{value[:60]!r} is not a client id: no spaces around it, no control characters")
        return value

    @model_validator(mode="after")
    def _check_connection(self) -> MqttConnectionSpec:
        if self.tls is not None and not self.uses_tls:
            raise ValueError("tls: TLS settings need an mqtts:// url")
        if self.password is not None and self.username is None and self.protocol == "3.1.1":
            raise ValueError("password: MQTT 3.1.1 needs a username with a password")
        if self.reconnect_max_delay < self.reconnect_min_delay:
            raise ValueError("reconnect_max_delay must not be below reconnect_min_delay")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith("mqtts://")

    @property
    def host(self) -> str:
        """The broker's host (an IPv6 address without brackets)."""
        host = self.url.split("://", 1)[1].rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])


# --------------------------------------------------------------------------------------------
# Source
# --------------------------------------------------------------------------------------------


class MqttSubscriptionSpec(SpecModel):
    """One topic filter of a source, with how its messages are decoded.

    ``topic`` may be a shared subscription ``$share/GROUP/filter``: the broker then hands each
    message to one client of the group, which is how several workers or processes split a
    topic. ``template`` maps topic levels to the twin id and channel (see :class:`TopicTemplate`).
    """

    topic: str = Field(description="topic filter; may be $share/GROUP/filter")
    qos: Literal[0, 1] = Field(1, description="1 = at least once (with a persistent session)")
    codec: CodecName = "json"
    template: str | None = Field(None, description="e.g. plant/{site}/pump/{twin}/{channel}")
    twin_type: Identifier | None = Field(
        None, description="twin type of these readings; default: the source's"
    )

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        TopicFilter.parse(value)
        return value

    @model_validator(mode="after")
    def _check_template(self) -> MqttSubscriptionSpec:
        if self.template is not None:
            try:
                TopicTemplate.parse(self.template).check_against(self.parsed_filter())
            except ValueError as exc:
                raise ValueError(f"template: {exc}") from None
        return self

    def parsed_filter(self) -> TopicFilter:
        return TopicFilter.parse(self.topic)

    def parsed_template(self) -> TopicTemplate | None:
        return None if self.template is None else TopicTemplate.parse(self.template)


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _size_bytes(value: object) -> object:
    """``"512MiB"``, ``"2GB"`` or a number of bytes."""
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise ValueError(f"{value[:40]!r} is not a size; write bytes or e.g. 512MiB, 2GB")
        return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    return value


#: Bytes a client's spool holds at most unless the spec says otherwise (1 GiB).
DEFAULT_SPOOL_BYTES = 2**30


class MqttSpoolSpec(SpecModel):
    """The source's disk spool: received messages are kept here, and acknowledged once durable.

    While a sink holds the dataflow the source goes on receiving into the spool, so the
    broker's own queue (bounded, and silent when it overflows) is not what keeps the readings.
    When the spool holds ``max_bytes``, the source stops acknowledging: the broker keeps the
    rest in the session, up to its own limits. ``path`` defaults to ``<--recovery-dir>/spool``;
    each client has its own folder in it (``<path>/<client id>``). See docs/reliability.md.
    """

    path: Path | None = Field(None, description="folder of the spool; default <recovery dir>/spool")
    max_bytes: Annotated[int, BeforeValidator(_size_bytes), Field(ge=2**20)] = Field(
        DEFAULT_SPOOL_BYTES, description="size of the spool per client (bytes, or 512MiB, 2GB)"
    )


def _spool_switch(value: object) -> object:
    """``spool: on``/``true`` is the spool with its defaults, ``off``/``false`` no spool.

    YAML reads a bare ``on``/``off`` as a boolean already; the words are taken from JSON too.
    """
    if value is True or (isinstance(value, str) and value.strip().lower() in ("on", "true", "yes")):
        return {}
    if isinstance(value, str) and value.strip().lower() in ("off", "false", "no"):
        return False
    return value


class MqttSourceSpec(MqttConnectionSpec):
    """Readings from MQTT subscriptions, decoded per subscription.

    Delivery is set by ``ack`` (see docs/connectors/mqtt.md): ``after_epoch`` acknowledges a
    QoS 1 message only once Bytewax finished the epoch that carried it (every sink wrote it),
    ``on_emit`` when it is handed to the dataflow, ``on_receive`` as soon as it arrives.
    With ``clean_start`` off and a ``session_expiry``, the broker keeps the subscriptions and
    the unacknowledged messages while dte-stream is down.

    ``clients`` MQTT connections read for this source (client ids ``{client_id}-0`` ...);
    Bytewax spreads them over workers and processes. More than one needs shared subscriptions
    (every filter ``$share/GROUP/...``), or each client would get every message.

    ``stop_after_messages`` (per client) and ``stop_after_idle`` end the source: for tests and
    for bounded runs ("read the 10,000 readings that are waiting, then stop").
    """

    kind: Literal["mqtt"]
    name: Identifier = "mqtt"
    twin_type: Identifier | None = None
    subscriptions: list[MqttSubscriptionSpec] = Field(min_length=1)
    clean_start: bool = Field(
        False, description="start each run with a fresh session (drops queued messages)"
    )
    session_expiry: SessionExpiry = Field(
        86400.0, description="how long the broker keeps the session while dte-stream is away (MQTT 5)"
    )
    clients: int = Field(1, ge=1, le=256, description="MQTT connections for this source")
    ack: Literal["after_epoch", "on_emit", "on_receive"] = Field(
        "after_epoch", description="when a QoS 1 message is acknowledged to the broker"
    )
    receive_maximum: int = Field(
        65535, ge=1, le=65535, description="unacknowledged messages the broker may send (MQTT 5)"
    )
    max_payload_bytes: int = Field(MAX_PAYLOAD_BYTES, ge=1, description="larger messages are dead letters")
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="messages per batch at most")
    batch_latency: PositiveSeconds = Field(
        0.05, description="how long messages gather before a batch is emitted"
    )
    max_buffered_messages: int = Field(
        100_000, ge=1, description="messages held between the network thread and the dataflow"
    )
    spool: Annotated[MqttSpoolSpec | Literal[False] | None, BeforeValidator(_spool_switch)] = Field(
        None,
        description=(
            "keep received messages on disk while a sink holds the dataflow (acked once durable); "
            "default: on with --recovery-dir (ack: after_epoch), off without; off opts out"
        ),
    )
    stop_after_messages: int | None = Field(None, ge=1, description="end after this many messages per client")
    stop_after_idle: PositiveSeconds | None = Field(None, description="end after this long without a message")

    @model_validator(mode="after")
    def _check_subscriptions(self) -> MqttSourceSpec:
        filters = [s.parsed_filter() for s in self.subscriptions]
        for i, a in enumerate(filters):
            for j in range(i):
                if a.overlaps(filters[j]):
                    raise ValueError(
                        f"subscriptions: [{j}] {filters[j].text!r} and [{i}] {a.text!r} overlap; "
                        "a message matching both would be delivered twice: make the filters disjoint"
                    )
        if isinstance(self.spool, MqttSpoolSpec) and self.ack != "after_epoch":
            raise ValueError(
                f"spool: a spooled message is acknowledged once it is on disk; ack: {self.ack} "
                "cannot apply: leave ack at its default"
            )
        if self.clients > 1:
            plain = [f.text for f in filters if f.group is None]
            if plain:
                raise ValueError(
                    f"clients: {self.clients} clients need shared subscriptions, or each would get every "
                    f"message; write {', '.join(repr('$share/dte/' + t) for t in plain)}"
                )
        return self

    def spool_settings(self, recovery_dir: Path | None) -> MqttSpoolSpec | None:
        """The spool this source runs with, None for none.

        As the spec sets it; unset, the default spool (``<recovery_dir>/spool``, 1 GiB per
        client) when the run has a recovery directory and ``ack`` is ``after_epoch``, and none
        otherwise: without a recovery directory a restart has no committed spool position.

        >>> spec = MqttSourceSpec(kind="mqtt", url="mqtt://h:1883", subscriptions=[{"topic": "p/#"}])
        >>> spec.spool_settings(Path("/var/lib/dte")).max_bytes, spec.spool_settings(None)
        (1073741824, None)
        >>> spec.model_copy(update={"spool": False}).spool_settings(Path("/var/lib/dte")) is None
        True
        """
        if self.spool is False:
            return None
        if self.spool is not None:
            return self.spool
        if recovery_dir is None or self.ack != "after_epoch":
            return None
        return MqttSpoolSpec()

    def client_ids(self, flow_name: str | None = None) -> list[str]:
        """The client id of each client: ``{client_id}-{i}``; default prefix ``dte-{flow}-{name}``."""
        base = self.client_id or "-".join(["dte", *([flow_name] if flow_name else []), self.name])
        return [f"{base}-{i}" for i in range(self.clients)]


# --------------------------------------------------------------------------------------------
# Sinks
# --------------------------------------------------------------------------------------------


class MqttPublisherSpec(MqttConnectionSpec):
    """What the MQTT sinks share: QoS, retain, and how long to wait for acknowledgements."""

    qos: Literal[0, 1] = Field(1, description="1 = wait for the broker's acknowledgement")
    retain: bool = Field(False, description="the broker keeps the last message per topic")
    publish_timeout: PositiveSeconds = Field(
        30.0, description="how long a batch may wait for the broker's acknowledgements"
    )
    max_inflight: int = Field(1000, ge=1, le=65535, description="QoS 1 messages sent before their ack")


class MqttSinkSpec(MqttPublisherSpec):
    """Estimates to MQTT: one JSON message per twin per batch on ``topic``.

    ``topic`` may use ``{twin_type}`` and ``{twin_id}``; ids are escaped so they can never add
    a level or a wildcard (``%``, ``/``, ``+``, ``#`` become ``%25``, ``%2F``, ``%2B``, ``%23``).
    """

    kind: Literal["mqtt"]
    name: Identifier = "mqtt"
    topic: str = Field("dte/{twin_type}/{twin_id}/estimates", description="topic template")

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        OutputTopic.parse(value)
        return value


class MqttDeadLetterSinkSpec(MqttPublisherSpec):
    """Dead letters to MQTT: one JSON message each (``DeadLetter.to_json_dict``) on ``topic``."""

    kind: Literal["mqtt"]
    name: Identifier = "mqtt_dead_letters"
    topic: str = Field("dte/dead_letters", description="a fixed topic")

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        OutputTopic.parse(value, allowed=())
        return value
