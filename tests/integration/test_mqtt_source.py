"""MqttSource against a real Mosquitto: every message once with its context, persistent sessions
across restarts and crashes, shared subscriptions over two workers, TLS with client
certificates, password auth, hostile topics and dead letters, and clear errors."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import paho.mqtt.client as mqtt
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main
from bytewax.testing import TestingSink, run_main
from ci import skip_or_fail
from daemon_ready import wait_subscribed
from paho.mqtt.enums import CallbackAPIVersion

from dte_stream import shutdown
from dte_stream.batches import RawBatch
from dte_stream.codecs import get_codec
from dte_stream.connectors.mqtt import MqttSource
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.spec.mqtt import MqttSourceSpec

pytestmark = pytest.mark.integration

EPOCH = timedelta(seconds=0.2)
TEMPLATE = "{twin}/{channel}"


@contextmanager
def paho_client(broker: Any, *, port: int | None = None, **options: Any) -> Iterator[mqtt.Client]:
    """A connected paho client with its network thread; closed (sockets too) afterwards."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
    if "username" in options:
        client.username_pw_set(options["username"], options["password"])
    if "tls" in options:
        client.tls_set(*options["tls"])
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(broker.host, port or broker.port)
    client.loop_start()
    try:
        assert connected.wait(10), "the test client could not connect"
        yield client
    finally:
        client.disconnect()
        client.loop_stop()
        client._reset_sockets()  # paho closes its wake-up sockets only in __del__


def publish(broker: Any, messages: list[tuple[str, bytes]], qos: int = 1, **options: Any) -> None:
    """Publish and wait until the broker has every message (QoS 1) or it was sent (QoS 0)."""
    with paho_client(broker, **options) as client:
        infos = [client.publish(topic, payload, qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)


def source_spec(broker: Any, prefix: str, **changes: Any) -> MqttSourceSpec:
    data: dict[str, Any] = {
        "kind": "mqtt",
        "name": "plant",
        "url": f"mqtt://{broker.host}:{broker.port}",
        "client_id": f"dte-test-{prefix}",
        "subscriptions": [{"topic": f"{prefix}/#", "template": f"{prefix}/{TEMPLATE}"}],
        "batch_latency": 0.01,
        "stop_after_idle": 1.0,
        "connect_timeout": 10,
    }
    data.update(changes)
    return MqttSourceSpec.model_validate(data)


def changed(spec: MqttSourceSpec, **changes: Any) -> MqttSourceSpec:
    """A copy of ``spec`` with ``changes``, validated like a spec read from a file."""
    return MqttSourceSpec.model_validate({**spec.model_dump(exclude_unset=True), **changes})


def run_source(spec: MqttSourceSpec, name: str = "mqtt_test") -> list[RawBatch]:
    out: list[RawBatch] = []
    flow = Dataflow(name)
    batches = op.input("source_plant", flow, MqttSource(spec))
    op.output("out", batches, TestingSink(out))
    run_main(flow, epoch_interval=EPOCH)
    return out


def prime(spec: MqttSourceSpec) -> None:
    """Run the source once briefly: the broker then holds its persistent session."""
    assert payloads(run_source(changed(spec, stop_after_idle=0.05))) == []


def payloads(out: list[RawBatch]) -> list[bytes]:
    return [p for batch in out for p, _ in batch.payloads]


def letters(out: list[RawBatch]) -> list[Any]:
    return [d for batch in out for d in batch.errors]


def numbered(prefix: str, count: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}/twin-{i % 7}/temp", f'{{"value": {i}}}'.encode()) for i in range(start, start + count)
    ]


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def once_subscribed(action: Callable[[], None], clients: int = 1) -> threading.Thread:
    """Run ``action`` in a thread once the source's ``clients`` MQTT connections have their
    SUBACK: a message published before would reach no subscription."""

    def body() -> None:
        wait_subscribed(clients)
        action()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------


