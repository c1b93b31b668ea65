"""MqttSink and MqttDeadLetterSink against a real Mosquitto: a subscriber sees one JSON message
per twin per batch on escaped topics, dead letters as JSON, and clear errors for bad credentials."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import bytewax.operators as op
import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from ci import skip_or_fail
from paho.mqtt.enums import CallbackAPIVersion

from dte_stream.batches import EstimateBatch
from dte_stream.connectors.mqtt import MqttDeadLetterSink, MqttSink
from dte_stream.errors import ConnectorError
from dte_stream.readings import DeadLetter
from dte_stream.spec.mqtt import MqttDeadLetterSinkSpec, MqttSinkSpec

pytestmark = pytest.mark.integration

T0 = 1_767_323_045_000_000_000  # 2026-01-02T03:04:05Z


@contextmanager
def subscriber(broker: Any, topic: str) -> Iterator[list[tuple[str, bytes, bool]]]:
    """Collect ``(topic, payload, retain)`` of every message on ``topic`` while the block runs."""
    got: list[tuple[str, bytes, bool]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, m: got.append((m.topic, m.payload, m.retain))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        yield got
    finally:
        client.disconnect()
        client.loop_stop()
        client._reset_sockets()  # paho closes its wake-up sockets only in __del__


def wait_for(got: list[Any], count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # and nothing more arrives


def estimates(twin_type: str, twin_ids: list[str], start: int = 0) -> EstimateBatch:
    n = len(twin_ids)
    idx = np.arange(start, start + n)
    return EstimateBatch(
        twin_type,
        np.array(twin_ids),
        np.array(["temp"] * n),
        T0 + idx.astype(np.int64) * 1_000_000_000,
        idx.astype(np.float64),
        np.array(["°C"] * n),
        idx + 0.25,
        np.full(n, 0.5),
        np.full(n, -0.25),
        np.full(n, np.nan),
    )


def run_sink(items: list[Any], sink: Any, name: str = "mqtt_sink_test") -> None:
    flow = Dataflow(name)
    op.output("sink", op.input("inp", flow, TestingSource(items)), sink)
    run_main(flow)


def test_estimates_are_one_json_message_per_twin_per_batch(mosquitto: Any) -> None:
    base = f"dte{uuid.uuid4().hex[:8]}"
    spec = MqttSinkSpec(
        kind="mqtt",
        url=f"mqtt://{mosquitto.host}:{mosquitto.port}",
        topic=base + "/{twin_type}/{twin_id}/estimates",
    )
    hostile = 'pump/7+#, Halle=3 "Süd"'
    batches = [
        estimates("pump", ["p-1", hostile, "p-1"]),
        estimates("pump", ["p-2"], start=3),
        estimates("valve", ["v-1", "v-1"], start=4),
    ]
    with subscriber(mosquitto, f"{base}/#") as got:
        run_sink(batches, MqttSink(spec, flow_name="sink_test"))
        wait_for(got, 4)
    by_topic = {topic: orjson.loads(payload) for topic, payload, _ in got}
    assert len(got) == 4
    escaped = 'pump%2F7%2B%23, Halle=3 "Süd"'
    assert sorted(by_topic) == sorted(
        [
            f"{base}/pump/p-1/estimates",
            f"{base}/pump/{escaped}/estimates",
            f"{base}/pump/p-2/estimates",
            f"{base}/valve/v-1/estimates",
        ]
    )
    p1 = by_topic[f"{base}/pump/p-1/estimates"]
    assert (p1["twin_id"], p1["twin_type"]) == ("p-1", "pump")
    assert p1["estimates"] == [
        {
            "channel": "temp",
            "time": "2026-01-02T03:04:05.000000000Z",
            "time_ns": T0,
            "value": 0.0,
            "unit": "°C",
            "estimate": 0.25,
            "std": 0.5,
            "innovation": -0.25,
            "nis": None,
            "flags": 0,
            "anomaly_score": None,
        },
        {
            "channel": "temp",
            "time": "2026-01-02T03:04:07.000000000Z",
            "time_ns": T0 + 2_000_000_000,
            "value": 2.0,
            "unit": "°C",
            "estimate": 2.25,
            "std": 0.5,
            "innovation": -0.25,
            "nis": None,
            "flags": 0,
            "anomaly_score": None,
        },
    ]
    assert by_topic[f"{base}/pump/{escaped}/estimates"]["twin_id"] == hostile
    assert len(by_topic[f"{base}/valve/v-1/estimates"]["estimates"]) == 2
    assert not any(retain for _, _, retain in got)


def test_retained_estimates_stay_on_the_broker(mosquitto: Any) -> None:
    base = f"dte{uuid.uuid4().hex[:8]}"
    spec = MqttSinkSpec(
        kind="mqtt",
        url=f"mqtt://{mosquitto.host}:{mosquitto.port}",
        topic=base + "/{twin_id}",
        retain=True,
        qos=0,
    )
    run_sink([estimates("pump", ["p-1"])], MqttSink(spec))
    with subscriber(mosquitto, f"{base}/#") as got:  # subscribes after the publish
        wait_for(got, 1)
    assert [(t, r) for t, _, r in got] == [(f"{base}/p-1", True)]


def test_dead_letters_as_json(mosquitto: Any) -> None:
    topic = f"dte{uuid.uuid4().hex[:8]}/dead_letters"
    spec = MqttDeadLetterSinkSpec(kind="mqtt", url=f"mqtt://{mosquitto.host}:{mosquitto.port}", topic=topic)
    letters = [
        DeadLetter("mqtt://h:1/plant/x", "level 4 is empty", b'{"v": 1}', 5),
        DeadLetter("kafka://b/t/0@1", "not JSON", b"\xff", 6),
    ]
    with subscriber(mosquitto, topic) as got:
        run_sink(letters, MqttDeadLetterSink(spec))
        wait_for(got, 2)
    assert [orjson.loads(payload) for _, payload, _ in got] == [d.to_json_dict() for d in letters]


def test_sink_over_tls_and_with_a_password(mosquitto: Any) -> None:
    base = f"dte{uuid.uuid4().hex[:8]}"
    specs = []
    if mosquitto.tls_port and mosquitto.cert_file:
        specs.append(
            MqttSinkSpec(
                kind="mqtt",
                url=f"mqtts://{mosquitto.host}:{mosquitto.tls_port}",
                topic=base + "/tls/{twin_id}",
                tls={
                    "ca_file": str(mosquitto.ca_file),
                    "cert_file": str(mosquitto.cert_file),
                    "key_file": str(mosquitto.key_file),
                },
            )
        )
    if mosquitto.auth_port and mosquitto.username:
        specs.append(
            MqttSinkSpec(
                kind="mqtt",
                url=f"mqtt://{mosquitto.host}:{mosquitto.auth_port}",
                topic=base + "/auth/{twin_id}",
                username=mosquitto.username,
                password=mosquitto.password,
            )
        )
    if not specs:
        skip_or_fail("the broker has neither a TLS nor a password listener")
    with subscriber(mosquitto, f"{base}/#") as got:
        for spec in specs:
            run_sink([estimates("pump", ["p-1"])], MqttSink(spec))
        wait_for(got, len(specs))
    assert len(got) == len(specs)

    if mosquitto.auth_port and mosquitto.username:
        wrong = MqttSinkSpec(
            kind="mqtt",
            url=f"mqtt://{mosquitto.host}:{mosquitto.auth_port}",
            username=mosquitto.username,
            password="wrong-password",
        )
        with pytest.raises(ConnectorError) as info:
            MqttSink(wrong).build("sink", 0, 1)
        assert f"mqtt://{mosquitto.host}:{mosquitto.auth_port}" in str(info.value)
        assert "refused the connection" in str(info.value)
        assert "wrong-password" not in str(info.value)


def test_many_twins_in_one_batch(mosquitto: Any) -> None:
    base = f"dte{uuid.uuid4().hex[:8]}"
    spec = MqttSinkSpec(
        kind="mqtt", url=f"mqtt://{mosquitto.host}:{mosquitto.port}", topic=base + "/{twin_id}"
    )
    ids = [f"p-{i}" for i in range(3000)]
    with subscriber(mosquitto, f"{base}/#") as got:
        run_sink([estimates("pump", ids)], MqttSink(spec))
        wait_for(got, len(ids), timeout=30)
    assert sorted(t for t, _, _ in got) == sorted(f"{base}/{i}" for i in ids)
