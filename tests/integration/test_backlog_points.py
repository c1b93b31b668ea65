"""A backlog in Kafka, written before the daemon starts, writes one point per reading plus only
the stale markers that the readings' own times justify (issue 9).

10,000 twins, 10 readings each, 10 s apart in event time, a day in the past (100,000 readings
less the ones quitters never sent): 100 *quitters* stop after their fourth reading. A sensor is
stale after 5x its usual interval (the default ``stale_after``), so by the backlog's own clock
each quitter goes stale once (50 s after its last reading, 30 s before the backlog ends) and no
other sensor does. The twin clock is the wall clock (the default): while the daemon catches up
it must follow the backlog's progress, not the wall clock a day later (which would flag every
sensor stale: 1,400,000 points for 1,000,000 readings in the issue's measurement).

``DTE_BACKLOG_TWINS=100000`` runs the issue's size, 1,000,000 readings (not in the suite: about
ten minutes on a shared 2-core machine; the figure is in docs/benchmarks.md).

The daemon runs as a daemon does (``dte-stream run --recovery-dir``), to the end of the topic,
as one process and as a cluster of two; InfluxDB must then hold exactly the readings' points
and one flag-only point per quitter, flagged stale.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from influxql import influxql_rows
from test_twin_recovery import _produce

from dte_stream.twins import flags as fl

pytestmark = pytest.mark.integration

TWINS = int(os.environ.get("DTE_BACKLOG_TWINS", "10000"))
READINGS = 10
QUITTERS = TWINS // 100  # every 100th twin sends its first 4 readings only
QUIT_AFTER = 4
INTERVAL_NS = 10 * 10**9
T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: long before the wall clock of the test
SEED = 9


def _twin(i: int) -> str:
    return f"pump-{i:05d}"


def _quitter(i: int) -> bool:
    return i % (TWINS // QUITTERS) == 0


def _readings() -> Iterator[dict[str, Any]]:
    values = np.random.default_rng(SEED).normal(20.0, 0.5, (READINGS, TWINS)).tolist()
    for k in range(READINGS):
        for i in range(TWINS):
            if k < QUIT_AFTER or not _quitter(i):
                yield {"twin_id": _twin(i), "channel": "temperature", "time_ns": T0_NS + k * INTERVAL_NS,
                       "value": values[k][i]}  # fmt: skip


def _spec(path: Path, bootstrap: str, topic: str, url: str, db: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "backlog",
                "sources": [
                    {
                        "kind": "kafka",
                        "name": "sensors",
                        "bootstrap_servers": bootstrap,
                        "topics": [topic],
                        "twin_type": "pump",
                        "stop_at_end": True,  # a backfill: exit when the topic is drained
                    }
                ],
                "twin_types": [
                    {
                        "name": "pump",
                        "channels": {
                            "temperature": {"filter": {"process_noise": 0.001, "measurement_noise": 0.25}}
                        },
                    }
                ],
                "sinks": [{"kind": "influxdb", "url": url, "database": db, "create_database": True}],
                "dead_letters": {"path": str(path.parent / "dead_letters.jsonl")},
                "engine": {"shards": 4, "epoch_seconds": 1.0},  # clock: wall (the default)
            },
            sort_keys=False,
        )
    )
    return path


@pytest.mark.parametrize("processes", [1, 2])
def test_a_backlog_writes_its_readings_and_only_the_stale_markers_its_times_justify(
    kafka: Any, influxdb: Any, tmp_path: Path, processes: int
) -> None:
    topic = f"backlog-{uuid.uuid4().hex[:8]}"
    readings = TWINS * READINGS - QUITTERS * (READINGS - QUIT_AFTER)
    assert len(_produce(kafka.bootstrap_servers, topic, _readings())) == readings
    db = f"dte_backlog_{uuid.uuid4().hex[:8]}"
    spec = _spec(tmp_path / "flow.yaml", kafka.bootstrap_servers, topic, influxdb.url, db)
    command = [sys.executable, "-m", "dte_stream", "run", str(spec), "--recovery-dir", str(tmp_path / "rec")]
    command += ["--processes", str(processes)] if processes > 1 else []
    log = tmp_path / "log.txt"
    started = time.monotonic_ns()
    with log.open("wb") as out:
        done = subprocess.run(
            command, stdout=out, stderr=out, timeout=600 * max(1, TWINS // 10_000), check=False
        )
    took = time.monotonic_ns() - started
    assert done.returncode == 0, log.read_text()[-4000:]

    [[_, values, points]] = influxql_rows(
        influxdb.url, 'SELECT count("value"), count("flags") FROM "dte_readings"', db
    )
    flag_only = influxql_rows(
        influxdb.url, 'SELECT "twin_id", "flags" FROM "dte_readings" WHERE "flags" > 0', db
    )
    stale = sorted((str(twin), int(t)) for t, twin, flags in flag_only if int(flags) & fl.STALE)
    print(f"backlog of {readings:,} readings, {processes} process(es): {points:,} points, "
          f"{len(stale):,} stale markers, {took / 1e9:.1f} s")  # fmt: skip
    assert values == readings, f"{values} points with a value for {readings} readings"
    quitters = [_twin(i) for i in range(TWINS) if _quitter(i)]
    assert [twin for twin, _ in stale] == quitters, f"stale: {stale[:10]} ... ({len(stale)})"
    # Each quitter's marker lies in the backlog's time: after its last reading, and not after the
    # end of the input by more than the wall time that passed while the run went on (a timer that
    # fires while the last batches are being applied counts the input's silence since them).
    last = T0_NS + (QUIT_AFTER - 1) * INTERVAL_NS
    assert all(last < t <= T0_NS + (READINGS - 1) * INTERVAL_NS + took for _, t in stale), stale[:5]
    assert points == readings + QUITTERS, f"{points} points for {readings} readings and {QUITTERS} quitters"
