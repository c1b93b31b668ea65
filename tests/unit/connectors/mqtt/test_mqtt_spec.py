"""MQTT spec models: defaults, validation errors that name the field, secrets that never show."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from dte_stream.connectors.mqtt import MqttSink, MqttSource
from dte_stream.errors import ConnectorError
from dte_stream.spec.mqtt import (
    SESSION_NEVER_EXPIRES,
    MqttDeadLetterSinkSpec,
    MqttSinkSpec,
    MqttSourceSpec,
)

BASE: dict[str, Any] = {
    "kind": "mqtt",
    "url": "mqtt://127.0.0.1:1883",
    "subscriptions": [{"topic": "plant/+/pump/#", "template": "plant/{site}/pump/{twin}/{channel}"}],
}
SECRET = "s3cr3t-Pa55word!"


def _source(**changes: Any) -> MqttSourceSpec:
    return MqttSourceSpec.model_validate({**BASE, **changes})


def _errors(model: Any, data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]


def test_defaults() -> None:
    spec = _source()
    assert spec.name == "mqtt"
    assert spec.protocol == "5"
    assert spec.clean_start is False
    assert spec.session_expiry == 86400
    assert spec.ack == "after_epoch"
    assert spec.clients == 1
    assert spec.receive_maximum == 65535
    assert spec.max_payload_bytes == 1 << 20
    assert spec.keepalive == 60
    assert (spec.host, spec.port, spec.uses_tls) == ("127.0.0.1", 1883, False)
    sub = spec.subscriptions[0]
    assert (sub.qos, sub.codec, sub.twin_type) == (1, "json", None)
    assert spec.client_ids("demo") == ["dte-demo-mqtt-0"]
    assert spec.client_ids() == ["dte-mqtt-0"]
    assert _source(client_id="edge", clients=2, subscriptions=[{"topic": "$share/g/a/#"}]).client_ids() == [
        "edge-0",
        "edge-1",
    ]


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("mqtt://broker.local", "mqtt://broker.local:1883"),
        ("mqtts://broker.local", "mqtts://broker.local:8883"),
        ("MQTT://10.0.0.1:1884/", "mqtt://10.0.0.1:1884"),
        ("mqtts://[::1]:8884", "mqtts://[::1]:8884"),
    ],
)
def test_url_forms(url: str, normal: str) -> None:
    assert _source(url=url).url == normal


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("tcp://h:1883", "not an MQTT url"),
        ("h:1883", "not an MQTT url"),
        ("mqtt://user:pw@h:1883", "may not hold credentials"),
        ("mqtt://h:0", "port"),
        ("mqtt://h:99999", "port"),
        ("mqtt://h:1883/topic", "no path"),
        ("mqtt://:1883", "host"),
        ("mqtt://bad host:1883", "host"),
    ],
)
def test_bad_urls_name_the_field(url: str, words: str) -> None:
    [(loc, msg)] = _errors(MqttSourceSpec, {**BASE, "url": url})
    assert loc == "url"
    assert words in msg


def test_durations_protocols_and_session_expiry_forms() -> None:
    spec = _source(
        keepalive="30s", connect_timeout="500ms", session_expiry="2d", protocol=5, batch_latency="10ms"
    )
    assert (spec.keepalive, spec.connect_timeout, spec.session_expiry) == (30, 0.5, 2 * 86400)
    assert spec.protocol == "5"
    assert spec.batch_latency == 0.01
    assert _source(protocol="3.1.1").protocol == "3.1.1"
    assert _source(protocol=311).protocol == "3.1.1"
    assert _source(session_expiry="never").session_expiry == SESSION_NEVER_EXPIRES
    [(loc, msg)] = _errors(MqttSourceSpec, {**BASE, "protocol": "4"})
    assert loc == "protocol"
    assert "'3.1.1'" in msg
    assert "'5'" in msg
    [(loc, _)] = _errors(MqttSourceSpec, {**BASE, "keepalive": "soon"})
    assert loc == "keepalive"


def test_unknown_fields_list_the_allowed_ones() -> None:
    [(_, msg)] = _errors(MqttSourceSpec, {**BASE, "qos": 1})
    assert "unknown field 'qos'" in msg
    assert "subscriptions" in msg
    [(loc, msg)] = _errors(MqttSourceSpec, {**BASE, "subscriptions": [{"topic": "a", "filter": "b"}]})
    assert loc == "subscriptions.0"
    assert "unknown field 'filter'" in msg
    assert "template" in msg


@pytest.mark.parametrize(
    ("subscription", "words"),
    [
        ({"topic": "a/b#"}, "'#' must be a whole level"),
        ({"topic": "a/#/b"}, "'#' must be a whole level"),
        ({"topic": "a/b+"}, "'+' must be a whole level"),
        ({"topic": "$share/g"}, "$share/GROUP/FILTER"),
        ({"topic": "$share//a"}, "$share/GROUP/FILTER"),
        ({"topic": ""}, "empty"),
        ({"topic": "a/\x00"}, "control character"),
        ({"topic": "a/+", "qos": 2}, "Input should be 0 or 1"),
        ({"topic": "a/+", "codec": "xml"}, "'json'"),
        ({"topic": "a/+/c", "template": "a/{twin}"}, "has 2 levels but filter 'a/+/c' delivers topics of 3"),
        ({"topic": "a/+/c", "template": "a/{twin}/d"}, "level 3 is 'd' but filter"),
        ({"topic": "a/b/c/#", "template": "a/{twin}"}, "at least 3"),
        ({"topic": "a/#", "template": "a/{twin}/{twin}"}, "{twin} is used twice"),
        ({"topic": "a/#", "template": "a/{twin}/#"}, "'#' is not allowed"),
        ({"topic": "a/#", "template": "a/x{twin}"}, "whole {name} placeholder"),
        ({"topic": "a/#", "template": "a//{twin}"}, "level 2 is empty"),
        ({"topic": "a/#", "template": "a/{9x}"}, "whole {name} placeholder"),
    ],
)
def test_bad_subscriptions_name_the_field(subscription: dict[str, Any], words: str) -> None:
    errors = _errors(MqttSourceSpec, {**BASE, "subscriptions": [subscription]})
    assert errors
    loc, msg = errors[0]
    assert loc.startswith("subscriptions.0")
    assert words in msg


def test_templates_that_fit_their_filters() -> None:
    for topic, template in [
        ("plant/#", "plant/{site}/pump/{twin}/{channel}"),
        ("$share/dte/plant/+/pump/+/+", "plant/{site}/pump/{twin}/{channel}"),
        ("plant/+/pump/#", "plant/+/pump/{twin}/{channel}"),
        ("+/+", "{twin}/{channel}"),
    ]:
        spec = _source(subscriptions=[{"topic": topic, "template": template}])
        assert spec.subscriptions[0].parsed_template() is not None


def test_overlapping_subscriptions_are_refused() -> None:
    [(loc, msg)] = _errors(MqttSourceSpec, {**BASE, "subscriptions": [{"topic": "a/#"}, {"topic": "a/+/c"}]})
    assert loc == ""
    assert "subscriptions: [0] 'a/#' and [1] 'a/+/c' overlap" in msg
    # the same filter in two share groups is still delivered twice
    [(_, msg)] = _errors(
        MqttSourceSpec, {**BASE, "subscriptions": [{"topic": "$share/x/a/b"}, {"topic": "$share/y/a/b"}]}
    )
    assert "overlap" in msg
    assert len(_source(subscriptions=[{"topic": "a/+/c"}, {"topic": "a/+/d"}]).subscriptions) == 2


def test_several_clients_need_shared_subscriptions() -> None:
    [(_, msg)] = _errors(MqttSourceSpec, {**BASE, "clients": 2})
    assert "clients: 2 clients need shared subscriptions" in msg
    assert "'$share/dte/plant/+/pump/#'" in msg
    assert _source(clients=2, subscriptions=[{"topic": "$share/dte/plant/#"}]).clients == 2


def test_tls_settings() -> None:
    [(_loc, msg)] = _errors(MqttSourceSpec, {**BASE, "tls": {"ca_file": "ca.pem"}})
    assert "tls: TLS settings need an mqtts:// url" in msg
    errors = _errors(MqttSourceSpec, {**BASE, "url": "mqtts://h", "tls": {"key_file": "k.pem"}})
    assert "tls.key_file is set without tls.cert_file" in errors[0][1]
    assert errors[0][0] == "tls"
    errors = _errors(MqttSourceSpec, {**BASE, "url": "mqtts://h", "tls": {"ca_file": "c", "verify": False}})
    assert "unknown field 'verify'" in errors[0][1]
    assert "check_hostname" in errors[0][1]
    spec = _source(url="mqtts://h", tls={"ca_file": "ca.pem", "check_hostname": False})
    assert spec.tls is not None
    assert spec.tls.check_hostname is False


def test_password_needs_a_username_with_mqtt_311() -> None:
    [(_, msg)] = _errors(MqttSourceSpec, {**BASE, "protocol": "3.1.1", "password": SECRET})
    assert "MQTT 3.1.1 needs a username" in msg


def test_secrets_never_show_in_repr_dumps_or_errors() -> None:
    spec = _source(
        username="dte",
        password=SECRET,
        url="mqtts://h",
        tls={"cert_file": "c.pem", "key_file": "k.pem", "key_password": SECRET},
    )
    assert isinstance(spec.password, SecretStr)
    assert spec.password.get_secret_value() == SECRET
    for text in (repr(spec), str(spec), spec.model_dump_json(), str(spec.model_dump())):
        assert SECRET not in text
    # an invalid spec must not echo the password back either
    with pytest.raises(ValidationError) as info:
        MqttSourceSpec.model_validate({**BASE, "password": SECRET, "keepalive": -1})
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.errors())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_a_clear_error_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()
    spec = _source(
        url=f"mqtt://127.0.0.1:{port}", username="dte", password=SECRET, connect_timeout=0.3, client_id="unit"
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectorError) as info:
        MqttSource(spec).build_part("step", "mqtt-0", None)
    message = str(info.value)
    assert info.value.__suppress_context__  # no paho or socket traceback attached
    assert f"mqtt://127.0.0.1:{port}" in message
    assert "connection refused" in message
    assert "within connect_timeout=0.3 s" in message
    assert SECRET not in message
    assert SECRET not in caplog.text
    sink_spec = MqttSinkSpec(
        kind="mqtt", url=f"mqtt://127.0.0.1:{port}", password=SECRET, connect_timeout=0.2
    )
    with pytest.raises(ConnectorError, match="connection refused"):
        MqttSink(sink_spec).build("step", 0, 1)
    assert SECRET not in caplog.text


def test_unresolvable_host_fails_at_once() -> None:
    spec = _source(url="mqtt://no-such-host.invalid:1883", connect_timeout=30)
    with pytest.raises(ConnectorError, match=r"cannot resolve the host 'no-such-host\.invalid'"):
        MqttSource(spec).build_part("step", "mqtt-0", None)


def test_recovery_state_of_another_spec_is_refused() -> None:
    with pytest.raises(ConnectorError, match="fresh recovery directory"):
        MqttSource(_source()).build_part("step", "mqtt-3", None)
    with pytest.raises(ConnectorError, match="fresh recovery directory"):
        MqttSource(_source()).build_part("step", "other-0", None)


def test_sink_specs() -> None:
    sink = MqttSinkSpec(kind="mqtt", url="mqtt://h")
    assert (sink.topic, sink.qos, sink.retain, sink.name) == (
        "dte/{twin_type}/{twin_id}/estimates",
        1,
        False,
        "mqtt",
    )
    assert MqttDeadLetterSinkSpec(kind="mqtt", url="mqtt://h").topic == "dte/dead_letters"
    for topic, words in [
        ("dte/{twin}/x", "unknown placeholder {twin}; allowed: {twin_type}, {twin_id}"),
        ("dte/+/{twin_id}", "may not contain '+' or '#'"),
        ("dte/#", "may not contain '+' or '#'"),
        ("dte//{twin_id}", "empty level"),
        ("/dte/{twin_id}", "empty level"),
        ("$SYS/{twin_id}", "reserved for the broker"),
        ("dte/{twin_id", "unbalanced"),
    ]:
        [(loc, msg)] = _errors(MqttSinkSpec, {"kind": "mqtt", "url": "mqtt://h", "topic": topic})
        assert loc == "topic"
        assert words in msg
    [(loc, msg)] = _errors(
        MqttDeadLetterSinkSpec, {"kind": "mqtt", "url": "mqtt://h", "topic": "dl/{twin_id}"}
    )
    assert "allowed: none" in msg
