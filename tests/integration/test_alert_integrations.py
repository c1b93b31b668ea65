"""Alert integrations against real receivers: Alertmanager's v2 API, Mosquitto, Kafka, and a
local HTTP server for the webhook (HMAC check, 500 answers, a port that refuses at first)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion

from dte_stream.batches import AlertEvent
from dte_stream.connectors.alerting import AlertDispatcher, metric_name, verify_signature
from dte_stream.metrics import METRICS
from dte_stream.spec.notify import NOTIFIERS

pytestmark = pytest.mark.integration

S = 1_000_000_000


def event(rule: str, state: str = "firing", seq: int = 0, twin: str = "pump-1") -> AlertEvent:
    now = time.time_ns()
    return AlertEvent(
        f"{twin}/{rule}",
        twin,
        "pump",
        rule,
        state,  # type: ignore[arg-type]
        "critical",
        starts_ns=now - 60 * S,
        time_ns=now,
        message="temperature 97.5 > 95",
        labels={"site": "north"},
        value=97.5,
        ends_ns=now if state == "resolved" else None,
        sequence=seq,
    )


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def counts(name: str) -> tuple[int, int, int]:
    return (
        METRICS.get(metric_name("alerts_sent", name)),
        METRICS.get(metric_name("alerts_failed_attempts", name)),
        METRICS.get(metric_name("alerts_dropped", name)),
    )


def dispatcher(*items: dict[str, Any]) -> AlertDispatcher:
    return AlertDispatcher(NOTIFIERS.validate_python(list(items)))


FAST = {"backoff": 0.05, "max_backoff": 0.2}


# --------------------------------------------------------------------------------------------
# Alertmanager
# --------------------------------------------------------------------------------------------


def am_alerts(url: str, rule: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"filter": f'alertname="{rule}"'})
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=5) as response:
        data: list[dict[str, Any]] = json.loads(response.read())
    return data


def wait_until(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_alertmanager_fires_then_resolves(alertmanager: Any) -> None:
    rule, name = unique("overheat"), unique("am")
    with dispatcher(
        {
            "kind": "alertmanager",
            "name": name,
            "url": alertmanager.url,
            "labels": {"env": "test"},
            "retries": FAST,
        }
    ) as d:
        d.send([event(rule)])
        assert d.flush(10)
        alerts = wait_until(lambda: am_alerts(alertmanager.url, rule))
        assert len(alerts) == 1
        alert = alerts[0]
        assert alert["labels"] == {
            "alertname": rule,
            "twin_id": "pump-1",
            "twin_type": "pump",
            "severity": "critical",
            "site": "north",
            "env": "test",
        }
        assert alert["annotations"] == {
            "alert_id": f"pump-1/{rule}",
            "message": "temperature 97.5 > 95",
            "value": "97.5",
        }
        assert alert["status"]["state"] == "active"

        d.send([event(rule, "resolved", seq=1)])
        assert d.flush(10)
        # A resolved alert (endsAt passed) is no longer listed by GET /api/v2/alerts.
        assert wait_until(lambda: not am_alerts(alertmanager.url, rule))
    assert counts(name) == (2, 0, 0)


# --------------------------------------------------------------------------------------------
# MQTT and Kafka
# --------------------------------------------------------------------------------------------


@contextmanager
def subscriber(broker: Any, topic: str) -> Iterator[list[tuple[str, bytes]]]:
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, m: got.append((m.topic, m.payload))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        yield got
    finally:
        client.disconnect()
        client.loop_stop()
        client._reset_sockets()  # paho closes its wake-up sockets only in __del__


def test_mqtt_subscriber_receives_the_json(mosquitto: Any) -> None:
    name, prefix = unique("mqtt"), unique("alerts")
    with subscriber(mosquitto, f"{prefix}/#") as got:
        with dispatcher(
            {
                "kind": "mqtt",
                "name": name,
                "url": f"mqtt://{mosquitto.host}:{mosquitto.port}",
                "topic": prefix + "/{twin_id}/{rule}/{state}",
                "retries": FAST,
            }
        ) as d:
            events = [event("hot", twin="p/1"), event("hot", "resolved", seq=1, twin="p/1")]
            d.send(events)
            assert d.flush(15)
        wait_until(lambda: len(got) >= 2, 10)
        time.sleep(0.2)
    assert [t for t, _ in got] == [f"{prefix}/p%2F1/hot/firing", f"{prefix}/p%2F1/hot/resolved"]
    assert [orjson.loads(p) for _, p in got] == [e.to_json_dict() for e in events]
    assert counts(name) == (2, 0, 0)


def test_kafka_consumer_receives_it_keyed_by_alert_id(kafka: Any) -> None:
    name, topic = unique("kafka"), f"dte-test-alerts-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    events = [
        event("hot", twin="p-1"),
        event("cold", twin="p-2"),
        event("hot", "resolved", seq=1, twin="p-1"),
    ]
    with dispatcher(
        {
            "kind": "kafka",
            "name": name,
            "bootstrap_servers": kafka.bootstrap_servers,
            "topic": topic,
            "retries": FAST,
        }
    ) as d:
        d.send(events)
        assert d.flush(30)
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "dte-test-alerts"})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(2)])
        got: list[tuple[bytes, bytes, int]] = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=100, timeout=0.5):
                assert msg.error() is None
                got.append((msg.key(), msg.value(), msg.partition()))
    finally:
        consumer.close()
    assert sorted((k, orjson.loads(v)["sequence"]) for k, v, _ in got) == [
        (b"p-1/hot", 0),
        (b"p-1/hot", 1),
        (b"p-2/cold", 0),
    ]
    hot = [orjson.loads(v) for k, v, _ in got if k == b"p-1/hot"]
    assert hot == [events[0].to_json_dict(), events[2].to_json_dict()]  # in order: one key, one partition
    assert counts(name) == (3, 0, 0)


# --------------------------------------------------------------------------------------------
# Webhook against a local HTTP server
# --------------------------------------------------------------------------------------------


class Receiver(http.server.ThreadingHTTPServer):
    """Records every POST; answers each with the next status of ``statuses`` (then 200)."""

    def __init__(self, port: int = 0, statuses: list[int] | None = None) -> None:
        self.requests: list[tuple[int, dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        super().__init__(("127.0.0.1", port), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook?token=abc"

    def accepted(self) -> list[bytes]:
        return [body for status, _, body in self.requests if status == 200]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.server.requests.append((status, dict(self.headers.items()), body))
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"nope" if status != 200 else b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def receiver(port: int = 0, statuses: list[int] | None = None) -> Iterator[Receiver]:
    server = Receiver(port, statuses)
    server.thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_is_signed_and_the_receiver_verifies_it() -> None:
    name = unique("hook")
    with receiver() as server:
        with dispatcher(
            {
                "kind": "webhook",
                "name": name,
                "url": server.url,
                "secret": "s3cret",
                "headers": {"X-Team": "ops"},
            }
        ) as d:
            e = event("hot")
            d.send([e])
            assert d.flush(10)
        ((status, headers, body),) = server.requests
    assert status == 200
    assert orjson.loads(body) == e.to_json_dict()
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Team"] == "ops"
    assert verify_signature("s3cret", body, headers["X-DTE-Timestamp"], headers["X-DTE-Signature"])
    assert not verify_signature("wrong", body, headers["X-DTE-Timestamp"], headers["X-DTE-Signature"])


def test_webhook_500_twice_then_200_delivers_exactly_once() -> None:
    name = unique("hook")
    with receiver(statuses=[500, 500]) as server:
        with dispatcher({"kind": "webhook", "name": name, "url": server.url, "retries": FAST}) as d:
            e = event("hot")
            d.send([e])
            assert d.flush(10)
        assert [s for s, _, _ in server.requests] == [500, 500, 200]
        assert [orjson.loads(b) for b in server.accepted()] == [e.to_json_dict()]
    assert counts(name) == (1, 2, 0)


def test_webhook_4xx_is_not_retried() -> None:
    name = unique("hook")
    with receiver(statuses=[400]) as server:
        with dispatcher({"kind": "webhook", "name": name, "url": server.url, "retries": FAST}) as d:
            d.send([event("hot")])
            assert d.flush(10)
        assert [s for s, _, _ in server.requests] == [400]
    assert counts(name) == (0, 1, 1)


def test_refused_connection_is_retried_until_a_server_listens() -> None:
    name = unique("hook")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook"
    with dispatcher(
        {"kind": "webhook", "name": name, "url": url, "retries": {"backoff": 0.1, "max_backoff": 0.3}}
    ) as d:
        e = event("hot")
        d.send([e])
        assert wait_until(lambda: counts(name)[1] >= 2, 5)  # refused, retried
        assert not d.flush(0.1)
        with receiver(port) as server:
            assert d.flush(10)
            assert [orjson.loads(b) for b in server.accepted()] == [e.to_json_dict()]
    sent, failed, dropped = counts(name)
    assert sent == 1
    assert failed >= 2
    assert dropped == 0
