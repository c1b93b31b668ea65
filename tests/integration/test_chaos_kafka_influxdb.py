"""Chaos against the real Kafka and InfluxDB: outages, kills and stops never lose or repeat a reading.

Every case runs the same fixed readings from one Kafka topic through ``dte-stream run`` and
compares EVERY field of every InfluxDB point and every twin's final state (the banks' resume
snapshots in the recovery directory) with one uninterrupted run of the same readings: nothing
lost, nothing there twice, nothing applied twice (a reading applied twice changes a filter's
state, so the twin state comparison shows it even where InfluxDB would overwrite a point).

=========================== ==================================================================
InfluxDB down (backlog)     InfluxDB stopped while the daemon works off a backlog; the sink
                            holds the dataflow (and the Kafka partitions) until it is back
SIGTERM, InfluxDB down      a graceful stop while InfluxDB is down: the daemon exits within
                            its close_timeout with one line, no panic; a second SIGTERM stops
                            at once; a restart from the recovery directory writes the rest
SIGKILL x N                 killed at seeded random moments under load, restarted each time
Kafka broker restart        the broker restarted mid-stream; its client log stays short
=========================== ==================================================================

The short mode (default, CI) uses a 20 s InfluxDB outage and 10 kills; ``DTE_CHAOS_LONG=1``
(``make chaos``) uses a 120 s outage. The service fixtures are private where a case stops the
service (InfluxDB), so other tests never see the outage.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from test_pipeline_kafka import _count
from test_twin_recovery import (
    TWIN_TYPE,
    _close,
    _consumed,
    _points,
    _produce,
    _same_state,
    _twin_state,
)

pytestmark = pytest.mark.integration

LONG = os.environ.get("DTE_CHAOS_LONG", "").strip() not in ("", "0")
OUTAGE = 120.0 if LONG else 20.0  # seconds InfluxDB is down during the backlog
KILLS = 10
SEED = 20261206
TWINS = 20
CHANNELS = ("temperature", "pressure")
READINGS = 750  # per (twin, channel): 30,000 readings
TOTAL = TWINS * len(CHANNELS) * READINGS
T0_NS = 1_767_225_600 * 10**9


def _readings() -> Iterator[dict[str, Any]]:
    """Deterministic noisy levels with a few level shifts (the filter state depends on order)."""
    rng = random.Random(SEED)
    for k in range(READINGS):
        for i in range(TWINS):
            for c, channel in enumerate(CHANNELS):
                level = (20.0 + 0.5 * i) if c == 0 else (2.0 + 0.1 * i)
                shift = 12.0 if c == 0 and i % 7 == 0 and k >= READINGS // 3 else 0.0
                yield {
                    "twin_id": f"pump-{i:04d}",
                    "channel": channel,
                    "time_ns": T0_NS + k * 10**9,
                    "value": level + shift + rng.gauss(0.0, 0.5 if c == 0 else 0.05),
                }


def _spec(path: Path, bootstrap: str, topic: str, influx_url: str, db: str, epoch: float = 0.5) -> Path:
    """The twin_recovery flow (the recovery helpers read its step ids) with a small sink buffer.

    ``max_buffer_lines`` far below what one epoch reads of the backlog makes a down InfluxDB
    fill the buffer at once, so the sink's hold (not its buffer) is what keeps the readings.
    """
    path.write_text(
        yaml.safe_dump(
            {
                "name": "twin_recovery",
                "sources": [
                    {
                        "kind": "kafka",
                        "name": "plant",
                        "bootstrap_servers": bootstrap,
                        "topics": [topic],
                        "twin_type": "pump",
                        "batch_size": 200,
                    }
                ],
                "twin_types": [TWIN_TYPE],
                "sinks": [
                    {
                        "kind": "influxdb",
                        "url": influx_url,
                        "database": db,
                        "create_database": True,
                        "batch_size": 500,
                        "max_buffer_lines": 2000,
                        "close_timeout": "5s",
                        "retries": {"initial_backoff": "100ms", "max_backoff": "2s"},
                    }
                ],
                "dead_letters": {"path": str(path.parent / "dead_letters.jsonl")},
                "engine": {"shards": 4, "workers": 1, "epoch_seconds": epoch},
            },
            sort_keys=False,
        )
    )
    return path


@dataclass
class Run:
    """One daemon run's folder: spec, recovery directory, log, database."""

    root: Path
    spec: Path
    db: str

    @property
    def recovery(self) -> Path:
        return self.root / "recovery"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    def start(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "dte_stream", "run", str(self.spec)]
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [*command, "--recovery-dir", str(self.recovery)],
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def consumed(self) -> int:
        return _consumed(self.recovery)


