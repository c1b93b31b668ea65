"""Live reload of a real daemon: ``dte-stream run`` on a real Mosquitto, SIGHUP with a changed alert
threshold, then one with a change the state cannot take; ``state inspect`` on its recovery dir.

What it shows: the new level applies to the next readings (alerts fire that the old level kept
quiet); no twin state is lost (every estimate the daemon wrote equals that of twin shards that
ran the same readings without any reload); a layout-breaking change is refused with a message
and the daemon carries on with the spec it had (its level, its channels); the reloads are
counted in /metrics; the recovery dir records the spec version that wrote it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import polars as pl
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from test_operations import free_port, stop_gracefully, wait_for

from dte_stream.readings import ReadingBatch
from dte_stream.spec import parse_spec
from dte_stream.times import now_ns
from dte_stream.twins.routing import Router
from dte_stream.twins.shard import TwinShard
from dte_stream.view.store import TwinView

pytestmark = pytest.mark.integration

TWINS = ["p1", "p2", "p3"]


def spec_doc(
    url: str,
    topic: str,
    client_id: str,
    version: int,
    above: float,
    noise: float = 0.25,
    rule: str = "hot",
    notifiers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "version": version,
        "name": "reloaded",
        "sources": [
            {
                "kind": "mqtt",
                "name": "sensors",
                "url": url,
                "client_id": client_id,
                "subscriptions": [
                    {
                        "topic": f"{topic}/+",
                        "template": f"{topic}/{{twin}}",
                        "codec": "json",
                        "qos": 1,
                        "twin_type": "pump",
                    }
                ],
            }
        ],
        "twin_types": [
            {
                "name": "pump",
                "channels": {
                    "temperature": {"filter": {"process_noise": 0.01, "measurement_noise": noise}},
                    "pressure": {},
                },
                "alerts": {
                    "rules": [
                        {"kind": "threshold", "name": rule, "channels": ["temperature"], "above": above}
                    ]
                },
            }
        ],
        "sinks": [{"kind": "local_store", "data_dir": "data", "flush_seconds": 0.5}],
        "dead_letters": {"path": "dead_letters.jsonl"},
        "engine": {"shards": 2, "epoch_seconds": 1},
        "notifiers": notifiers or [],
    }


class Publisher:
    """Readings as JSON to ``TOPIC/<twin>`` with QoS 1, remembered for the reference shards."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.topic = topic
        self.sent: list[tuple[str, str, int, float]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
        self.client.connect(host, port)
        self.client.loop_start()
        self.t0 = now_ns() - 120 * 10**9  # two minutes ago: in the past of the wall clock

    def tick(self, k: int, temperature: dict[str, float], extra: dict[str, float] | None = None) -> None:
        t = self.t0 + k * 10**8
        for twin in TWINS:
            wobble = 0.05 * (k % 3)  # never a flat line
            readings = {"temperature": temperature[twin] + wobble, "pressure": 3.0 + wobble, **(extra or {})}
            for channel, value in readings.items():
                payload = json.dumps({"channel": channel, "value": value, "time_ns": t})
                self.client.publish(f"{self.topic}/{twin}", payload, qos=1).wait_for_publish(10)
                self.sent.append((twin, channel, t, value))

    def warm_up(self, stored_twins: Callable[[], set[str]]) -> None:
        """Publish to twin ``w0`` until the daemon stores it: from then on it is subscribed."""
        deadline = time.monotonic() + 60
        k = 0
        while "w0" not in stored_twins():
            assert time.monotonic() < deadline, "the daemon never received a reading"
            payload = json.dumps({"channel": "pressure", "value": 1.0, "time_ns": self.t0 - 10**9 + k})
            self.client.publish(f"{self.topic}/w0", payload, qos=1).wait_for_publish(10)
            k += 1
            time.sleep(0.5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def stored(workdir: Path, twins: list[str] = TWINS) -> pl.DataFrame:
    """The readings the daemon stored (stale-sensor rows left out) of ``twins``."""
    rows = pl.read_parquet(workdir / "data" / "readings" / "**" / "*.parquet")
    rows = rows.filter(pl.col("value").is_not_nan() & pl.col("twin_id").is_in(twins))
    return rows.sort(["twin_id", "channel", "time"])


def alert_events(workdir: Path) -> pl.DataFrame:
    return pl.read_parquet(workdir / "data" / "alerts" / "**" / "*.parquet").sort("time")


def test_sighup_applies_a_new_threshold_keeps_the_state_and_refuses_a_new_channel(
    mosquitto: Any, tmp_path: Path
) -> None:
    daemon_dir = tmp_path
    topic = f"reload{uuid.uuid4().hex[:6]}"
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    client_id = f"dte-reload-{uuid.uuid4().hex[:6]}"
    spec_path = daemon_dir / "reloaded.yaml"
    spec_path.write_text(yaml.safe_dump(spec_doc(url, topic, client_id, 1, above=80), sort_keys=False))
    port = free_port()
    log_path = daemon_dir / "daemon.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log_file:
        daemon = subprocess.Popen(
            [
                sys.executable, "-m", "dte_stream", "run", str(spec_path), "--quiet",
                "--recovery-dir", "recovery", "--http", f"127.0.0.1:{port}",
            ],
            cwd=daemon_dir,
            stderr=log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    publisher = Publisher(mosquitto.host, mosquitto.port, topic)

    def log_has(text: str) -> bool:
        return text in log_path.read_text()

    try:
        wait_for("the daemon is ready", lambda: httpx.get(f"{base}/readyz").status_code == 200)

        def stored_twins() -> set[str]:
            try:
                return set(stored(daemon_dir, ["w0"])["twin_id"])
            except (OSError, pl.exceptions.PolarsError):
                return set()

        publisher.warm_up(stored_twins)
        hot = {twin: 60.0 + i for i, twin in enumerate(TWINS)}  # 60..62: above 50, not above 80
        for k in range(20):
            publisher.tick(k, hot)
        wait_for("the first 20 ticks stored", lambda: stored(daemon_dir).height == 20 * 3 * 2)
        assert not (daemon_dir / "data" / "alerts").exists()  # 60 is not above 80

        # SIGHUP with the level at 50 (and another measurement noise): the next readings fire
        v2 = spec_doc(url, topic, client_id, 2, above=50, noise=0.5)
        spec_path.write_text(yaml.safe_dump(v2, sort_keys=False))
        daemon.send_signal(signal.SIGHUP)
        wait_for("the reload is logged", lambda: log_has("spec reloaded: version 1 -> 2"))
        for k in range(20, 30):
            publisher.tick(k, hot)

        def fired() -> list[pl.DataFrame]:
            firing = alert_events(daemon_dir).filter(pl.col("state") == "firing")
            return [firing.sort("twin_id")] if firing.height == 3 else []

        [first_fired] = wait_for("alerts fire at the new level", fired)

        def viewed_noise() -> bool:  # the API's what-if reads the twin types from the view
            pump = TwinView.open(daemon_dir / "data").types()["pump"]
            return bool(pump["channels"]["temperature"]["filter"]["measurement_noise"] == 0.5)

        wait_for("the twin view holds the new twin type", viewed_noise)
        assert first_fired["twin_id"].to_list() == TWINS
        assert (
            first_fired["time"].dt.epoch("ns") == publisher.t0 + 20 * 10**8
        ).all()  # the first new reading
        assert "above 50" in first_fired["message"][0]

        # a change the state cannot take (a new channel) with a level that would keep p1 firing at 45
        broken = spec_doc(url, topic, client_id, 3, above=40, noise=0.5)
        broken["twin_types"][0]["channels"]["flow"] = {}
        spec_path.write_text(yaml.safe_dump(broken, sort_keys=False))
        daemon.send_signal(signal.SIGHUP)
        wait_for(
            "the refusal is logged",
            lambda: log_has(
                "spec reload refused, still running version 2: twin type 'pump': channels added: flow "
                "(the saved state has no place for them)"
            ),
        )
        cooler = {**hot, "p1": 45.0}
        for k in range(30, 35):
            publisher.tick(k, cooler, extra={"flow": 12.0})

        def resolved_twins() -> list[str]:
            return list(alert_events(daemon_dir).filter(pl.col("state") == "resolved")["twin_id"])

        resolved = wait_for("p1 resolves under the running level 50", resolved_twins)
        assert resolved == ["p1"]
        wait_for(
            "the flow readings are dead letters", lambda: log_path.exists() and _dead_flow(daemon_dir) == 15
        )

        metrics = httpx.get(f"{base}/metrics").text
        assert 'dte_spec_reloads_total{result="applied"} 1.0' in metrics
        assert 'dte_spec_reloads_total{result="refused"} 1.0' in metrics
        assert "dte_spec_version 2.0" in metrics
        wait_for("every reading stored", lambda: stored(daemon_dir).height == 35 * 3 * 2)
    finally:
        publisher.close()
        stop_gracefully(daemon)
    assert daemon.returncode == 0, log_path.read_text()

    # no state lost: every estimate equals that of shards that saw the same readings and were
    # stopped and restored under the new spec at the reload (the path a restart takes)
    spec = parse_spec(spec_doc(url, topic, client_id, 1, above=80))
    router = Router(spec)
    shards: dict[str, TwinShard] = {}
    expected = []
    for tick in sorted({t for _, _, t, _ in publisher.sent}):
        if tick == publisher.t0 + 20 * 10**8:
            spec = parse_spec(v2)
            shards = {key: TwinShard.restore(spec, key, shard.snapshot()) for key, shard in shards.items()}
        sent = [r for r in publisher.sent if r[2] == tick and r[1] != "flow"]
        readings = ReadingBatch.from_columns(*[list(col) for col in zip(*sent, strict=True)])
        for key, part in router.route(readings, "test", "pump").routed:
            shard = shards.setdefault(key, TwinShard(spec, key))
            for batch in shard.on_batch([part]).estimates:
                expected.append(
                    pl.DataFrame(
                        {"twin_id": batch.twin_id, "channel": batch.channel, "estimate": batch.estimate}
                    ).with_columns(time=pl.Series(batch.time_ns))
                )
    want = pl.concat(expected).sort(["twin_id", "channel", "time"])
    got = stored(daemon_dir)
    assert got["time"].dt.epoch("ns").to_list() == want["time"].to_list()
    np.testing.assert_allclose(got["estimate"].to_numpy(), want["estimate"].to_numpy(), rtol=0, atol=1e-9)

    # the recovery dir records the spec version that wrote it
    shown = subprocess.run(
        [sys.executable, "-m", "dte_stream", "state", "inspect", "recovery", "--json"],
        cwd=daemon_dir, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["dataflow"] == "reloaded"
    assert info["spec"] == [{"name": "reloaded", "version": 2}]
    assert info["twin_types"]["pump"]["twins"] == 4  # p1..p3 and the warm-up twin
    assert info["twin_types"]["pump"]["channels"] == ["temperature", "pressure"]
    assert "reloaded.source_sensors" in info["other_state"]


def _dead_flow(workdir: Path) -> int:
    path = workdir / "dead_letters.jsonl"
    if not path.exists():
        return 0
    return sum("flow" in line for line in path.read_text().splitlines())


def test_a_notifier_added_by_a_reload_gets_the_next_alerts(
    mosquitto: Any, alertmanager: Any, tmp_path: Path
) -> None:
    """A real Alertmanager, unknown to the daemon at start, receives the alerts that fire after SIGHUP."""
    topic = f"reload{uuid.uuid4().hex[:6]}"
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    client_id = f"dte-reload-{uuid.uuid4().hex[:6]}"
    rule = f"hot_{uuid.uuid4().hex[:6]}"
    notifier = {"kind": "alertmanager", "name": "am", "url": alertmanager.url, "labels": {"env": "reload"}}
    spec_path = tmp_path / "reloaded.yaml"
    spec_path.write_text(
        yaml.safe_dump(spec_doc(url, topic, client_id, 1, above=80, rule=rule), sort_keys=False)
    )
    port = free_port()
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log_file:
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dte_stream",
                "run",
                str(spec_path),
                "--quiet",
                "--http",
                f"127.0.0.1:{port}",
            ],
            cwd=tmp_path,
            stderr=log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    publisher = Publisher(mosquitto.host, mosquitto.port, topic)

    def am_alerts() -> list[dict[str, Any]]:
        query = {"filter": f'alertname="{rule}"'}
        return list(httpx.get(f"{alertmanager.url}/api/v2/alerts", params=query, timeout=5).json())

    try:
        wait_for(
            "the daemon is ready", lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        )
        publisher.warm_up(
            lambda: set(stored(tmp_path, ["w0"])["twin_id"]) if _has_readings(tmp_path) else set()
        )
        hot = dict.fromkeys(TWINS, 60.0)
        for k in range(5):
            publisher.tick(k, hot)
        wait_for("the first ticks stored", lambda: stored(tmp_path).height == 5 * 3 * 2)
        assert am_alerts() == []
        doc = spec_doc(url, topic, client_id, 2, above=50, rule=rule, notifiers=[notifier])
        spec_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        daemon.send_signal(signal.SIGHUP)
        wait_for(
            "the reload is logged",
            lambda: "changed: notifiers, twin_types.pump.alerts" in log_path.read_text(),
        )
        for k in range(5, 8):
            publisher.tick(k, hot)
        alerts = wait_for("Alertmanager has the three alerts", lambda: len(am_alerts()) == 3 and am_alerts())
        assert sorted(a["labels"]["twin_id"] for a in alerts) == TWINS
        assert {a["labels"]["env"] for a in alerts} == {"reload"}
    finally:
        publisher.close()
        stop_gracefully(daemon)
    assert daemon.returncode == 0, log_path.read_text()


def _has_readings(workdir: Path) -> bool:
    return any((workdir / "data" / "readings").glob("**/*.parquet"))
