"""End to end through real Mosquitto and InfluxDB: simulate -> MQTT -> dataflow daemon -> InfluxDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from daemon_ready import free_port, wait_until_ready
from influxql import influxql_rows
from test_pipeline_kafka import _count, _dte, _wait_for

pytestmark = pytest.mark.integration


def test_mqtt_to_influxdb_daemon_restart_loses_nothing_and_duplicates_nothing(
    mosquitto: Any, influxdb: Any, tmp_path: Path
) -> None:
    db = f"dte_{uuid.uuid4().hex[:8]}"
    topic = f"sensors{uuid.uuid4().hex[:6]}"
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    env = {
        "DTE_MQTT_URL": url,
        "DTE_MQTT_TOPIC": topic,
        "DTE_MQTT_CLIENT_ID": f"dte-test-{uuid.uuid4().hex[:6]}",
        "DTE_INFLUXDB_URL": influxdb.url,
        "DTE_INFLUXDB_DATABASE": db,
        "DTE_DEAD_LETTERS": str(tmp_path / "dead.jsonl"),
    }

    port = free_port()

    def daemon() -> subprocess.Popen[str]:
        command = ["run", "dataflows/mqtt_to_influxdb.yaml", "--quiet", "--http", f"127.0.0.1:{port}"]
        return subprocess.Popen(
            [sys.executable, "-m", "dte_stream", *command],
            env={**os.environ, **env},
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err

    to = f"{url}/{topic}"
    proc = daemon()
    try:
        wait_until_ready(port, proc)  # subscribed: from now on the broker keeps a session for it
        sent = _dte(
            "simulate", "--to", to, "--twins", "5", "--count", "300", "--start", "2026-01-01T00:00:00Z"
        )
        assert sent.returncode == 0, sent.stderr
        _wait_for(lambda: _count(influxdb.url, db) >= 300, 60, "the first 300 readings in InfluxDB")
    finally:
        stop(proc)

    # Published while dte-stream is down: the persistent session delivers them after the restart.
    later = _dte(
        "simulate",
        "--to",
        to,
        "--twins",
        "5",
        "--count",
        "300",
        "--start",
        "2026-01-02T00:00:00Z",
        "--codec",
        "senml",
    )
    assert later.returncode == 0, later.stderr
    proc = daemon()
    try:
        _wait_for(lambda: _count(influxdb.url, db) >= 600, 60, "all 600 readings in InfluxDB")
        time.sleep(2)  # nothing more arrives: no duplicates, no extras
    finally:
        stop(proc)
    assert _count(influxdb.url, db) == 600
    tags = influxql_rows(influxdb.url, 'SHOW TAG VALUES FROM "dte_readings" WITH KEY = "twin_id"', db)
    assert sorted(v for _, v in tags) == [f"pump-{i:04d}" for i in range(5)]