def _new_run(
    tmp_path: Path, name: str, bootstrap: str, topic: str, influx_url: str, epoch: float = 0.5
) -> Run:
    root = tmp_path / name
    root.mkdir()
    db = f"dte_{name}_{uuid.uuid4().hex[:8]}"
    return Run(root, _spec(root / "flow.yaml", bootstrap, topic, influx_url, db, epoch), db)


def _wait(proc: subprocess.Popen[bytes], run: Run, predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dte-stream exited with {proc.returncode}:\n{run.log.read_text()[-5000:]}")
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{run.log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes], run: Run, timeout: float = 60) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout)
    assert code == 0, f"dte-stream exited with {code} on SIGTERM:\n{run.log.read_text()[-5000:]}"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def _run_to_end(run: Run, timeout: float = 180) -> None:
    proc = run.start()
    try:
        _wait(proc, run, lambda: run.consumed() == TOTAL, timeout, "every record consumed")
        _stop(proc, run)
    finally:
        _kill(proc)


def _assert_same_result(a: Run, b: Run, influx_a: str, influx_b: str) -> None:
    """B stored exactly A's points (every field) and left exactly A's twin state."""
    points_a, points_b = _points(influx_a, a.db), _points(influx_b, b.db)
    assert len(points_a) == TOTAL
    missing = points_a.keys() - points_b.keys()
    extra = points_b.keys() - points_a.keys()
    assert not missing, f"{len(missing)} points lost, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} points A does not have, e.g. {sorted(extra)[:3]}"
    differ = {}
    for key, fields in points_b.items():
        other = points_a[key]
        diff = {f: (v, other.get(f)) for f, v in fields.items() if not _close(v, other.get(f))}
        if diff or fields.keys() != other.keys():
            differ[key] = diff
    some = list(differ.items())[:2]
    assert not differ, f"{len(differ)} points differ from the uninterrupted run, e.g. {some}"
    state_a, state_b = _twin_state(a.recovery), _twin_state(b.recovery)
    assert sorted(state_a) == sorted(state_b)
    for twin, fields in state_a.items():
        for name, value in fields.items():
            other = state_b[twin][name]
            assert _same_state(value, other), f"{twin} {name}: A {value}, B {other}"
    letters = b.root / "dead_letters.jsonl"
    assert not letters.exists() or letters.read_bytes() == b"", letters.read_text()[:2000]


@pytest.fixture(scope="module")
def topic(kafka: Any) -> str:
    name = f"chaos-{uuid.uuid4().hex[:8]}"
    where = _produce(kafka.bootstrap_servers, name, _readings())
    assert len(where) == TOTAL
    return name


