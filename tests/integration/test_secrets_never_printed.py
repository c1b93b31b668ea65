"""No secret the tests configure ever appears in what dte-stream and the services script print.

The secrets: the MQTT broker's password, the Kafka SCRAM password, an InfluxDB password (a
private InfluxDB with auth on), and the password of a URL with a wrong scheme. Every command
below runs with them configured (through ``${VAR}`` references, as the docs say), against the
real services, both with the right and with wrong credentials; everything each one writes to
stdout and stderr (the daemon's log lines included) is collected and searched for every secret.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_ready import free_port, wait_until_ready

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
URL_SECRET = "url-secret-5150"
WRONG = "wrong-secret-8086"


class Output:
    """Everything the commands printed, by command."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def run(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=180, cwd=cwd, env={**os.environ, **env}, check=False
        )
        self.texts[name] = result.stdout + result.stderr
        return result

    def leaks(self, secrets: list[str]) -> list[str]:
        return [
            f"{name}: {secret!r}" for name, text in self.texts.items() for secret in secrets if secret in text
        ]


def _dte(*args: str) -> list[str]:
    return [sys.executable, "-m", "dte_stream", *args]


def _spec(tmp_path: Path, mosquitto: Any, kafka: Any, influx: Any, topic: str) -> Path:
    secure_kafka = bool(kafka.sasl_ssl_port) and not kafka.external
    kafka_sink: dict[str, Any] = {
        "kind": "kafka",
        "name": "estimates",
        "bootstrap_servers": f"127.0.0.1:{kafka.sasl_ssl_port}" if secure_kafka else kafka.bootstrap_servers,
        "topic": f"estimates-{uuid.uuid4().hex[:8]}",
        "create_topic": {"partitions": 1},
    }
    if secure_kafka:
        kafka_sink["settings"] = {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": kafka.username,
            "sasl.password": "${KAFKA_PASSWORD}",
            "ssl.ca.location": str(kafka.ca_file),
        }
    spec = {
        "name": "secrets",
        "sources": [
            {
                "kind": "mqtt",
                "name": "plant",
                "url": f"mqtt://127.0.0.1:{mosquitto.auth_port}",
                "username": mosquitto.username,
                "password": "${MQTT_PASSWORD}",
                "subscriptions": [{"topic": f"{topic}/+"}],
                "twin_type": "pump",
                "stop_after_idle": "20s",
                "connect_timeout": "5s",
            }
        ],
        "twin_types": [{"name": "pump", "channels": {"temperature": {}, "pressure": {}, "flow": {}}}],
        "sinks": [
            {
                "kind": "influxdb",
                "url": influx.url,
                "database": "dte",
                "username": "admin",
                "password": "${INFLUX_PASSWORD}",
                "timeout": "3s",
            },
            kafka_sink,
        ],
        "dead_letters": {"path": str(tmp_path / "dead_letters.jsonl")},
    }
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_no_configured_secret_is_ever_printed(
    mosquitto: Any,
    kafka: Any,
    influxdb_with_auth: Any,
    tmp_path: Path,
) -> None:
    if not mosquitto.auth_port:
        pytest.skip("the MQTT broker has no password listener")
    secrets = [mosquitto.password, "right-password", URL_SECRET, WRONG]
    if kafka.password:
        secrets.append(kafka.password)
    right = {
        "MQTT_PASSWORD": mosquitto.password,
        "DTE_MQTT_PASSWORD": mosquitto.password,
        "KAFKA_PASSWORD": kafka.password or "",
        "INFLUX_PASSWORD": "right-password",
    }
    topic = f"secrets-{uuid.uuid4().hex[:8]}"
    spec = _spec(tmp_path, mosquitto, kafka, influxdb_with_auth, topic)
    out = Output()

    assert out.run("validate", _dte("validate", str(spec)), right, tmp_path).returncode == 0
    bad_url = tmp_path / "bad-url.yaml"
    bad = yaml.safe_load(spec.read_text())
    bad["sources"][0]["url"] = f"mqtx://dte:{URL_SECRET}@127.0.0.1:{mosquitto.auth_port}"
    bad_url.write_text(yaml.safe_dump(bad))
    assert out.run("validate wrong scheme", _dte("validate", str(bad_url)), right, tmp_path).returncode == 2

    # The daemon with the right credentials: readings published with a password, stored.
    port = free_port()
    daemon = subprocess.Popen(
        _dte("run", str(spec), "--http", f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **right},
    )
    try:
        # subscribed once ready (the source ends 20 s after the last message); /readyz names
        # every source and sink by URL: it is checked for secrets as well
        out.texts["readyz"] = json.dumps(wait_until_ready(port, daemon))
        sent = out.run(
            "simulate",
            _dte(
                "simulate",
                "--to",
                f"mqtt://127.0.0.1:{mosquitto.auth_port}/{topic}",
                "--username",
                mosquitto.username,
                "--twins",
                "3",
                "--count",
                "60",
            ),
            right,
            tmp_path,
        )
        assert sent.returncode == 0, sent.stderr
        stdout, _ = daemon.communicate(timeout=120)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(30)
    out.texts["run"] = stdout
    assert daemon.returncode == 0, stdout
    assert "60 readings processed" in stdout

    # Each credential wrong in turn: one line each, naming what failed, never the value.
    for name in ("MQTT_PASSWORD", "INFLUX_PASSWORD", "KAFKA_PASSWORD"):
        if not right[name]:
            continue
        result = out.run(
            f"run, wrong {name}", _dte("run", "--quiet", str(spec)), {**right, name: WRONG}, tmp_path
        )
        assert result.returncode == 2, result.stderr

    # The services script's status of the brokers this session started.
    state = tmp_path / "devservices"
    for svc in (mosquitto, kafka):
        if svc.external:
            continue
        (state / svc.name).mkdir(parents=True)
        (state / svc.name / "service.json").write_text(json.dumps(svc.to_json()))
    status = [sys.executable, str(REPO / "deploy" / "services" / "devservices.py"), "status"]
    out.run("devservices status", status, {"DTE_DEVSERVICES_DIR": str(state)}, tmp_path)

    wanted = {"validate", "validate wrong scheme", "simulate", "readyz", "run", "devservices status"}
    assert set(out.texts) >= wanted
    assert out.leaks(secrets) == []
