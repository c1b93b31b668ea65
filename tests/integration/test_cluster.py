"""A cluster of two processes (``dte-stream run --processes 2``) over a four-partition Kafka topic.

Run A is one process, uninterrupted. Run B is a cluster of two processes, uninterrupted. Run C
is a cluster of two processes whose second process is killed with SIGKILL while it consumes;
the cluster is then started again with the same recovery directory. B and C must each leave
exactly A's twin state (every twin's arrays, compared twin by twin) and exactly A's InfluxDB
points (each reading's point once, every field equal): every reading applied once and written
once, whichever process it went through. The readings and the spec are those of
``test_twin_recovery.py`` (fixed event times in the past, staleness out of reach).

The shards snapshot incrementally (``engine.snapshots: incremental``, the default): a shard's
files are in the recovery folder's ``twin-state/<key>`` that both processes share, and its
manifests in whichever process's partition Bytewax's hash picks. Each shard must have deleted
files that no manifest needs any more (it read the other process's partition to know).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_pipeline_kafka import _count
from test_twin_recovery import (
    TOTAL,
    _close,
    _consumed,
    _points,
    _produce,
    _readings,
    _resume_snapshots,
    _same_state,
    _spec,
    _twin_state,
)

pytestmark = pytest.mark.integration


def _command(spec: Path, recovery: Path, processes: int) -> list[str]:
    command = [sys.executable, "-m", "dte_stream", "run", str(spec), "--recovery-dir", str(recovery)]
    return command + (["--processes", str(processes)] if processes > 1 else [])


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def _run(spec: Path, recovery: Path, processes: int, log: Path) -> None:
    """One run to the end of the topic (the sources stop at its end): exit code 0."""
    with log.open("ab") as out:
        done = subprocess.run(
            _command(spec, recovery, processes), stdout=out, stderr=out, timeout=300, check=False
        )
    assert done.returncode == 0, log.read_text()[-4000:]


def _compare(state_a: dict[str, Any], points_a: dict[Any, Any], recovery: Path, url: str, db: str) -> None:
    state = _twin_state(recovery, True)  # a cluster on one host snapshots incrementally too
    for shard in (k for k in state_a if k.startswith("shard ")):  # each shard's counters and watermark
        assert state[shard] == state_a[shard], shard
    twins = {k for k in state_a if k.startswith("pump-")}
    assert {k for k in state if k.startswith("pump-")} == twins
    for twin in twins:
        for name, value in state_a[twin].items():
            if name == "shard":
                assert state[twin]["shard"] == value, twin
                continue
            assert _same_state(value, state[twin][name]), f"{twin} {name}: {value} != {state[twin][name]}"
    points = _points(url, db)
    assert points.keys() == points_a.keys()
    for key, fields in points.items():
        different = {f: (v, points_a[key][f]) for f, v in fields.items() if not _close(v, points_a[key][f])}
        assert not different, f"point {key}: {different}"
    assert _count(url, db) == TOTAL


def _old_files_deleted(recovery: Path) -> None:
    """Each shard deleted files no manifest needs: its first base (``seq`` 0) is gone.

    No manifest names the first base once a later base is committed; where the manifests of a
    shard are in the other process's partition, only reading that partition tells the shard so.
    """
    where = {}
    for part in sorted(recovery.glob("process-*/part-*.sqlite3")):
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as db:
            for (key,) in db.execute("SELECT DISTINCT state_key FROM snaps WHERE step_id LIKE '%twin_bank'"):
                where[key] = part.parent.name
    resumed = _resume_snapshots(recovery, "twin_recovery.twin_bank")
    assert sorted(resumed) == sorted(where), (resumed.keys(), where)
    for key, manifest in resumed.items():
        left = sorted(p.name for p in (recovery / "twin-state" / key).glob("*.pkl"))
        assert set(left) >= {manifest["base"], *manifest["parts"]}, key
        assert not any(name.startswith("base-000000000-") for name in left), f"{key} ({where[key]}): {left}"


def test_two_processes_give_the_one_process_result_also_after_a_sigkill(
    kafka: Any, influxdb: Any, tmp_path: Path
) -> None:
    topic = f"cluster-{uuid.uuid4().hex[:8]}"
    assert len(_produce(kafka.bootstrap_servers, topic, _readings())) == TOTAL

    def spec(name: str) -> tuple[Path, str]:
        folder = tmp_path / name
        folder.mkdir()
        db = f"dte_{name}_{uuid.uuid4().hex[:8]}"
        return (
            _spec(folder / "flow.yaml", kafka.bootstrap_servers, topic, influxdb.url, db, stop_at_end=True),
            db,
        )

    # A: one process.
    spec_a, db_a = spec("a")
    _run(spec_a, tmp_path / "a" / "recovery", 1, tmp_path / "a" / "log.txt")
    state_a, points_a = _twin_state(tmp_path / "a" / "recovery", True), _points(influxdb.url, db_a)
    assert len(points_a) == TOTAL

    # B: two processes; each keeps its own recovery partition. Short epochs: many snapshots,
    # so that every shard's first base is replaced and deleted.
    spec_b, db_b = spec("b")
    flow_b = yaml.safe_load(spec_b.read_text())
    flow_b["engine"]["epoch_seconds"] = 0.05
    spec_b.write_text(yaml.safe_dump(flow_b, sort_keys=False))
    recovery_b = tmp_path / "b" / "recovery"
    _run(spec_b, recovery_b, 2, tmp_path / "b" / "log.txt")
    assert sorted(p.relative_to(recovery_b).as_posix() for p in recovery_b.rglob("part-*.sqlite3")) == [
        "process-0/part-0.sqlite3",
        "process-1/part-1.sqlite3",
    ]
    log_b = (tmp_path / "b" / "log.txt").read_text()
    for i in (0, 1):
        assert f"[process {i} of 2]: finished" in log_b, log_b[-3000:]
    _compare(state_a, points_a, recovery_b, influxdb.url, db_b)
    _old_files_deleted(recovery_b)

    # C: two processes, the second killed with SIGKILL while they consume, then started again.
    spec_c, db_c = spec("c")
    recovery_c = tmp_path / "c" / "recovery"
    log_c = tmp_path / "c" / "log.txt"
    with log_c.open("ab") as out:
        cluster = subprocess.Popen(
            _command(spec_c, recovery_c, 2),
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        # Consuming: points reach InfluxDB. (The recovery partitions are not read while the
        # cluster runs: a reader holding them while the processes create them breaks the start.)
        deadline = time.monotonic() + 120
        while _count(influxdb.url, db_c) == 0:
            assert cluster.poll() is None, log_c.read_text()[-8000:]
            assert time.monotonic() < deadline, "the cluster did not start consuming"
            time.sleep(0.05)
        children = _children(cluster.pid)
        assert len(children) == 2, children
        os.kill(children[1], signal.SIGKILL)
        code = cluster.wait(60)  # the launcher stops the survivor and reports the failure
    finally:
        if cluster.poll() is None:
            cluster.kill()
            cluster.wait(30)
        for pid in _children(cluster.pid):
            os.kill(pid, signal.SIGKILL)
    assert code != 0
    assert "process 1 exited with -9" in log_c.read_text()
    killed_at = _consumed(recovery_c)
    assert killed_at < TOTAL, "consumed everything before the kill: produce more"
    _run(spec_c, recovery_c, 2, log_c)
    _compare(state_a, points_a, recovery_c, influxdb.url, db_c)