def test_live_messages_arrive_once_with_their_contexts_and_bad_ones_as_dead_letters(mosquitto: Any) -> None:
    p = prefix()
    hostile = ["pump 7", "pump,7", "pump=7", 'pump "7"', "pump '7'", "Pumpe-Süd-水", "🚰"]
    good = [(f"{p}/{twin}/temp {i}, °C", f"{i}.5".encode()) for i, twin in enumerate(hostile)]
    good += numbered(p, 300)
    bad = [
        (f"{p}/pump-1/temp/extra", b"1"),  # more levels than the template
        (f"{p}/pump-1/", b"2"),  # an empty level
        (f"{p}/ pump-1/temp", b"3"),  # whitespace around an id
        (f"{p}/pump-1/temp", b"x" * 2000),  # over max_payload_bytes
    ]
    spec = source_spec(mosquitto, p, max_payload_bytes=1000, twin_type="pump", stop_after_idle=1.5)
    before = time.time_ns()
    publisher = once_subscribed(lambda: publish(mosquitto, good + bad))
    out = run_source(spec)
    publisher.join()

    assert {(b.source, b.codec, b.twin_type) for b in out} == {("plant", "json", "pump")}
    got = [(p, c) for batch in out for p, c in batch.payloads]
    assert Counter(p for p, _ in got) == Counter(payload for _, payload in good)
    by_payload = dict(got)
    for i, twin in enumerate(hostile):
        context = by_payload[f"{i}.5".encode()]
        assert (context.twin_id, context.channel) == (twin, f"temp {i}, °C")
        assert context.source == f"mqtt://{mosquitto.host}:{mosquitto.port}/{p}/{twin}/temp {i}, °C"
        assert before <= context.received_ns <= time.time_ns()
        assert context.max_payload_bytes == 1000
        reading = get_codec("json").decode(f"{i}.5".encode(), context).readings.to_readings()[0]
        assert (reading.twin_id, reading.channel, reading.value) == (twin, f"temp {i}, °C", i + 0.5)
    reasons = sorted(d.reason for d in letters(out))
    assert len(reasons) == 4
    joined = " | ".join(reasons)
    assert "the topic has 4 levels" in joined
    assert "level 3 is empty" in joined
    assert "leading or trailing whitespace" in joined
    assert "payload of 2000 bytes is larger than max_payload_bytes=1000" in joined
    assert all(len(batch.payloads) + len(batch.errors) > 0 for batch in out)


@pytest.mark.parametrize("ack", ["after_epoch", "on_emit", "on_receive"])
def test_messages_published_while_down_arrive_exactly_once(mosquitto: Any, ack: str) -> None:
    p = prefix()
    spec = source_spec(mosquitto, p, ack=ack)
    prime(spec)
    first = numbered(p, 200)
    publish(mosquitto, first)  # the source is down: the broker queues them in the session
    part1 = payloads(run_source(changed(spec, stop_after_messages=80)))
    if ack == "on_receive":
        assert len(part1) >= 80  # paho acknowledged what it queued: emitted rather than lost
    else:
        assert len(part1) == 80
    second = numbered(p, 100, start=200)
    publish(mosquitto, second)  # down again
    part2 = payloads(run_source(spec))
    assert Counter(part1 + part2) == Counter(payload for _, payload in first + second)
    assert payloads(run_source(changed(spec, stop_after_idle=0.3))) == []