@pytest.fixture(scope="module")
def uninterrupted(kafka: Any, influxdb: Any, topic: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Run A: the same readings, nothing goes wrong."""
    run = _new_run(tmp_path_factory.mktemp("chaos"), "a", kafka.bootstrap_servers, topic, influxdb.url)
    _run_to_end(run)
    return run


@pytest.fixture
def private_influxdb(devservices_api: Any, tmp_path: Path) -> Iterator[Any]:
    """An InfluxDB of this test alone, which the test may stop and start again."""
    try:
        devservices_api.check_installed("influxdb")
    except devservices_api.ServiceUnavailable as e:
        pytest.skip(str(e))
    svc = devservices_api.start("influxdb", tmp_path / "influxdb")
    try:
        yield svc
    finally:
        devservices_api.stop(svc)


def test_influxdb_down_during_a_backlog_loses_nothing(
    kafka: Any,
    influxdb: Any,
    private_influxdb: Any,
    devservices_api: Any,
    topic: str,
    uninterrupted: Run,
    tmp_path: Path,
) -> None:
    # 5 s epochs: one epoch reads far more of the backlog than the sink's buffer holds
    run = _new_run(tmp_path, "b", kafka.bootstrap_servers, topic, private_influxdb.url, epoch=5.0)
    proc = run.start()
    try:
        # stopped at the first points written, well inside the first 5 s epoch: on a fast
        # machine the first epoch reads (and would commit) the whole backlog
        _wait(proc, run, lambda: _count(private_influxdb.url, run.db) > 0, 120, "the first points written")
        at_stop = run.consumed()
        devservices_api.stop(private_influxdb)
        started = time.monotonic()
        time.sleep(OUTAGE)
        held = run.consumed()
        assert proc.poll() is None, run.log.read_text()[-3000:]
        devservices_api.restart(private_influxdb)
        print(
            f"InfluxDB down {time.monotonic() - started:.0f} s; committed {at_stop} -> {held} of {TOTAL} "
            "records while it was down"
        )
        assert held < TOTAL, "the backlog was consumed before the outage: produce more"
        _wait(proc, run, lambda: run.consumed() == TOTAL, 180, "every record consumed after the outage")
        _stop(proc, run)
    finally:
        _kill(proc)
    _assert_same_result(uninterrupted, run, influxdb.url, private_influxdb.url)
    log = run.log.read_text()
    assert "DROPP" not in log, log[-3000:]
    assert "0 dead letters" in log


def test_sigterm_while_influxdb_is_down_stops_promptly_and_loses_nothing(
    kafka: Any,
    influxdb: Any,
    private_influxdb: Any,
    devservices_api: Any,
    topic: str,
    uninterrupted: Run,
    tmp_path: Path,
) -> None:
    run = _new_run(tmp_path, "b", kafka.bootstrap_servers, topic, private_influxdb.url)
    timings = []
    for signals in (1, 2):  # one SIGTERM (waits close_timeout = 5 s), then two (at once)
        proc = run.start()
        try:
            before = run.consumed()
            _wait(proc, run, lambda before=before: run.consumed() > before, 120, "consumption")
            devservices_api.stop(private_influxdb)
            time.sleep(2.0)  # the sink is now holding the dataflow
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            if signals == 2:
                time.sleep(0.5)
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            timings.append(time.monotonic() - started)
        finally:
            _kill(proc)
        assert code == 130, f"exit {code}:\n{run.log.read_text()[-3000:]}"
        devservices_api.restart(private_influxdb)
    log = run.log.read_text()
    print(f"stopped after {timings[0]:.1f} s (one SIGTERM) and {timings[1]:.1f} s (two)")
    assert timings[0] < 5.0 + 5.0, timings  # close_timeout, plus start-up slack
    assert timings[1] < 4.0, timings
    assert "panicked" not in log, log[-5000:]
    assert "Traceback" not in log, log[-5000:]
    assert "points not written" in log
    assert "restart with the same recovery directory" in log
    _run_to_end(run)
    _assert_same_result(uninterrupted, run, influxdb.url, private_influxdb.url)


def test_sigkill_under_load_ten_times_loses_nothing(
    kafka: Any, influxdb: Any, topic: str, uninterrupted: Run, tmp_path: Path
) -> None:
    # 0.2 s epochs and a kill within one epoch of the first commit after each start: each run
    # commits about a tenth of the readings on a fast machine, so all ten kills land mid-stream
    run = _new_run(tmp_path, "b", kafka.bootstrap_servers, topic, influxdb.url, epoch=0.2)
    rng = random.Random(SEED)
    killed_at = []
    for _ in range(KILLS):
        proc = run.start()
        try:
            before = run.consumed()
            _wait(proc, run, lambda before=before: run.consumed() > before, 120, "consumption")
            time.sleep(rng.uniform(0.0, 0.2))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
        finally:
            _kill(proc)
        killed_at.append(run.consumed())
    print(f"killed {KILLS} times at {killed_at} of {TOTAL} committed records")
    assert killed_at[-1] < TOTAL, "consumed everything before the last kill: produce more"
    _run_to_end(run)
    _assert_same_result(uninterrupted, run, influxdb.url, influxdb.url)


def test_kafka_broker_restart_mid_stream_loses_nothing(
    kafka: Any, influxdb: Any, devservices_api: Any, topic: str, uninterrupted: Run, tmp_path: Path
) -> None:
    if kafka.external:
        pytest.skip("the broker was given by DTE_TEST_KAFKA_BOOTSTRAP; only a broker started here restarts")
    run = _new_run(tmp_path, "b", kafka.bootstrap_servers, topic, influxdb.url)
    proc = run.start()
    try:
        _wait(proc, run, lambda: run.consumed() > 0, 120, "the first committed epoch")
        devservices_api.restart(kafka, down_seconds=5.0)
        assert proc.poll() is None, run.log.read_text()[-3000:]
        _wait(proc, run, lambda: run.consumed() == TOTAL, 180, "every record consumed after the restart")
        _stop(proc, run)
    finally:
        _kill(proc)
    log = run.log.read_text()
    driver_lines = [line for line in log.splitlines() if "rdkafka" in line or "librdkafka" in line]
    print(f"{len(driver_lines)} librdkafka log lines during a 5 s broker restart")
    assert len(driver_lines) <= 20, "\n".join(driver_lines[:40])
    _assert_same_result(uninterrupted, run, influxdb.url, influxdb.url)


def test_chaos_readings_are_what_the_comparison_assumes() -> None:
    """The generator is deterministic, and each (twin, channel, time) occurs once."""
    first = [orjson.dumps(r) for r in _readings()]
    assert first == [orjson.dumps(r) for r in _readings()]
    assert len({(r["twin_id"], r["channel"], r["time_ns"]) for r in _readings()}) == TOTAL
