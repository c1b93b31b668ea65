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
