"""Crash recovery of the twin state: SIGKILL while consuming Kafka, restart from the recovery dir.

Run A consumes a fixed topic uninterrupted; run B (fresh database, fresh recovery dir) is
killed with SIGKILL at three seeded random moments while it consumes and restarted each time
with the same ``--recovery-dir``. Both end with SIGTERM (graceful). B must leave exactly A's
twin state (the twin banks' last snapshots, compared per twin) and exactly A's InfluxDB points
(each reading's point once, every field equal).

The twin clock is the wall clock and staleness is pushed out of reach (``stale_min``), so no
output depends on when a run happens; readings carry fixed event times in the past.

This test found two engine bugs, now fixed: InfluxDB points of epochs that were committed but
still sat in the sink's buffer were lost on SIGKILL (the sink now flushes at each epoch's end,
before the commit), and two workers shared a Router whose placement cache was not thread-safe
(the second test).
"""

from __future__ import annotations

import math
import os
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from test_pipeline_kafka import _count

from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins import flags as fl
from dte_stream.twins.bank import CELL_ARRAYS, TwinBank
from dte_stream.twins.routing import shard_key, shard_of
from dte_stream.twins.shard import SHARD_FORMAT
from dte_stream.twins.snapshot_log import is_manifest, restore_snapshot

pytestmark = pytest.mark.integration

TWINS = 20
CHANNELS = ("temperature", "pressure")
READINGS = 300  # per (twin, channel): enough that three kills land while it consumes
TOTAL = TWINS * len(CHANNELS) * READINGS
PARTITIONS = 4
T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
SHIFTED = (0, 7, 13)  # twins whose temperature jumps by +12 degC at reading 100 (gate, then reset)
SPIKED = (4, 11)  # twins with one pressure spike at reading 60 (gated, anomalous)
KILLS = 3
SEED = 20260101

TWIN_TYPE: dict[str, Any] = {
    "name": "pump",
    "channels": {
        "temperature": {
            "unit": "degC",
            "filter": {"process_noise": 0.001, "measurement_noise": 0.25},
            "quality": {"stale_min": "3650d"},
        },
        "pressure": {
            "unit": "bar",
            "filter": {"process_noise": 0.00001, "measurement_noise": 0.0025},
            "quality": {"stale_min": "3650d"},
        },
    },
    "kalman": {"gate": 10.83, "reset_after": 3, "lateness": "60s"},
    "anomaly": {"level": 0.99},
}


def _twin_id(i: int) -> str:
    return f"pump-{i:04d}"


def _readings() -> Iterator[dict[str, Any]]:
    """Every reading, in time order: noisy levels, a few level shifts and spikes."""
    rng = np.random.default_rng(SEED)
    temp = 20.0 + 0.5 * np.arange(TWINS)[:, None] + rng.normal(0.0, 0.5, (TWINS, READINGS))
    pres = 2.0 + 0.1 * np.arange(TWINS)[:, None] + rng.normal(0.0, 0.05, (TWINS, READINGS))
    temp[list(SHIFTED), 100:] += 12.0
    pres[list(SPIKED), 60] += 2.0
    for k in range(READINGS):
        for i in range(TWINS):
            for channel, values in (("temperature", temp), ("pressure", pres)):
                yield {
                    "twin_id": _twin_id(i),
                    "channel": channel,
                    "time_ns": T0_NS + k * 10**9,
                    "value": float(values[i, k]),
                }


Offsets = dict[tuple[str, str, int], tuple[int, int]]


