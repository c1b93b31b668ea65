"""The MQTT source survives a broker restart: a private Mosquitto (persistence on) is stopped
and started again on the same ports while the dataflow runs. The outage is logged once (not once
per reconnect attempt) and counted, and every message is delivered exactly once."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import paho.mqtt.client as mqtt
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from ci import skip_or_fail
from daemon_ready import wait_subscribed
from paho.mqtt.enums import CallbackAPIVersion

from dte_stream.batches import RawBatch
from dte_stream.connectors.mqtt import MqttSource
from dte_stream.metrics import METRICS
from dte_stream.spec.mqtt import MqttSourceSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def private_broker(devservices_api: Any, tmp_path: Path) -> Iterator[Any]:
    """A Mosquitto of this test only, so it can be stopped and started again."""
    try:
        devservices_api.check_installed("mosquitto")
    except devservices_api.ServiceUnavailable as exc:
        skip_or_fail(str(exc))
    svc = devservices_api.start("mosquitto", tmp_path / "mosquitto")
    try:
        yield svc
    finally:
        devservices_api.stop(svc)


def restart(devservices_api: Any, svc: Any, down_seconds: float) -> None:
    """Stop the broker (it saves its sessions), wait, start it with the same configuration."""
    devservices_api.stop(svc)
    time.sleep(down_seconds)
    # Started from the scenario thread, so no `setpriv --pdeathsig` (it fires when the thread
    # ends); the fixture stops this process (svc.process) at the end of the test.
    command = [devservices_api.find_binary("mosquitto"), "-c", str(svc.state_dir / "mosquitto.conf")]
    with svc.log_file.open("ab") as log:
        svc.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=svc.state_dir,
        )
    svc.pid = svc.process.pid
    devservices_api.wait_ready(svc, 15)


def publish(svc: Any, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(svc.host, svc.port)
    client.loop_start()
    try:
        for info in [client.publish(topic, payload, 1) for topic, payload in messages]:
            info.wait_for_publish(20)
    finally:
        client.disconnect()
        client.loop_stop()
        client._reset_sockets()  # paho closes its wake-up sockets only in __del__


def wait_metric(name: str, value: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while METRICS.get(name) < value:
        assert time.monotonic() < deadline, f"{name} did not reach {value}"
        time.sleep(0.05)


def test_source_recovers_from_a_broker_restart_and_logs_the_outage_once(
    private_broker: Any, devservices_api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "dte_stream.connectors.mqtt")
    svc = private_broker
    spec = MqttSourceSpec(
        kind="mqtt",
        name="plant",
        url=f"mqtt://{svc.host}:{svc.port}",
        client_id="dte-test-restart",
        subscriptions=[{"topic": "plant/#", "template": "plant/{twin}/{channel}"}],
        reconnect_min_delay=0.2,
        reconnect_max_delay=0.5,
        batch_latency=0.01,
        stop_after_idle=4.0,  # long enough for the reconnection to count as stable (3 s)
    )
    before = [("plant/p-1/temp", f"before {i}".encode()) for i in range(50)]
    after = [("plant/p-1/temp", f"after {i}".encode()) for i in range(50)]
    received = METRICS.get("mqtt_messages_in")
    disconnects, reconnects = METRICS.get("mqtt_disconnects"), METRICS.get("mqtt_reconnects")
    failures: list[BaseException] = []

    def scenario() -> None:
        try:
            wait_subscribed()
            publish(svc, before)
            wait_metric("mqtt_messages_in", received + len(before))
            time.sleep(1.0)  # several epochs: the messages are acknowledged
            restart(devservices_api, svc, down_seconds=2.5)  # several reconnect attempts fail
            publish(svc, after)  # into the persistent session, or live if already reconnected
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    thread = threading.Thread(target=scenario, daemon=True)
    thread.start()
    out: list[RawBatch] = []
    flow = Dataflow("mqtt_restart")
    op.output("out", op.input("source_plant", flow, MqttSource(spec)), TestingSink(out))
    run_main(flow, epoch_interval=timedelta(seconds=0.2))
    thread.join(30)
    assert not failures, failures

    got = [p for batch in out for p, _ in batch.payloads]
    assert Counter(got) == Counter(p for _, p in before + after)
    lost = [r for r in caplog.records if "lost the connection" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in lost]
    assert lost[0].levelname == "WARNING"
    assert "logged once per outage" in lost[0].getMessage()
    back = [r.getMessage() for r in caplog.records if "reconnected to" in r.getMessage()]
    assert len(back) == 1
    assert "session resumed" in back[0]
    assert METRICS.get("mqtt_disconnects") == disconnects + 1
    assert METRICS.get("mqtt_reconnects") == reconnects + 1
