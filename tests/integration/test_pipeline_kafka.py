"""End to end through real Kafka: `dte-stream simulate` -> Kafka -> the dataflow -> the store."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from confluent_kafka.admin import AdminClient, NewTopic
from influxql import InfluxQLError, influxql_rows

pytestmark = pytest.mark.integration


def _dte(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dte_stream", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_simulate_to_kafka_then_dataflow_stores_every_reading_once(kafka: Any, tmp_path: Path) -> None:
    topic = f"sensors-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)

    sent = _dte(
        "simulate", "--to", f"kafka://{kafka.bootstrap_servers}/{topic}", "--twins", "7", "--count", "600"
    )
    assert sent.returncode == 0, sent.stderr
    assert "sent 600 readings of 7 twins" in sent.stderr

    spec = tmp_path / "flow.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "kafka_e2e",
                "sources": [
                    {
                        "kind": "kafka",
                        "name": "plant",
                        "bootstrap_servers": "${BOOTSTRAP}",
                        "topics": [topic],
                        "twin_type": "pump",
                        "stop_at_end": True,
                    }
                ],
                "twin_types": [{"name": "pump", "channels": {"temperature": {}, "pressure": {}, "flow": {}}}],
                "sinks": [{"kind": "local_store", "data_dir": str(tmp_path / "data")}],
                "engine": {"workers": 2, "shards": 4},
            }
        )
    )
    run = _dte("run", str(spec), "--quiet", env={"BOOTSTRAP": kafka.bootstrap_servers})
    assert run.returncode == 0, run.stderr
    rows = pl.read_parquet(tmp_path / "data" / "readings" / "**" / "*.parquet")
    assert rows.height == 600
    assert rows.select("twin_id", "channel", "time").n_unique() == 600  # each reading once
    assert sorted(rows["twin_id"].unique().to_list()) == [f"pump-{i:04d}" for i in range(7)]
    assert rows["estimate"].is_finite().all()
    assert (
        not (tmp_path / "data" / "dead_letters.jsonl").exists()
        or not (tmp_path / "data" / "dead_letters.jsonl").read_text().strip()
    )


def _count(url: str, db: str) -> int:
    try:
        rows = influxql_rows(url, 'SELECT count("value") FROM "dte_readings"', db)
    except OSError:
        return 0
    except InfluxQLError as e:
        if "database not found" in str(e):  # the sink creates it with its first write
            return 0
        raise
    return int(rows[0][1]) if rows else 0


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_kafka_to_influxdb_daemon_restart_writes_each_reading_once(
    kafka: Any, influxdb: Any, tmp_path: Path
) -> None:
    import signal

    topic = f"sensors-{uuid.uuid4().hex[:8]}"
    db = f"dte_{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    env = {
        "DTE_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
        "DTE_KAFKA_TOPIC": topic,
        "DTE_INFLUXDB_URL": influxdb.url,
        "DTE_INFLUXDB_DATABASE": db,
        "DTE_DEAD_LETTERS": str(tmp_path / "dead.jsonl"),
    }
    to = f"kafka://{kafka.bootstrap_servers}/{topic}"
    first = _dte("simulate", "--to", to, "--twins", "5", "--count", "300", "--start", "2026-01-01T00:00:00Z")
    assert first.returncode == 0, first.stderr

    def daemon() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "dte_stream", "run", "dataflows/kafka_to_influxdb.yaml"),
                *("--recovery-dir", str(tmp_path / "recovery"), "--quiet"),
            ],
            env={**os.environ, **env},
            stderr=subprocess.PIPE,
            text=True,
        )

    proc = daemon()
    try:
        _wait_for(lambda: _count(influxdb.url, db) >= 300, 90, "the first 300 readings in InfluxDB")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err

    # Published while dte-stream is down: picked up from the recovered offsets.
    later = _dte("simulate", "--to", to, "--twins", "5", "--count", "300", "--start", "2026-01-02T00:00:00Z")
    assert later.returncode == 0, later.stderr
    proc = daemon()
    try:
        _wait_for(lambda: _count(influxdb.url, db) >= 600, 90, "all 600 readings in InfluxDB")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert _count(influxdb.url, db) == 600
    rows = influxql_rows(
        influxdb.url,
        'SELECT "value", "estimate" FROM "dte_readings" GROUP BY "twin_id", "twin_type", "channel"',
        db,
    )
    assert len(rows) == 600
    tags = influxql_rows(influxdb.url, 'SHOW TAG VALUES FROM "dte_readings" WITH KEY = "twin_id"', db)
    assert sorted(v for _, v in tags) == [f"pump-{i:04d}" for i in range(5)]


HOSTILE_TWINS = ["pump 1", "pump,2", "pump=3", 'pump"4', "pümp-5 ✓", "pump+#/6", "pump'7", "a=b,c d"]
HOSTILE_CHANNEL = 'flow rate, m³/h="x"'


def test_hostile_ids_become_exact_points_or_dead_letters(kafka: Any, influxdb: Any, tmp_path: Path) -> None:
    import orjson
    from confluent_kafka import Producer

    topic = f"hostile-{uuid.uuid4().hex[:8]}"
    db = f"dte_{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    t0 = 1_767_225_600 * 10**9
    good = 0
    for i, twin in enumerate(HOSTILE_TWINS):
        for channel in (HOSTILE_CHANNEL, "temperature"):
            record = {"twin_id": twin, "channel": channel, "time_ns": t0 + i * 10**9, "value": float(i)}
            producer.produce(topic, orjson.dumps(record), key=twin.encode())
            good += 1
    bad = [
        {"twin_id": "pump\n9", "channel": "temperature", "time_ns": t0, "value": 1.0},  # newline
        {"twin_id": "pump 10 ", "channel": "temperature", "time_ns": t0, "value": 1.0},  # trailing space
        {"twin_id": "pump-11", "channel": "temp\terature", "time_ns": t0, "value": 1.0},  # tab
    ]
    for record in bad:
        producer.produce(topic, orjson.dumps(record))
    producer.produce(topic, b'{"twin_id": "pump-12", "channel": "temperature", "value": 1e999}')
    producer.produce(topic, b"\xff\xfe not json")
    assert producer.flush(30) == 0

    spec = tmp_path / "flow.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "hostile",
                "sources": [
                    {
                        "kind": "kafka",
                        "bootstrap_servers": kafka.bootstrap_servers,
                        "topics": [topic],
                        "twin_type": "pump",
                        "key_is_twin_id": False,
                        "stop_at_end": True,
                    }
                ],
                "twin_types": [{"name": "pump", "channels": {HOSTILE_CHANNEL: {}, "temperature": {}}}],
                "sinks": [{"kind": "influxdb", "url": influxdb.url, "database": db, "create_database": True}],
                "dead_letters": {"path": str(tmp_path / "dead.jsonl")},
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    run = _dte("run", str(spec), "--quiet")
    assert run.returncode == 0, run.stderr

    assert _count(influxdb.url, db) == good
    twins = influxql_rows(influxdb.url, 'SHOW TAG VALUES FROM "dte_readings" WITH KEY = "twin_id"', db)
    assert sorted(v for _, v in twins) == sorted(HOSTILE_TWINS)
    channels = influxql_rows(influxdb.url, 'SHOW TAG VALUES FROM "dte_readings" WITH KEY = "channel"', db)
    assert sorted(v for _, v in channels) == sorted([HOSTILE_CHANNEL, "temperature"])
    for i, twin in enumerate(HOSTILE_TWINS):
        escaped = twin.replace("\\", "\\\\").replace("'", "\\'")
        rows = influxql_rows(
            influxdb.url, f'SELECT "value" FROM "dte_readings" WHERE "twin_id" = \'{escaped}\'', db
        )
        assert [(r[0], r[1]) for r in rows] == [(t0 + i * 10**9, float(i))] * 2, twin
    letters = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert len(letters) == len(bad) + 2
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert "control character" in reasons
    assert "leading or trailing whitespace" in reasons
    assert "invalid JSON" in reasons