def _produce(bootstrap: str, topic: str, records: Iterable[dict[str, Any]]) -> Offsets:
    """Publish every reading (key: the twin id); returns each reading's (partition, offset)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    where: Offsets = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        r = orjson.loads(msg.value())
        where[r["twin_id"], r["channel"], r["time_ns"]] = (msg.partition(), msg.offset())

    for record in records:
        value, key = orjson.dumps(record), record["twin_id"].encode()
        while True:
            try:
                producer.produce(topic, value, key=key, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full (100,000 messages): let it drain
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(300) == 0
    return where


def _spec(
    path: Path,
    bootstrap: str,
    topic: str,
    influx_url: str,
    db: str,
    *,
    workers: int = 1,
    stop_at_end: bool = False,
) -> Path:
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
                        "batch_size": 20,  # many small batches: kills land between and inside epochs
                        "stop_at_end": stop_at_end,
                    }
                ],
                "twin_types": [TWIN_TYPE],
                "sinks": [{"kind": "influxdb", "url": influx_url, "database": db, "create_database": True}],
                "dead_letters": {"path": str(path.parent / "dead_letters.jsonl")},
                # One worker for the crash test: with two, the router races (ROUTER_RACE below).
                "engine": {"shards": 4, "workers": workers, "epoch_seconds": 0.5},
            },
            sort_keys=False,
        )
    )
    return path


# -- the recovery dir -------------------------------------------------------------------------


def _resume_snapshots(recovery_dir: Path, step: str) -> dict[str, Any]:
    """The snapshot of each state key of ``step`` that a restart would resume from.

    Bytewax resumes at the smallest worker frontier of the last execution that recorded one
    for every worker, from each key's latest snapshot of an earlier epoch (None: discarded).
    """
    parts = sorted(recovery_dir.rglob("part-*.sqlite3"))  # a cluster: one folder per process
    fronts: dict[int, list[int]] = {}
    workers: dict[int, int] = {}
    rows: list[tuple[str, int, bytes | None]] = []
    for part in parts:
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5) as db:
            workers.update(db.execute("SELECT ex_num, worker_count FROM exs").fetchall())
            for ex, frontier in db.execute("SELECT ex_num, worker_frontier FROM fronts"):
                fronts.setdefault(ex, []).append(frontier)
            rows += db.execute(
                "SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id = ?", (step,)
            ).fetchall()
    complete = [ex for ex, f in fronts.items() if len(f) == workers.get(ex)]
    if not complete:
        return {}
    resume_epoch = min(fronts[max(complete)])
    latest: dict[str, tuple[int, bytes | None]] = {}
    for key, epoch, ser in rows:
        if epoch < resume_epoch and (key not in latest or epoch > latest[key][0]):
            latest[key] = (epoch, ser)
    return {key: None if ser is None else pickle.loads(ser) for key, (_, ser) in latest.items()}


def _resume_offsets(recovery_dir: Path) -> dict[int, int]:
    """Per Kafka partition, the offset a restart would read from (absent: from the start)."""
    if not recovery_dir.exists():
        return {}
    try:
        offsets = _resume_snapshots(recovery_dir, "twin_recovery.source_plant")
    except sqlite3.Error:  # being created or written just now: no progress to report yet
        return {}
    return {int(key.rpartition("/")[2]): int(o) for key, o in offsets.items() if o is not None}


def _consumed(recovery_dir: Path) -> int:
    """Records a restart would not read again: those covered by the resume point."""
    return sum(_resume_offsets(recovery_dir).values())


def _twin_state(recovery_dir: Path, incremental: bool | None = None) -> dict[str, dict[str, Any]]:
    """Every twin's state in the banks' resume snapshots, by twin id; and each shard's scalars.

    Rows within a shard follow the order twins were first seen, which depends on how batches
    interleave, so per-twin arrays (first axis: twins, or twins x channels) are keyed by twin
    id. Every array of the snapshot is accounted for: an unknown layout fails the test.
    ``incremental``: the state must be stored as manifests (True: one process, the default) or
    whole (False: a cluster keeps full snapshots); None takes either.
    """
    spec = TwinTypeSpec.model_validate(TWIN_TYPE)
    width = len(spec.channel_names())
    out: dict[str, dict[str, Any]] = {}
    for key, resumed in _resume_snapshots(recovery_dir, "twin_recovery.twin_bank").items():
        assert resumed, f"shard {key} has no state"
        if incremental is not None:
            assert is_manifest(resumed) == incremental, f"shard {key}: incremental {not incremental}"
        # incremental snapshots (one process, the default): base + parts beside the partitions
        shard = (
            restore_snapshot(recovery_dir / "twin-state" / key, resumed) if is_manifest(resumed) else resumed
        )
        assert shard["format"] == SHARD_FORMAT
        assert shard["key"] == key
        assert list(shard["banks"]) == ["pump"]
        snap = shard["banks"]["pump"]
        bank = TwinBank.restore(spec, snap)  # the engine takes it back
        ids = list(snap["twin_ids"])
        n = len(ids)
        assert bank.twin_ids == ids
        assert snap["learners"] is None
        per_twin: dict[str, np.ndarray[Any, Any]] = {}
        scalars: dict[str, Any] = {"counters": snap["counters"], "watermark": shard["watermark"]}
        arrays = {name: snap[name] for name in ("last_seen", *CELL_ARRAYS)}
        arrays |= {
            f"groups.{g}.{name}": a for g, group in snap["groups"].items() for name, a in group.items()
        }
        for part in ("quality", "anomaly"):
            for name, value in snap[part].items():
                if isinstance(value, np.ndarray):
                    arrays[f"{part}.{name}"] = value
                else:
                    scalars[f"{part}.{name}"] = value
        for name, a in arrays.items():
            assert a.shape[0] in (n, n * width), f"{name}: unexpected shape {a.shape} for {n} twins"
            per_twin[name] = a.reshape(n, -1) if a.size else a.reshape(n, 0)
        # by shard number: a cluster's keys carry a placement suffix (dte_stream/placement.py)
        number = key.split(".", 1)[0]
        for row, twin in enumerate(ids):
            assert twin not in out, f"twin {twin} has state in shards {out[twin]['shard']} and {key}"
            out[twin] = {name: a[row] for name, a in per_twin.items()} | {"shard": number}
        out[f"shard {number}"] = scalars
    return out


# -- InfluxDB ---------------------------------------------------------------------------------


def _points(url: str, db: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Every point of the database by (twin id, channel, time), with its fields and tags."""
    import json
    import urllib.parse
    import urllib.request

    query = 'SELECT * FROM "dte_readings" GROUP BY *'
    params = urllib.parse.urlencode({"q": query, "db": db, "epoch": "ns"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as response:
        body = json.loads(response.read())
    points: dict[tuple[str, str, int], dict[str, Any]] = {}
    for series in body["results"][0].get("series", []):
        tags = series["tags"]
        for row in series["values"]:
            fields = dict(zip(series["columns"], row, strict=True))
            key = (tags["twin_id"], tags["channel"], int(fields.pop("time")))
            assert key not in points, f"point {key} is there twice"
            points[key] = {**fields, **{f"tag.{k}": v for k, v in tags.items()}}
    return points


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def _same_state(a: Any, b: Any) -> bool:
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    if a_arr.dtype.kind == "f" or b_arr.dtype.kind == "f":
        return a_arr.shape == b_arr.shape and bool(
            np.allclose(a_arr, b_arr, rtol=1e-9, atol=1e-9, equal_nan=True)
        )
    return bool(np.array_equal(a_arr, b_arr))


# -- the daemon -------------------------------------------------------------------------------


class Daemon:
    """`dte-stream run SPEC --recovery-dir DIR` as a child process, its log in a file."""

    def __init__(self, spec: Path, recovery_dir: Path, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dte_stream", "run", str(spec), "--recovery-dir", str(recovery_dir)],
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"dte-stream exited with {self.proc.returncode}:\n{self.log.read_text()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        assert code == 0, f"dte-stream exited with {code} on SIGTERM:\n{self.log.read_text()}"

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def _wait(daemon: Daemon, predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon.check_alive()
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _run_to_end(daemon: Daemon, recovery_dir: Path) -> None:
    """Wait until a restart would read no record again, then stop gracefully."""
    try:
        _wait(daemon, lambda: _consumed(recovery_dir) == TOTAL, 60, "every record consumed")
        daemon.stop()
    finally:
        daemon.ensure_dead()


def test_sigkill_at_random_points_then_restart_gives_the_uninterrupted_result(
    kafka: Any, influxdb: Any, tmp_path: Path
) -> None:
    topic = f"twins-{uuid.uuid4().hex[:8]}"
    where = _produce(kafka.bootstrap_servers, topic, _readings())
    assert len(where) == TOTAL

    # Run A: uninterrupted.
    dir_a = tmp_path / "a"
    dir_a.mkdir()
    db_a = f"dte_a_{uuid.uuid4().hex[:8]}"
    spec_a = _spec(dir_a / "flow.yaml", kafka.bootstrap_servers, topic, influxdb.url, db_a)
    started = time.monotonic()
    _run_to_end(Daemon(spec_a, dir_a / "recovery", dir_a / "log.txt"), dir_a / "recovery")
    run_a_seconds = time.monotonic() - started

    # Run B: killed at seeded random moments while it consumes, restarted from its recovery dir.
    dir_b = tmp_path / "b"
    dir_b.mkdir()
    db_b = f"dte_b_{uuid.uuid4().hex[:8]}"
    spec_b = _spec(dir_b / "flow.yaml", kafka.bootstrap_servers, topic, influxdb.url, db_b)
    recovery_b = dir_b / "recovery"
    rng = random.Random(SEED)
    killed_at: list[int] = []
    for _ in range(KILLS):
        before = _consumed(recovery_b)
        daemon = Daemon(spec_b, recovery_b, dir_b / "log.txt")
        try:
            # Consuming: this run has committed an epoch past the point it resumed from.
            _wait(daemon, lambda before=before: _consumed(recovery_b) > before, 60, "consumption to start")
            time.sleep(rng.uniform(0.0, 0.5))  # anywhere in an epoch
            daemon.check_alive()
            assert _consumed(recovery_b) < TOTAL, "consumed everything before the kill: produce more"
            daemon.kill()
        finally:
            daemon.ensure_dead()
        killed_at.append(_consumed(recovery_b))
    last_resume = _resume_offsets(recovery_b)
    _run_to_end(Daemon(spec_b, recovery_b, dir_b / "log.txt"), recovery_b)
    print(f"run A {run_a_seconds:.1f} s; run B resumed after kills at {killed_at} of {TOTAL} records")
    assert all(0 < k < TOTAL for k in killed_at), f"a kill landed outside the consumption: {killed_at}"
    assert killed_at == sorted(killed_at)

    # The same twin state, twin by twin (and each shard's counters and watermark).
    state_a, state_b = _twin_state(dir_a / "recovery", True), _twin_state(recovery_b, True)
    assert len([k for k in state_a if k.startswith("pump-")]) == TWINS
    assert sorted(state_a) == sorted(state_b)
    for twin, fields in state_a.items():
        assert fields.keys() == state_b[twin].keys(), twin
        for name, value in fields.items():
            assert _same_state(value, state_b[twin][name]), (
                f"{twin} {name}: A {value}, B {state_b[twin][name]}"
            )

    # A: one point per reading; the data exercised the gate, the resets and the anomaly flags.
    points_a, points_b = _points(influxdb.url, db_a), _points(influxdb.url, db_b)
    assert _count(influxdb.url, db_a) == TOTAL
    assert points_a.keys() == where.keys()
    for bit in (fl.GATED, fl.RESET, fl.ANOMALY):
        assert any(p["flags"] & bit for p in points_a.values()), f"no point flagged {bit}"

    # B: no point A lacks, every point with A's values.
    assert points_b.keys() <= points_a.keys(), sorted(points_b.keys() - points_a.keys())[:5]
    for key, fields in points_b.items():
        other = points_a[key]
        assert fields.keys() == other.keys(), key
        different = {f: (v, other[f]) for f, v in fields.items() if not _close(v, other[f])}
        assert not different, f"point {key}: B and A differ: {different}"

    # B: each point there. Readings the last run read (at or after its resume offsets) always are.
    missing = points_a.keys() - points_b.keys()
    after_last_resume = {k for k, (p, o) in where.items() if o >= last_resume.get(p, 0)}
    assert not missing & after_last_resume, sorted(missing & after_last_resume)[:5]
    assert not missing, f"{len(missing)} points never reached InfluxDB in run B: {sorted(missing)[:5]}"
    assert _count(influxdb.url, db_b) == TOTAL


def test_two_workers_keep_each_twin_in_its_own_shard(kafka: Any, influxdb: Any, tmp_path: Path) -> None:
    """Many twins, new to both workers at once: each twin's state lives in the shard of its id."""
    twins = 1000
    topic = f"twins-{uuid.uuid4().hex[:8]}"
    records = (
        {"twin_id": _twin_id(i), "channel": channel, "time_ns": T0_NS + k * 10**9, "value": float(i + k)}
        for k in range(3)
        for i in range(twins)
        for channel in CHANNELS
    )
    assert len(_produce(kafka.bootstrap_servers, topic, records)) == twins * len(CHANNELS) * 3
    spec = _spec(
        tmp_path / "flow.yaml",
        kafka.bootstrap_servers,
        topic,
        influxdb.url,
        "dte_race",
        workers=2,
        stop_at_end=True,
    )
    run = subprocess.run(
        [sys.executable, "-m", "dte_stream", "run", str(spec), "--recovery-dir", str(tmp_path / "recovery")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    state = _twin_state(tmp_path / "recovery")  # fails on a twin with state in two shards
    placed = {twin: fields["shard"] for twin, fields in state.items() if twin.startswith("pump-")}
    assert len(placed) == twins
    wrong = {twin: key for twin, key in placed.items() if key != shard_key(shard_of(twin, 4))}
    assert not wrong, f"{len(wrong)} twins in the wrong shard, e.g. {list(wrong.items())[:3]}"