class _CrashingSink(DynamicSink[RawBatch]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[RawBatch]:
        class _Part(StatelessSinkPartition[RawBatch]):
            def write_batch(self, items: list[RawBatch]) -> None:
                raise RuntimeError("simulated crash before the readings were stored")

        return _Part()


def test_after_epoch_loses_nothing_when_the_dataflow_crashes(mosquitto: Any) -> None:
    p = prefix()
    spec = source_spec(mosquitto, p)
    prime(spec)
    messages = numbered(p, 50)
    publish(mosquitto, messages)
    flow = Dataflow("mqtt_crash")
    op.output("out", op.input("source_plant", flow, MqttSource(spec)), _CrashingSink())
    with pytest.raises(BytewaxRuntimeError):
        run_main(flow, epoch_interval=EPOCH)
    # nothing was acknowledged: the broker delivers every message again
    assert Counter(payloads(run_source(spec))) == Counter(payload for _, payload in messages)


def test_graceful_stop_request_ends_the_source(mosquitto: Any) -> None:
    p = prefix()
    spec = source_spec(mosquitto, p, stop_after_idle=None)
    messages = numbered(p, 30)
    seen = METRICS.get("mqtt_messages_in")

    def publish_then_stop() -> None:
        publish(mosquitto, messages)
        deadline = time.monotonic() + 20
        while METRICS.get("mqtt_messages_in") < seen + len(messages) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutdown.STOP.set()

    thread = once_subscribed(publish_then_stop)
    try:
        out = run_source(spec)
    finally:
        shutdown.STOP.clear()
        thread.join()
    assert Counter(payloads(out)) == Counter(payload for _, payload in messages)


def test_shared_subscription_splits_messages_over_two_workers(mosquitto: Any) -> None:
    p = prefix()
    spec = source_spec(
        mosquitto,
        p,
        clients=2,
        subscriptions=[{"topic": f"$share/dte/{p}/#", "template": f"{p}/{TEMPLATE}"}],
        stop_after_idle=1.5,
    )
    messages = numbered(p, 1000)
    out: list[RawBatch] = []
    workers: Counter[int] = Counter()
    lock = threading.Lock()

    def note(_step: str, batch: RawBatch, _epoch: int, worker: int) -> None:
        with lock:
            workers[worker] += len(batch.payloads)

    flow = Dataflow("mqtt_shared")
    batches = op.input("source_plant", flow, MqttSource(spec))
    op.output("out", op.inspect_debug("which_worker", batches, note), TestingSink(out))
    publisher = once_subscribed(lambda: publish(mosquitto, messages), clients=2)
    cli_main(flow, workers_per_process=2, epoch_interval=EPOCH)  # type: ignore[no-untyped-call]
    publisher.join()
    assert Counter(payloads(out)) == Counter(payload for _, payload in messages)
    assert sorted(workers) == [0, 1], "both workers' clients should get a share"
    assert sum(workers.values()) == len(messages)


def test_tls_with_a_client_certificate(mosquitto: Any) -> None:
    if not (mosquitto.tls_port and mosquitto.ca_file and mosquitto.cert_file):
        skip_or_fail("the broker has no TLS listener with client certificates")
    p = prefix()
    tls = {
        "ca_file": str(mosquitto.ca_file),
        "cert_file": str(mosquitto.cert_file),
        "key_file": str(mosquitto.key_file),
    }
    spec = source_spec(mosquitto, p, url=f"mqtts://{mosquitto.host}:{mosquitto.tls_port}", tls=tls)
    messages = numbered(p, 40)
    publisher = once_subscribed(lambda: publish(mosquitto, messages))
    out = run_source(spec)
    publisher.join()
    assert Counter(payloads(out)) == Counter(payload for _, payload in messages)
    assert {c.source.split("/")[2] for b in out for _, c in b.payloads} == {
        f"{mosquitto.host}:{mosquitto.tls_port}"
    }

    # localhost is in the broker certificate too; the hostname check passes for it
    spec = changed(spec, url=f"mqtts://localhost:{mosquitto.tls_port}", stop_after_idle=0.1)
    run_source(spec)


def test_tls_errors_are_clear(mosquitto: Any) -> None:
    if not (mosquitto.tls_port and mosquitto.ca_file and mosquitto.cert_file):
        skip_or_fail("the broker has no TLS listener with client certificates")
    url = f"mqtts://{mosquitto.host}:{mosquitto.tls_port}"
    no_client_cert = source_spec(mosquitto, prefix(), url=url, tls={"ca_file": str(mosquitto.ca_file)})
    with pytest.raises(ConnectorError) as info:
        MqttSource(no_client_cert).build_part("s", "plant-0", None)
    assert url in str(info.value)
    assert "client certificate" in str(info.value)

    untrusted = source_spec(mosquitto, prefix(), url=url, tls={"ca_file": str(mosquitto.cert_file)})
    with pytest.raises(ConnectorError, match="certificate was not accepted"):
        MqttSource(untrusted).build_part("s", "plant-0", None)

    plain_port = source_spec(
        mosquitto, prefix(), url=f"mqtts://{mosquitto.host}:{mosquitto.port}", connect_timeout=3
    )
    with pytest.raises(ConnectorError, match="TLS handshake failed"):
        MqttSource(plain_port).build_part("s", "plant-0", None)

    tls_port_plain = source_spec(
        mosquitto, prefix(), url=f"mqtt://{mosquitto.host}:{mosquitto.tls_port}", connect_timeout=3
    )
    with pytest.raises(ConnectorError, match="is this a TLS port"):
        MqttSource(tls_port_plain).build_part("s", "plant-0", None)


def test_password_auth_and_a_wrong_password(mosquitto: Any) -> None:
    if not (mosquitto.auth_port and mosquitto.username):
        skip_or_fail("the broker has no password listener")
    p = prefix()
    url = f"mqtt://{mosquitto.host}:{mosquitto.auth_port}"
    spec = source_spec(mosquitto, p, url=url, username=mosquitto.username, password=mosquitto.password)
    messages = numbered(p, 20)
    publisher = once_subscribed(lambda: publish(mosquitto, messages))
    assert Counter(payloads(run_source(spec))) == Counter(payload for _, payload in messages)
    publisher.join()

    for protocol in ("5", "3.1.1"):
        wrong = changed(spec, password="not-the-password", protocol=protocol)
        with pytest.raises(ConnectorError) as info:
            MqttSource(wrong).build_part("s", "plant-0", None)
        text = str(info.value)
        assert url in text
        assert "refused the connection" in text
        assert "Not authorized" in text or "Bad user name or password" in text
        assert "not-the-password" not in text
    anonymous = changed(spec, username=None, password=None)
    with pytest.raises(ConnectorError, match="refused the connection"):
        MqttSource(anonymous).build_part("s", "plant-0", None)

    # inside a dataflow the same error is the cause of Bytewax's error
    flow = Dataflow("mqtt_wrong_password")
    wrong = changed(spec, password="not-the-password")
    op.output("out", op.input("source_plant", flow, MqttSource(wrong)), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as failure:
        run_main(flow)
    causes = []
    exc: BaseException | None = failure.value
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(c, ConnectorError) and url in str(c) for c in causes)


def test_mqtt_311_persistent_session(mosquitto: Any) -> None:
    p = prefix()
    spec = source_spec(mosquitto, p, protocol="3.1.1")
    prime(spec)
    messages = numbered(p, 60)
    publish(mosquitto, messages)
    assert Counter(payloads(run_source(spec))) == Counter(payload for _, payload in messages)


def test_qos0_subscription_and_several_subscriptions(mosquitto: Any) -> None:
    p = prefix()
    spec = source_spec(
        mosquitto,
        p,
        subscriptions=[
            {"topic": f"{p}/json/#", "qos": 0, "template": f"{p}/json/{TEMPLATE}"},
            {"topic": f"{p}/senml/#", "codec": "senml", "twin_type": "valve"},
        ],
    )
    pack = b'[{"bn": "v-1:", "n": "flow", "v": 2.5}]'
    messages = [(f"{p}/json/t1/temp", b"21.5"), (f"{p}/senml/line-1", pack)]
    publisher = once_subscribed(lambda: publish(mosquitto, messages, qos=0))
    out = run_source(spec)
    publisher.join()
    assert sorted((b.codec, b.twin_type, [p for p, _ in b.payloads]) for b in out) == [
        ("json", None, [b"21.5"]),
        ("senml", "valve", [pack]),
    ]


def test_a_full_buffer_slows_receiving_down_and_loses_nothing(mosquitto: Any) -> None:
    p = prefix()
    spec = source_spec(mosquitto, p, max_buffered_messages=10, batch_size=7)
    prime(spec)
    messages = numbered(p, 500)
    publish(mosquitto, messages)
    out = run_source(spec)
    assert Counter(payloads(out)) == Counter(payload for _, payload in messages)
    assert max(len(b.payloads) for b in out) <= 7


def test_two_clients_with_one_id_are_reported_once_not_per_reconnect(
    mosquitto: Any, caplog: pytest.LogCaptureFixture
) -> None:
    spec = source_spec(mosquitto, prefix(), reconnect_min_delay=0.1, reconnect_max_delay=0.2)
    first = MqttSource(spec).build_part("s", "plant-0", None)
    second = MqttSource(spec).build_part("s", "plant-0", None)  # Mosquitto drops the first one
    try:
        deadline = time.monotonic() + 15
        while "same client id" not in caplog.text and time.monotonic() < deadline:
            assert first.next_batch() == []
            assert second.next_batch() == []
            time.sleep(0.05)
    finally:
        first.close()
        second.close()
    lost = [r for r in caplog.records if "lost the connection" in r.getMessage()]
    assert 1 <= len(lost) <= 2  # once per client, however often they took the id from each other
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "same client id" in r.getMessage()]
    assert errors
    assert "'dte-test-" in errors[0].getMessage()
