"""Spec models of the Kafka connector: the source, the estimates sink, the dead-letter sink.

``settings`` go to librdkafka unchanged (SASL, SSL, timeouts, fetch sizes; see librdkafka's
CONFIGURATION.md). Values whose key names a secret (``sasl.password``, ``ssl.key.password``,
``sasl.oauthbearer.client.secret``, ``sasl.jaas.config``, ...) are held as ``SecretStr``: they
print as ``**********`` in reprs, logs and validation errors, and only
:meth:`KafkaConnectionSpec.client_config` reveals them, to hand them to the driver. Put secrets
in the spec as ``${ENV_VAR}`` references so they never sit in a file.

Keys the connector sets itself are refused in ``settings`` with the field to use instead.

>>> spec = KafkaSourceSpec(kind="kafka", bootstrap_servers="127.0.0.1:9092", topics=["sensors"],
...                        settings={"security.protocol": "SASL_SSL", "sasl.password": "hunter2"})
>>> spec.settings["sasl.password"]
SecretStr('**********')
>>> spec.client_config()["sasl.password"]
'hunter2'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from dte_stream.codecs.base import MAX_PAYLOAD_BYTES
from dte_stream.spec.base import Identifier, PositiveSeconds, SpecModel

__all__ = [
    "KafkaConnectionSpec",
    "KafkaDeadLetterSinkSpec",
    "KafkaProducerSpec",
    "KafkaSinkSpec",
    "KafkaSourceSpec",
    "KafkaTopicCreationSpec",
    "is_secret_setting",
    "masked_settings",
]

#: Setting keys whose values are secrets (matched anywhere in the key, case-insensitively).
_SECRET_KEY = re.compile(
    r"password|secret|token|jaas|credential|private|ssl\.key\.pem|oauthbearer\.config", re.I
)
#: Legal Kafka topic names (the broker's own rule).
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_SERVER = re.compile(r"^[^\s,]+$")

#: Security settings whose values librdkafka knows (case-insensitive): a typo is an error at once.
_CHOICES: dict[str, tuple[str, ...]] = {
    "security.protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "sasl.mechanism": ("GSSAPI", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"),
    "sasl.mechanisms": ("GSSAPI", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"),
}

#: The replacement text of secret values in reprs and logs.
MASK = "**********"

SettingValue = str | SecretStr


def is_secret_setting(key: str) -> bool:
    """True when the librdkafka setting ``key`` holds a secret (a password, a key, a token).

    >>> is_secret_setting("sasl.password"), is_secret_setting("ssl.ca.location")
    (True, False)
    """
    return _SECRET_KEY.search(key) is not None


def masked_settings(settings: Mapping[str, SettingValue]) -> dict[str, str]:
    """The settings with every secret value replaced by ``**********``: safe to log."""
    return {
        key: MASK if isinstance(value, SecretStr) or is_secret_setting(key) else value
        for key, value in settings.items()
    }


def _settings_to_text(value: object) -> object:
    """Accept YAML scalars (``linger.ms: 5``, ``enable.idempotence: true``) as librdkafka text."""
    if not isinstance(value, Mapping):
        return value
    out: dict[object, object] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            out[key] = "true" if item else "false"
        elif isinstance(item, int | float):
            out[key] = str(item)
        else:
            out[key] = item
    return out


def _check_topic(topic: str) -> str:
    if not _TOPIC.match(topic) or topic in (".", ".."):
        raise ValueError(
            f"{topic[:80]!r} is not a Kafka topic name: 1 to 249 characters of ASCII letters, "
            "digits, '.', '_' and '-'"
        )
    return topic


Topic = Annotated[str, AfterValidator(_check_topic), Field(description="a Kafka topic name")]
KafkaSettings = Annotated[dict[str, SettingValue], BeforeValidator(_settings_to_text)]
BootstrapServers = Annotated[
    str, Field(min_length=1, description="comma-separated host:port list of Kafka brokers")
]


class KafkaTopicCreationSpec(SpecModel):
    """How to create a topic that does not exist yet when the dataflow starts (``create_topic``)."""

    partitions: int = Field(1, ge=1, le=100_000, description="partitions of the new topic")
    replication_factor: int = Field(1, ge=1, le=100, description="copies of each partition")


class KafkaConnectionSpec(SpecModel):
    """What every Kafka spec shares: the brokers and the librdkafka settings passed through."""

    # Validation errors must not echo the input: it may hold a password.
    model_config = ConfigDict(hide_input_in_errors=True)

    #: Setting keys the connector sets itself, with the field that controls each.
    RESERVED_SETTINGS: ClassVar[dict[str, str]] = {"bootstrap.servers": "bootstrap_servers"}

    bootstrap_servers: BootstrapServers
    settings: KafkaSettings = Field(
        default_factory=dict, description="librdkafka settings passed through (SASL, SSL, ...)"
    )
    create_topic: KafkaTopicCreationSpec | None = Field(
        None,
        description=(
            "create the topic(s) with these settings when missing at start; unset = a missing "
            "topic stops the start with the command that creates it"
        ),
    )
    startup_timeout: PositiveSeconds = Field(
        10.0, description="how long the start-up check waits for the brokers to answer"
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",")]
        if not all(servers) or not all(_SERVER.match(s) for s in servers):
            raise ValueError(
                f"{value!r} is not a list of brokers; use host:port[,host:port...] "
                "(for example 127.0.0.1:9092)"
            )
        return ",".join(servers)

    @field_validator("settings", mode="after")
    @classmethod
    def _check_settings(cls, value: dict[str, SettingValue]) -> dict[str, SettingValue]:
        out: dict[str, SettingValue] = {}
        for key, item in value.items():
            if key in cls.RESERVED_SETTINGS:
                raise ValueError(
                    f"{key!r} is set by the connector; use the field {cls.RESERVED_SETTINGS[key]!r} instead"
                )
            if not key or key != key.strip():
                raise ValueError(f"{key!r} is not a librdkafka setting name")
            text = item.get_secret_value() if isinstance(item, SecretStr) else item
            allowed = _CHOICES.get(key)
            if allowed is not None and text.upper() not in allowed:
                raise ValueError(f"{key} {text[:40]!r} is not one of {', '.join(allowed)}")
            out[key] = SecretStr(text) if is_secret_setting(key) else text
        return out

    def client_config(self) -> dict[str, str]:
        """The librdkafka configuration with secrets revealed: hand it to the driver only."""
        config = {"bootstrap.servers": self.bootstrap_servers}
        for key, value in self.settings.items():
            config[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return config

    def masked_config(self) -> dict[str, str]:
        """The librdkafka configuration with secrets masked: safe to log and print."""
        return {"bootstrap.servers": self.bootstrap_servers, **masked_settings(self.settings)}


class KafkaSourceSpec(KafkaConnectionSpec):
    """Readings from Kafka topics: one Bytewax partition per Kafka partition.

    Every record's value is one payload for ``codec``; its key, when present and UTF-8, is the
    twin id (``key_is_twin_id``). Offsets are kept in Bytewax recovery state (at-least-once);
    ``starting_offset`` applies only to partitions without recovery state. ``group_id``, when
    set, also commits the recovered offsets to that consumer group, for monitoring lag with
    Kafka's own tools; the group never decides where reading starts.
    """

    RESERVED_SETTINGS: ClassVar[dict[str, str]] = {
        "bootstrap.servers": "bootstrap_servers",
        "group.id": "group_id",
        "enable.auto.commit": "group_id",
        "enable.auto.offset.store": "group_id",
        "auto.offset.reset": "starting_offset",
        "enable.partition.eof": "stop_at_end",
    }

    kind: Literal["kafka"]
    name: Identifier = "kafka"
    topics: list[Topic] = Field(min_length=1, description="topics to read, all partitions of each")
    codec: Literal["json", "senml", "line_protocol", "csv"] = "json"
    twin_type: Identifier | None = None
    key_is_twin_id: bool = Field(True, description="a record's UTF-8 key is its readings' twin id")
    starting_offset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a partition without recovery state starts"
    )
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="records per consume call")
    max_payload_bytes: int = Field(MAX_PAYLOAD_BYTES, ge=1, description="larger records are dead letters")
    poll_interval: PositiveSeconds = Field(
        0.05, description="wait before asking again when a partition had nothing new"
    )
    metadata_timeout: PositiveSeconds = Field(
        30.0, description="how long to wait for the brokers when listing and opening partitions"
    )
    stop_at_end: bool = Field(
        False, description="end when every partition reaches its end as of start (replays, tests)"
    )
    group_id: str | None = Field(
        None, min_length=1, description="consumer group to commit offsets to, for monitoring only"
    )

    @field_validator("topics")
    @classmethod
    def _check_topics(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"topics must be unique, got {value}")
        return value


class KafkaProducerSpec(KafkaConnectionSpec):
    """What the Kafka sinks share: the producer's batching, compression and acknowledgements."""

    RESERVED_SETTINGS: ClassVar[dict[str, str]] = {
        "bootstrap.servers": "bootstrap_servers",
        "compression.type": "compression",
        "compression.codec": "compression",
        "linger.ms": "linger_ms",
        "acks": "acks",
        "message.timeout.ms": "delivery_timeout",
        "delivery.timeout.ms": "delivery_timeout",
    }

    topic: Topic
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    linger_ms: int = Field(5, ge=0, le=900_000, description="how long the producer gathers a batch")
    acks: Literal["all", "1", "0"] = Field("all", description="brokers that must confirm a record")
    delivery_timeout: PositiveSeconds = Field(
        30.0, description="how long a record may wait for the brokers before it fails"
    )

    def producer_config(self) -> dict[str, str]:
        """The producer's librdkafka configuration (secrets revealed: for the driver only)."""
        return {
            "compression.type": self.compression,
            "linger.ms": str(self.linger_ms),
            "acks": self.acks,
            "message.timeout.ms": str(max(1, round(self.delivery_timeout * 1000))),
            **self.client_config(),
        }


class KafkaSinkSpec(KafkaProducerSpec):
    """Estimates to a Kafka topic: one JSON record per twin per batch, keyed by the twin id.

    The producer batches records (``linger_ms``, ``compression``) and waits for the brokers'
    acknowledgement (``acks``) of every batch before Bytewax counts it as written.
    """

    kind: Literal["kafka"]
    name: Identifier = "kafka"
    topic: Topic = "dte.estimates"


class KafkaDeadLetterSinkSpec(KafkaProducerSpec):
    """Dead letters to a Kafka topic: one JSON record each, keyed by where it came from."""

    kind: Literal["kafka"] = "kafka"
    topic: Topic = "dte.dead_letters"
