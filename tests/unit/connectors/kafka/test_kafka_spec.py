"""Kafka spec models: validation errors name the field, secrets never show, settings pass through."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from dte_stream.spec.kafka import (
    KafkaDeadLetterSinkSpec,
    KafkaSinkSpec,
    KafkaSourceSpec,
    is_secret_setting,
    masked_settings,
)

BASE: dict[str, Any] = {"kind": "kafka", "bootstrap_servers": "127.0.0.1:9092", "topics": ["sensors"]}


def _source(**changes: Any) -> KafkaSourceSpec:
    return KafkaSourceSpec.model_validate({**BASE, **changes})


def _errors(model: Any, data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]


def test_defaults() -> None:
    spec = _source()
    assert spec.name == "kafka"
    assert spec.codec == "json"
    assert spec.key_is_twin_id is True
    assert spec.starting_offset == "earliest"
    assert spec.batch_size == 5000
    assert spec.stop_at_end is False
    assert spec.group_id is None
    assert spec.client_config() == {"bootstrap.servers": "127.0.0.1:9092"}


def test_bootstrap_list_is_normalised_and_checked() -> None:
    assert _source(bootstrap_servers=" a:1 , b:2").bootstrap_servers == "a:1,b:2"
    for bad in ("", "a:1,,b:2", "a 1"):
        ((loc, _msg),) = _errors(KafkaSourceSpec, {**BASE, "bootstrap_servers": bad})
        assert loc == "bootstrap_servers"


@pytest.mark.parametrize("topic", ["", "a b", "a/b", "x" * 250, "..", "ünïcode"])
def test_bad_topic_names_are_refused_with_the_rule(topic: str) -> None:
    ((loc, msg),) = _errors(KafkaSourceSpec, {**BASE, "topics": [topic]})
    assert loc == "topics.0"
    assert "ASCII letters" in msg or "at least 1" in msg


def test_topics_must_be_given_and_unique() -> None:
    assert _errors(KafkaSourceSpec, {**BASE, "topics": []})[0][0] == "topics"
    ((loc, msg),) = _errors(KafkaSourceSpec, {**BASE, "topics": ["a", "a"]})
    assert (loc, "unique" in msg) == ("topics", True)


def test_unknown_fields_name_the_allowed_ones() -> None:
    ((_loc, msg),) = _errors(KafkaSourceSpec, {**BASE, "batchsize": 10})
    assert "'batchsize'" in msg
    assert "batch_size" in msg
    assert "stop_at_end" in msg


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("batch_size", 2_000_000),
        ("starting_offset", "beginning"),
        ("codec", "xml"),
        ("max_payload_bytes", 0),
        ("poll_interval", 0),
        ("twin_type", "Bad Type"),
        ("group_id", ""),
    ],
)
def test_bad_values_name_their_field(field: str, value: object) -> None:
    errors = _errors(KafkaSourceSpec, {**BASE, field: value})
    assert errors
    assert all(loc == field for loc, _ in errors), errors


def test_durations_accept_text() -> None:
    spec = _source(poll_interval="20ms", metadata_timeout="1m")
    assert spec.poll_interval == pytest.approx(0.02)
    assert spec.metadata_timeout == 60


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("bootstrap.servers", "bootstrap_servers"),
        ("group.id", "group_id"),
        ("enable.auto.commit", "group_id"),
        ("auto.offset.reset", "starting_offset"),
        ("enable.partition.eof", "stop_at_end"),
    ],
)
def test_settings_the_source_controls_are_refused_with_the_field_to_use(key: str, field: str) -> None:
    ((loc, msg),) = _errors(KafkaSourceSpec, {**BASE, "settings": {key: "x"}})
    assert loc == "settings"
    assert repr(key) in msg
    assert repr(field) in msg


def test_sink_refuses_settings_it_controls() -> None:
    data = {"kind": "kafka", "bootstrap_servers": "b:1", "settings": {"linger.ms": 9}}
    ((loc, msg),) = _errors(KafkaSinkSpec, data)
    assert (loc, "'linger_ms'" in msg) == ("settings", True)
    data["settings"] = {"message.timeout.ms": 9}
    assert "'delivery_timeout'" in _errors(KafkaSinkSpec, data)[0][1]


def test_yaml_scalars_become_librdkafka_text() -> None:
    spec = _source(settings={"fetch.min.bytes": 1024, "check.crcs": True, "x.ratio": 0.5, "y": "z"})
    assert spec.client_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "fetch.min.bytes": "1024",
        "check.crcs": "true",
        "x.ratio": "0.5",
        "y": "z",
    }


SECRETS = {
    "sasl.password": "hunter2-sasl",
    "ssl.key.password": "hunter2-key",
    "ssl.keystore.password": "hunter2-store",
    "sasl.oauthbearer.client.secret": "hunter2-oauth",
    "sasl.jaas.config": "org.apache... password=hunter2-jaas",
    "ssl.key.pem": "-----BEGIN PRIVATE KEY----- hunter2-pem",
}


def test_secrets_are_masked_everywhere_but_the_driver_config() -> None:
    spec = _source(settings={**SECRETS, "sasl.username": "dte", "security.protocol": "SASL_SSL"})
    for key in SECRETS:
        assert isinstance(spec.settings[key], SecretStr), key
    assert spec.settings["sasl.username"] == "dte"
    for text in (repr(spec), str(spec), str(spec.model_dump()), str(spec.masked_config())):
        assert "hunter2" not in text
    assert spec.masked_config()["sasl.password"] == "**********"
    assert spec.masked_config()["sasl.username"] == "dte"
    config = spec.client_config()
    assert {k: config[k] for k in SECRETS} == SECRETS


def test_validation_errors_do_not_echo_secrets() -> None:
    with pytest.raises(ValidationError) as info:
        KafkaSourceSpec.model_validate({**BASE, "settings": {"sasl.password": "hunter2", "group.id": "g"}})
    assert "hunter2" not in str(info.value)


def test_secret_detection() -> None:
    assert is_secret_setting("SASL.PASSWORD")
    assert not is_secret_setting("ssl.ca.location")
    assert not is_secret_setting("sasl.username")
    assert masked_settings({"a.token": "t", "b": "c"}) == {"a.token": "**********", "b": "c"}


def test_sink_specs_and_producer_config() -> None:
    sink = KafkaSinkSpec(kind="kafka", bootstrap_servers="b:1", settings={"sasl.password": "pw"})
    assert sink.topic == "dte.estimates"
    config = sink.producer_config()
    assert config["acks"] == "all"
    assert config["compression.type"] == "lz4"
    assert config["message.timeout.ms"] == "30000"
    assert config["sasl.password"] == "pw"
    dead = KafkaDeadLetterSinkSpec(kind="kafka", bootstrap_servers="b:1", delivery_timeout="5s")
    assert dead.topic == "dte.dead_letters"
    assert dead.producer_config()["message.timeout.ms"] == "5000"
    ((loc, _),) = _errors(KafkaSinkSpec, {"kind": "kafka", "bootstrap_servers": "b:1", "topic": "a b"})
    assert loc == "topic"
    ((loc, _),) = _errors(
        KafkaSinkSpec, {"kind": "kafka", "bootstrap_servers": "b:1", "compression": "brotli"}
    )
    assert loc == "compression"
