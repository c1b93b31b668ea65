"""`dte-stream deadletters list|replay` against a real Mosquitto: readings refused by one spec
are listed by reason, and after the spec is fixed, replay sends back exactly the ones it now
takes; the running dataflow stores them; a second replay sends nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import yaml
from test_mqtt_source import publish

from dte_stream.store import LocalStore


def spec_file(path: Path, broker: Any, prefix: str, data: Path, types: list[dict[str, Any]]) -> Path:
    spec = {
        "version": 1,
        "name": "replayed",
        "sources": [
            {
                "kind": "mqtt",
                "name": "plant",
                "url": f"mqtt://{broker.host}:{broker.port}",
                "client_id": f"dte-replay-{prefix}",
                "subscriptions": [
                    {"topic": f"{prefix}/+", "template": f"{prefix}/{{twin}}", "codec": "json"}
                ],
                "batch_latency": 0.01,
            }
        ],
        "twin_types": types,
        "sinks": [{"kind": "local_store", "data_dir": str(data), "flush_seconds": 0.2}],
        "dead_letters": {"path": str(data / "dead_letters.jsonl")},
        "engine": {"epoch_seconds": 0.5},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


PUMP = {"name": "pump", "match": "pump-.*", "channels": {"temperature": {}}}
TANK = {"name": "tank", "match": "tank-.*", "channels": {"level": {}}}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dte_stream", *args], capture_output=True, text=True, timeout=120, check=False
    )


def start(spec: Path) -> subprocess.Popen[str]:
    """The dataflow, once /readyz says it is subscribed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "dte_stream", "run", str(spec), "--quiet", "--http", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    def ready() -> bool:
        assert process.poll() is None, process.communicate()[1]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    wait_for("the dataflow is ready", ready, timeout=60)
    return process


def stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return err


def wait_for(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(what)


def stored(data: Path, twin: str) -> int:
    try:
        return LocalStore(data).query("readings", twin_id=twin).height
    except Exception:
        return 0


def test_replay_sends_back_what_the_fixed_spec_takes(mosquitto: Any, tmp_path: Path) -> None:
    prefix = f"dl{uuid.uuid4().hex[:6]}"
    data = tmp_path / "data"
    old = spec_file(tmp_path / "old.yaml", mosquitto, prefix, data, [PUMP])
    now = time.time_ns()
    daemon = start(old)
    try:
        publish(
            mosquitto,
            [
                (
                    f"{prefix}/pump-1",
                    json.dumps({"channel": "temperature", "value": 20.0, "time_ns": now}).encode(),
                ),
                (f"{prefix}/tank-1", json.dumps({"channel": "level", "value": 3.5, "time_ns": now}).encode()),
                (f"{prefix}/tank-2", json.dumps({"channel": "level", "value": 4.5, "time_ns": now}).encode()),
                (f"{prefix}/pump-2", b"{not json"),
            ],
        )
        wait_for("the pump reading is stored", lambda: stored(data, "pump-1") == 1)
        letters = data / "dead_letters.jsonl"
        wait_for("3 dead letters", lambda: letters.exists() and len(letters.read_text().splitlines()) == 3)
    finally:
        stop(daemon)

    listed = cli("deadletters", "list", str(old), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["reason"]: row["count"] for row in json.loads(listed.stdout)}
    assert rows["twin id"] == 2  # "twin id 'tank-1' matches no twin type"
    assert sum(rows.values()) == 3

    fixed = spec_file(tmp_path / "fixed.yaml", mosquitto, prefix, data, [PUMP, TANK])
    dry = cli("deadletters", "replay", str(fixed), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "2 of 3 dead letters pass the spec now" in dry.stderr
    assert "still refused" in dry.stderr

    daemon = start(fixed)
    try:
        sent = cli("deadletters", "replay", str(fixed))
        assert sent.returncode == 0, sent.stderr
        assert "sent 2 back" in sent.stderr
        wait_for(
            "the replayed tank readings are stored",
            lambda: stored(data, "tank-1") + stored(data, "tank-2") == 2,
        )
        again = cli("deadletters", "replay", str(fixed))
        assert "0 of 1 dead letters pass" in again.stderr
    finally:
        stop(daemon)
    tanks = LocalStore(data).query("readings", twin_id="tank-1")
    assert tanks["value"].to_list() == [3.5]
    assert tanks["time"].cast(pl.Int64).to_list() == [now]
    assert stored(data, "pump-1") == 1  # nothing else came twice


@pytest.mark.parametrize("args", [["deadletters", "list"], ["deadletters", "replay", "--file", "x.jsonl"]])
def test_without_a_spec_the_commands_say_what_they_need(args: list[str]) -> None:
    done = cli(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
