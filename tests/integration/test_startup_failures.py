"""Start-up failures against the real services: one line with the cause and the fix, exit code 2.

Each case runs ``dte-stream run --quiet SPEC`` with one thing wrong (a missing topic, a port
where no broker listens, a wrong password, a certificate that is not trusted) and checks the
whole of stderr: exactly one line, naming the cause and what to do, no traceback and no engine
panic; ``--debug`` shows the details.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.integration

PUMP = {"name": "pump", "channels": {"temperature": {"unit": "degC"}}}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(
    tmp_path: Path, spec: dict[str, Any], *extra: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"flow-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "dte_stream", *extra, "run", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**os.environ, "RUST_BACKTRACE": "1"},  # the panic filter must hold even so
        check=False,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed start; fails the test on anything more."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, f"exit {result.returncode}:\n{result.stderr}"
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert "panicked" not in result.stderr
    assert lines[0].startswith("dte-stream: error: ")
    return lines[0]


def _kafka_flow(
    bootstrap: str, topic: str, *, settings: dict[str, str] | None = None, **source: Any
) -> dict[str, Any]:
    return {
        "name": "startup",
        "sources": [
            {
                "kind": "kafka",
                "name": "plant",
                "bootstrap_servers": bootstrap,
                "topics": [topic],
                "twin_type": "pump",
                "stop_at_end": True,
                "startup_timeout": "5s",
                **({"settings": settings} if settings else {}),
                **source,
            }
        ],
        "twin_types": [PUMP],
        "sinks": [{"kind": "local_store", "data_dir": "data"}],
    }


def _influx_flow(url: str, **sink: Any) -> dict[str, Any]:
    return {
        "name": "startup",
        "sources": [{"kind": "file", "path": "readings.jsonl", "twin_type": "pump"}],
        "twin_types": [PUMP],
        "sinks": [{"kind": "influxdb", "url": url, "database": "dte", "timeout": "3s", **sink}],
    }


def test_a_missing_kafka_topic_says_how_to_create_it(kafka: Any, tmp_path: Path) -> None:
    topic = f"absent-{uuid.uuid4().hex[:8]}"
    line = _one_line(_run(tmp_path, _kafka_flow(kafka.bootstrap_servers, topic)))
    assert f"topic '{topic}' does not exist at Kafka {kafka.bootstrap_servers}" in line
    assert f"kafka-topics.sh --bootstrap-server {kafka.bootstrap_servers} --create --topic {topic}" in line
    assert "create_topic: {partitions: N}" in line


def test_create_topic_creates_a_missing_topic(kafka: Any, tmp_path: Path) -> None:
    topic = f"created-{uuid.uuid4().hex[:8]}"
    flow = _kafka_flow(kafka.bootstrap_servers, topic, create_topic={"partitions": 3})
    result = _run(tmp_path, flow)
    assert result.returncode == 0, result.stderr
    metadata = AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(topic, timeout=10)
    assert len(metadata.topics[topic].partitions) == 3


def test_no_kafka_broker_at_the_address(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    line = _one_line(_run(tmp_path, _kafka_flow(address, "sensors")))
    assert time.monotonic() - started < 60
    assert f"source plant: no Kafka broker answers at {address} within 5 s" in line
    assert "Connection refused" in line
    assert "start the broker, or fix bootstrap_servers" in line


def test_kafka_tls_to_a_plaintext_listener_names_the_handshake(kafka: Any, tmp_path: Path) -> None:
    flow = _kafka_flow(kafka.bootstrap_servers, "sensors", settings={"security.protocol": "SSL"})
    line = _one_line(_run(tmp_path, flow))
    assert f"Kafka at {kafka.bootstrap_servers}" in line
    assert "ssl.ca.location" in line or "security.protocol" in line


def test_influxdb_not_running(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    (tmp_path / "readings.jsonl").write_text("")
    line = _one_line(_run(tmp_path, _influx_flow(url)))
    assert f"sink influxdb: InfluxDB at {url}" in line
    assert "connection refused (is InfluxDB running at this address? check url)" in line


def test_influxdb_https_to_a_plain_http_server(influxdb: Any, tmp_path: Path) -> None:
    url = influxdb.url.replace("http://", "https://")
    (tmp_path / "readings.jsonl").write_text("")
    line = _one_line(_run(tmp_path, _influx_flow(url)))
    assert "TLS handshake failed" in line


def test_influxdb_refuses_the_credentials(influxdb_with_auth: Any, tmp_path: Path) -> None:
    (tmp_path / "readings.jsonl").write_text("")
    flow = _influx_flow(influxdb_with_auth.url, username="admin", password="${WRONG_PASSWORD}")
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(flow))
    result = subprocess.run(
        [sys.executable, "-m", "dte_stream", "run", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "WRONG_PASSWORD": "wrong-password-4711"},
        check=False,
    )
    line = _one_line(result)
    assert "authentication failed, check the username and password" in line
    assert "wrong-password-4711" not in result.stderr + result.stdout
    # and the right password gets through the same check
    ok = subprocess.run(
        [sys.executable, "-m", "dte_stream", "run", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "WRONG_PASSWORD": "right-password"},
        check=False,
    )
    assert ok.returncode == 0, ok.stderr


def _mqtt_flow(url: str, **source: Any) -> dict[str, Any]:
    return {
        "name": "startup",
        "sources": [
            {
                "kind": "mqtt",
                "name": "plant",
                "url": url,
                "twin_type": "pump",
                "subscriptions": [{"topic": "plant/+/+"}],
                "connect_timeout": "5s",
                **source,
            }
        ],
        "twin_types": [PUMP],
        "sinks": [{"kind": "local_store", "data_dir": "data"}],
    }


def test_a_wrong_mqtt_password(mosquitto: Any, tmp_path: Path) -> None:
    if not mosquitto.auth_port:
        pytest.skip("the MQTT broker has no password listener")
    url = f"mqtt://127.0.0.1:{mosquitto.auth_port}"
    flow = _mqtt_flow(url, username=mosquitto.username, password="nope-4711")
    result = _run(tmp_path, flow)
    line = _one_line(result)
    assert f"127.0.0.1:{mosquitto.auth_port}" in line
    assert "nope-4711" not in result.stderr


def test_an_untrusted_mqtt_server_certificate(mosquitto: Any, tmp_path: Path) -> None:
    if not mosquitto.tls_port:
        pytest.skip("the MQTT broker has no TLS listener")
    other_ca = tmp_path / "other-ca.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other"]
    subprocess.run(
        [*request, "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other_ca)],
        check=True,
        capture_output=True,
    )
    tls = {"ca_file": str(other_ca), "cert_file": str(mosquitto.cert_file)}
    tls["key_file"] = str(mosquitto.key_file)
    line = _one_line(_run(tmp_path, _mqtt_flow(f"mqtts://127.0.0.1:{mosquitto.tls_port}", tls=tls)))
    assert "certificate" in line.lower()


def test_debug_shows_the_details(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    (tmp_path / "readings.jsonl").write_text("")
    result = _run(tmp_path, _influx_flow(url), "--debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("dte-stream: error: sink influxdb: ")
