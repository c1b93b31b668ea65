"""Kafka with SASL/SCRAM and TLS against the real broker: source and sink, and refusals.

The ``kafka`` fixture's broker (deploy/services/devservices.py) has a SASL_PLAINTEXT and a
SASL_SSL listener for a SCRAM-SHA-512 user created with Kafka's own storage tool, and a
server certificate made with openssl. A dataflow reads readings through SASL_SSL and writes its
estimates back through SASL_SSL; a wrong password and an untrusted CA end the start with one
line, and the password appears nowhere in what the command prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.integration

T0_NS = 1_767_225_600 * 10**9


def _secure(kafka: Any) -> None:
    if kafka.external or not kafka.sasl_ssl_port:
        pytest.skip("the broker was given by DTE_TEST_KAFKA_BOOTSTRAP; SASL needs the one devservices starts")


def _client(kafka: Any, protocol: str = "SASL_SSL", password: str | None = None) -> dict[str, str]:
    port = kafka.sasl_ssl_port if protocol == "SASL_SSL" else kafka.sasl_port
    config = {
        "bootstrap.servers": f"127.0.0.1:{port}",
        "security.protocol": protocol,
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": kafka.username,
        "sasl.password": kafka.password if password is None else password,
    }
    if protocol == "SASL_SSL":
        config["ssl.ca.location"] = str(kafka.ca_file)
    return config


def _settings(kafka: Any, protocol: str = "SASL_SSL", ca_file: Path | None = None) -> dict[str, str]:
    settings = {
        "security.protocol": protocol,
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": kafka.username,
        "sasl.password": "${KAFKA_PASSWORD}",
    }
    if protocol == "SASL_SSL":
        settings["ssl.ca.location"] = str(ca_file or kafka.ca_file)
    return settings


def _flow(
    kafka: Any, topic: str, out_topic: str, protocol: str, ca_file: Path | None = None
) -> dict[str, Any]:
    port = kafka.sasl_ssl_port if protocol == "SASL_SSL" else kafka.sasl_port
    return {
        "name": "secure_kafka",
        "sources": [
            {
                "kind": "kafka",
                "name": "plant",
                "bootstrap_servers": f"127.0.0.1:{port}",
                "topics": [topic],
                "twin_type": "pump",
                "stop_at_end": True,
                "startup_timeout": "5s",
                "settings": _settings(kafka, protocol, ca_file),
            }
        ],
        "twin_types": [{"name": "pump", "channels": {"temperature": {"unit": "degC"}}}],
        "sinks": [
            {
                "kind": "kafka",
                "name": "estimates",
                "bootstrap_servers": f"127.0.0.1:{port}",
                "topic": out_topic,
                "create_topic": {"partitions": 1},
                "settings": _settings(kafka, protocol, ca_file),
            }
        ],
        "dead_letters": {"path": "dead_letters.jsonl"},
    }


def _run(tmp_path: Path, flow: dict[str, Any], password: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"flow-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "dte_stream", "run", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "KAFKA_PASSWORD": password},
        check=False,
    )


def _produce(kafka: Any, topic: str, count: int) -> None:
    config = _client(kafka)
    admin = AdminClient(config)  # held: the handle must outlive the request
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    producer = Producer(config)
    for k in range(count):
        reading = {
            "twin_id": f"pump-{k % 5}",
            "channel": "temperature",
            "time_ns": T0_NS + k * 10**9,
            "value": 20.0,
        }
        producer.produce(topic, orjson.dumps(reading), key=reading["twin_id"].encode())
    assert producer.flush(30) == 0


def _estimates(kafka: Any, topic: str, protocol: str) -> int:
    consumer = Consumer(
        {**_client(kafka, protocol), "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    seen = 0
    try:
        empty = 0
        while empty < 10:
            messages = consumer.consume(500, timeout=1.0)
            if not messages:
                empty += 1
                continue
            for message in messages:
                assert message.error() is None, message.error()
                seen += len(orjson.loads(message.value())["estimates"])
    finally:
        consumer.close()
    return seen


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_source_and_sink_through_scram(kafka: Any, tmp_path: Path, protocol: str) -> None:
    _secure(kafka)
    topic, out = f"secure-in-{uuid.uuid4().hex[:8]}", f"secure-out-{uuid.uuid4().hex[:8]}"
    _produce(kafka, topic, 200)
    result = _run(tmp_path, _flow(kafka, topic, out, protocol), kafka.password)
    assert result.returncode == 0, result.stderr
    assert "200 readings processed" in result.stderr
    assert _estimates(kafka, out, protocol) == 200  # each reading's estimate, read back over SASL
    assert kafka.password not in result.stderr + result.stdout


def test_a_wrong_scram_password_is_one_line(kafka: Any, tmp_path: Path) -> None:
    _secure(kafka)
    result = _run(tmp_path, _flow(kafka, "anything", "out", "SASL_SSL"), "not-the-password-4711")
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert f"Kafka at 127.0.0.1:{kafka.sasl_ssl_port} refused the credentials" in lines[0]
    assert "sasl.username and sasl.password" in lines[0]
    assert "not-the-password-4711" not in result.stderr


def test_an_untrusted_broker_certificate_is_one_line(kafka: Any, tmp_path: Path) -> None:
    _secure(kafka)
    other_ca = tmp_path / "other-ca.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other"]
    subprocess.run(
        [*request, "-keyout", str(tmp_path / "o.key"), "-out", str(other_ca)], check=True, capture_output=True
    )
    result = _run(tmp_path, _flow(kafka, "anything", "out", "SASL_SSL", ca_file=other_ca), kafka.password)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "TLS handshake" in lines[0]
    assert "ssl.ca.location" in lines[0]


def test_a_view_url_with_tls_and_sasl_settings_writes_and_reads_the_view_topic(
    kafka: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve --view 'kafka://...?security.protocol=SASL_SSL&...'``: the settings of the URL reach
    the view's writer and reader, which talk to the SASL_SSL listener (the password from the
    environment)."""
    import time

    from dte_stream.connectors.kafka.view import KafkaViewWriter
    from dte_stream.connectors.kafka.view_reader import KafkaViewReader
    from dte_stream.readiness import Readiness
    from dte_stream.spec.kafka import KafkaTopicCreationSpec
    from dte_stream.spec.view import parse_view_url
    from dte_stream.view import TwinView

    _secure(kafka)
    monkeypatch.setenv("KAFKA_PASSWORD", kafka.password)
    topic = f"secure-view-{uuid.uuid4().hex[:8]}"
    url = (
        f"kafka://127.0.0.1:{kafka.sasl_ssl_port}/{topic}?security.protocol=SASL_SSL"
        f"&sasl.mechanism=SCRAM-SHA-512&sasl.username={kafka.username}&sasl.password=${{KAFKA_PASSWORD}}"
        f"&ssl.ca.location={kafka.ca_file}"
    )
    spec = parse_view_url(url)
    assert spec.client_config()["sasl.password"] == kafka.password
    writer = KafkaViewWriter.open(spec.model_copy(update={"create_topic": KafkaTopicCreationSpec()}))
    record = {"twin_id": "p-1", "twin_type": "pump", "labels": {}, "last_seen_ns": 1, "alert_state": "ok",
              "anomaly_score": None, "channels": {}, "models": [], "alerts": []}  # fmt: skip
    writer.put([record], 5, [])
    assert writer.flush(30) == 0
    writer.close()
    view = TwinView.open(tmp_path)
    follower = KafkaViewReader(parse_view_url(url), view, readiness=Readiness()).start()
    try:
        assert follower.caught_up.wait(60), "the reader did not reach the end of the topic over SASL_SSL"
        deadline = time.monotonic() + 60  # a liveness bound on a loaded machine, not a timing check
        while view.get_twin("p-1") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        got = view.get_twin("p-1")
        assert got is not None
        assert got["updated_ns"] == 5
    finally:
        follower.stop()
        view.close()
