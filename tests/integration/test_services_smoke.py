"""One smoke test per real service: each talks to the server with a real client and checks
what comes back. They prove that deploy/services starts every service the way the connectors
need it (MQTT 5 over plain/TLS/password listeners, Kafka KRaft, InfluxDB 1.x, the InfluxDB v2
write API on VictoriaMetrics, Alertmanager)."""

from __future__ import annotations

import json
import queue
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 15.0


def _uid() -> str:
    return uuid.uuid4().hex[:12]


def http(
    method: str, url: str, body: bytes | str | None = None, content_type: str | None = None
) -> tuple[int, bytes]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


# --------------------------------------------------------------------------------------------
# MQTT (Mosquitto)
# --------------------------------------------------------------------------------------------


class MqttClient:
    """A paho-mqtt 2.x MQTT 5 client whose callbacks feed queues, for tests."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str | None = None,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        clean_start: bool = True,
        session_expiry: int = 0,
    ) -> None:
        self.connacks: queue.Queue[Any] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"dte-smoke-{_uid()}",
            protocol=mqtt.MQTTv5,
        )
        if tls is not None:
            self.client.tls_set_context(tls)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connacks.put(rc)
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: self.subacks.put(rcs)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        self.client.connect(host, port, keepalive=30, clean_start=clean_start, properties=props)
        self.client.loop_start()

    def connack(self) -> Any:
        return self.connacks.get(timeout=TIMEOUT)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.client.subscribe(topic, qos=qos)
        (granted,) = self.subacks.get(timeout=TIMEOUT)
        assert not granted.is_failure, granted
        assert granted.value == qos

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_roundtrip(host: str, port: int, **kwargs: Any) -> mqtt.MQTTMessage:
    """Connect, subscribe, publish one QoS 1 message to ourselves and return what arrived."""
    topic = f"dte/smoke/{_uid()}"
    payload = json.dumps({"twin": "pump-1", "t": time.time(), "v": 42.5}).encode()
    client = MqttClient(host, port, **kwargs)
    try:
        rc = client.connack()
        assert not rc.is_failure, f"connection refused: {rc}"
        client.subscribe(topic, qos=1)
        client.publish(topic, payload, qos=1)
        msg = client.messages.get(timeout=TIMEOUT)
    finally:
        client.close()
    assert msg.topic == topic
    assert msg.payload == payload
    assert msg.qos == 1
    return msg


def test_mqtt_plain_publish_receive(mosquitto: Any) -> None:
    mqtt_roundtrip(mosquitto.host, mosquitto.port)


def test_mqtt5_persistent_session_keeps_messages_while_offline(mosquitto: Any) -> None:
    topic = f"dte/smoke/session/{_uid()}"
    client_id = f"dte-smoke-persistent-{_uid()}"
    # 1. subscribe with a session that outlives the connection, then go away
    first = MqttClient(
        mosquitto.host, mosquitto.port, client_id=client_id, clean_start=True, session_expiry=300
    )
    try:
        assert not first.connack().is_failure
        first.subscribe(topic, qos=1)
    finally:
        first.close()
    # 2. publish while the subscriber is offline
    publisher = MqttClient(mosquitto.host, mosquitto.port)
    try:
        assert not publisher.connack().is_failure
        publisher.publish(topic, b"while-offline", qos=1)
    finally:
        publisher.close()
    # 3. resume the session: the broker delivers what was queued
    second = MqttClient(
        mosquitto.host, mosquitto.port, client_id=client_id, clean_start=False, session_expiry=300
    )
    try:
        assert not second.connack().is_failure
        msg = second.messages.get(timeout=TIMEOUT)
    finally:
        second.close()
    assert msg.topic == topic
    assert msg.payload == b"while-offline"


def test_mqtt_tls_with_client_certificate(mosquitto: Any, devservices_api: Any) -> None:
    if mosquitto.tls_port is None or mosquitto.ca_file is None:
        pytest.skip("no TLS listener configured (set DTE_TEST_MQTT_TLS_URL and its cert files)")
    ctx = ssl.create_default_context(cafile=str(mosquitto.ca_file))
    ctx.load_cert_chain(str(mosquitto.cert_file), str(mosquitto.key_file))
    msg = mqtt_roundtrip(mosquitto.host, mosquitto.tls_port, tls=ctx)
    assert msg.payload.startswith(b"{")
    # the listener requires a client certificate: without one there is no CONNACK
    no_cert = devservices_api.mqtt_tls_context(mosquitto.ca_file, None, None)
    with pytest.raises((OSError, devservices_api.DevServiceError)):
        devservices_api.mqtt_connack(mosquitto.host, mosquitto.tls_port, ssl_context=no_cert)


def test_mqtt_password_auth(mosquitto: Any) -> None:
    if mosquitto.auth_port is None or mosquitto.username is None:
        pytest.skip("no password listener configured (set DTE_TEST_MQTT_AUTH_URL)")
    mqtt_roundtrip(
        mosquitto.host,
        mosquitto.auth_port,
        username=mosquitto.username,
        password=mosquitto.password,
    )
    for username, password in ((mosquitto.username, "wrong-password"), (None, None)):
        client = MqttClient(mosquitto.host, mosquitto.auth_port, username=username, password=password)
        try:
            rc = client.connack()
        finally:
            client.close()
        assert rc.is_failure, f"{username!r} with a wrong password was let in"
        assert rc.value in (0x86, 0x87), rc  # bad user name or password / not authorized


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


def test_kafka_create_produce_consume(kafka: Any) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = f"dte-smoke-{_uid()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1)], operation_timeout=TIMEOUT
    )
    futures[topic].result(timeout=30)
    metadata = admin.list_topics(timeout=TIMEOUT)
    assert topic in metadata.topics
    assert len(metadata.brokers) >= 1

    delivered: list[Any] = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    payload = json.dumps({"twin": "pump-1", "v": 42.5}).encode()
    producer.produce(
        topic,
        key=b"pump-1",
        value=payload,
        headers={"codec": b"json"},
        on_delivery=lambda err, msg: delivered.append((err, msg)),
    )
    assert producer.flush(30) == 0
    ((err, dmsg),) = delivered
    assert err is None
    assert dmsg.offset() == 0

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dte-smoke-{_uid()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        got: list[Any] = []
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10, timeout=0.25):
                if msg.error():
                    raise KafkaException(msg.error())
                got.append(msg)
        assert got, "the record was not consumed within 60 s"
        consumer.commit(message=got[0], asynchronous=False)
    finally:
        consumer.close()
    (msg,) = got
    assert msg.topic() == topic
    assert msg.partition() == 0
    assert msg.offset() == 0
    assert msg.key() == b"pump-1"
    assert msg.value() == payload
    assert msg.headers() == [("codec", b"json")]


# --------------------------------------------------------------------------------------------
# InfluxDB 1.x
# --------------------------------------------------------------------------------------------


def test_influxdb1_write_and_query(influxdb: Any) -> None:
    db = f"dte_smoke_{_uid()}"

    def query(q: str, **params: str) -> dict[str, Any]:
        qs = urllib.parse.urlencode({"q": q, **params})
        status, body = http("POST", f"{influxdb.url}/query?{qs}")
        assert status == 200, body
        return json.loads(body)

    query(f'CREATE DATABASE "{db}"')
    try:
        ts = time.time_ns()
        line = f'smoke,twin=pump-1 value=42.5,status="ok" {ts}'
        status, body = http("POST", f"{influxdb.url}/write?db={db}&precision=ns", line)
        assert status == 204, body
        result = query('SELECT "value", "status", "twin" FROM "smoke"', db=db, epoch="ns")
        (series,) = result["results"][0]["series"]
        assert series["name"] == "smoke"
        assert series["columns"] == ["time", "value", "status", "twin"]
        assert series["values"] == [[ts, 42.5, "ok", "pump-1"]]
    finally:
        query(f'DROP DATABASE "{db}"')


# --------------------------------------------------------------------------------------------
# InfluxDB v2 write API (VictoriaMetrics)
# --------------------------------------------------------------------------------------------


def test_victoriametrics_v2_write_api_and_export(victoriametrics: Any) -> None:
    twin = f"pump-{_uid()}"
    ts_ms = int(time.time() * 1000)
    with InfluxDBClient(url=victoriametrics.url, token="x", org="o") as client:
        write_api = client.write_api(write_options=SYNCHRONOUS)
        write_api.write(
            bucket="b",
            record=f"smoke,twin={twin} temp=21.5 {ts_ms}",
            write_precision=WritePrecision.MS,
        )
        write_api.close()

    match = urllib.parse.urlencode({"match[]": f'smoke_temp{{twin="{twin}"}}'})
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + TIMEOUT
    while not rows and time.monotonic() < deadline:
        http("GET", f"{victoriametrics.url}/internal/force_flush")
        status, body = http("GET", f"{victoriametrics.url}/api/v1/export?{match}")
        assert status == 200, body
        rows = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not rows:
            time.sleep(0.2)
    assert rows, "the point written through /api/v2/write was not exported"
    (row,) = rows
    assert row["metric"]["__name__"] == "smoke_temp"
    assert row["metric"]["twin"] == twin
    assert row["values"] == [21.5]
    assert row["timestamps"] == [ts_ms]


# --------------------------------------------------------------------------------------------
# Alertmanager
# --------------------------------------------------------------------------------------------


def test_alertmanager_receives_alert(alertmanager: Any) -> None:
    name = f"DteSmoke{_uid()}"
    now = datetime.now(UTC)
    alert = {
        "labels": {"alertname": name, "twin": "pump-1", "severity": "warning"},
        "annotations": {"summary": "pump-1 residual above threshold"},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }
    status, body = http("POST", f"{alertmanager.url}/api/v2/alerts", json.dumps([alert]), "application/json")
    assert status == 200, body

    flt = urllib.parse.urlencode({"filter": f'alertname="{name}"'})
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        status, body = http("GET", f"{alertmanager.url}/api/v2/alerts?{flt}")
        assert status == 200, body
        found = json.loads(body)
        if found and found[0]["status"]["state"] == "active":
            break
        time.sleep(0.2)
    (got,) = found
    assert got["labels"] == alert["labels"]
    assert got["annotations"] == alert["annotations"]
    assert got["status"]["state"] == "active"
    assert [r["name"] for r in got["receivers"]] == ["default"]
