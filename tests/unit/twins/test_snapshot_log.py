"""Incremental shard snapshots: base + parts restore exactly the shard's full snapshot.

Random sequences of batches (new twins, known twins, two twin types, readings too late),
timers (stale sensors, TTL evictions), restores in the middle (the chain carries on from the
manifest, as after a crash) and live retunes; after every step the manifest's restore must
equal ``TwinShard.snapshot()`` field by field. Deleting old files keeps every file that a
manifest visible in the recovery partitions, or not yet written there, names.
"""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.errors import ConfigError
from dte_stream.readings import ReadingBatch
from dte_stream.spec import parse_spec
from dte_stream.twins.routing import Router
from dte_stream.twins.shard import TwinShard
from dte_stream.twins.snapshot_log import SnapshotLog, is_manifest, restore_snapshot

S = 10**9

SPEC = parse_spec(
    {
        "name": "incremental",
        "sources": [{"kind": "simulator", "twin_type": "pump"}],
        "twin_types": [
            {
                "name": "pump",
                "match": "pump-.*",
                "ttl": 30,
                "channels": {
                    "temperature": {"quality": {"stale_after": 5, "max": 90}},
                    "pressure": {"filter": {"process_noise": 1e-5, "measurement_noise": 0.0025}},
                    "flow": {},
                },
            },
            {"name": "valve", "match": "valve-.*", "channels": {"position": {}}},
        ],
        "sinks": [{"kind": "local_store"}],
        "engine": {"shards": 1, "clock": "event"},
    }
)
CHANNELS = {"pump": ["temperature", "pressure", "flow"], "valve": ["position"]}


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Equal snapshots: same keys, same values, arrays equal element by element (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict), path
        assert sorted(a) == sorted(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype, f"{path}: {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{path}: {a.shape} != {b.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def readings(twins: list[str], t: int, rng: np.random.Generator) -> ReadingBatch:
    ids, channels, values = [], [], []
    for twin in twins:
        for channel in CHANNELS["pump" if twin.startswith("pump") else "valve"]:
            if rng.random() < 0.8:
                ids.append(twin)
                channels.append(channel)
                values.append(float(rng.normal(50, 20)))
    jitter = rng.integers(-2 * S, S, size=len(ids))  # some readings late or out of order
    return ReadingBatch.from_columns(ids, channels, (t + jitter).tolist(), values)


def apply(shard: TwinShard, router: Router, batch: ReadingBatch) -> None:
    if len(batch):
        shard.on_batch([b for _, b in router.route(batch, "test").routed])


step = st.sampled_from(["batch", "few", "idle", "snapshot", "restore"])


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(step, min_size=1, max_size=30), seed=st.integers(0, 2**16))
def test_base_and_parts_restore_the_full_snapshot(tmp_path_factory: Any, steps: list[str], seed: int) -> None:
    root = tmp_path_factory.mktemp("recovery")
    rng = np.random.default_rng(seed)
    router = Router(SPEC)
    shard = TwinShard(SPEC, "shard-0000")
    log, _ = SnapshotLog.start(root, True, None)
    assert log is not None
    t = 1_700_000_000 * S
    pool = [f"pump-{i}" for i in range(40)] + [f"valve-{i}" for i in range(5)]
    manifest: dict[str, Any] = {}
    for kind in [*steps, "snapshot"]:
        if kind == "batch":
            t += S
            apply(shard, router, readings(list(rng.choice(pool, size=25, replace=False)), t, rng))
        elif kind == "few":
            t += S
            apply(shard, router, readings(list(rng.choice(pool, size=2, replace=False)), t, rng))
        elif kind == "idle":  # the event clock jumps: stale sensors, then evictions past the TTL
            t += int(rng.choice([6, 31])) * S
            apply(shard, router, readings([str(rng.choice(pool))], t, rng))
        elif kind == "snapshot" or (kind == "restore" and not manifest):
            manifest = log.snapshot(shard)
            if shard.banks:
                assert is_manifest(manifest)
                assert_same(restore_snapshot(log.folder(), manifest), shard.snapshot())
        else:  # a crash: carry on from the last manifest, as Bytewax would hand it back
            log, full = SnapshotLog.start(root, True, manifest)
            assert log is not None
            shard = TwinShard.restore(SPEC, None, full)
            log.attach(shard)


def test_a_live_retune_or_a_compaction_starts_a_new_base(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    router, shard = Router(SPEC), TwinShard(SPEC, "shard-0000")
    log = SnapshotLog(tmp_path)
    t = 1_700_000_000 * S
    apply(shard, router, readings([f"pump-{i}" for i in range(20)], t, rng))
    first = log.snapshot(shard)
    apply(shard, router, readings(["pump-1"], t + S, rng))
    second = log.snapshot(shard)
    assert second["base"] == first["base"]
    assert len(second["parts"]) == 1
    assert second["parts_bytes"] < first["base_bytes"] / 4  # one twin, not twenty
    shard.banks["pump"] = TwinShard.restore(SPEC, "shard-0000", shard.snapshot()).banks["pump"]  # a new bank
    third = log.snapshot(shard)
    assert third["base"] != first["base"]
    assert third["parts"] == []
    for k in range(40):  # parts grow past half the base: compaction
        apply(shard, router, readings([f"pump-{i}" for i in range(20)], t + (k + 2) * S, rng))
        last = log.snapshot(shard)
    assert last["base"] != third["base"]
    assert_same(restore_snapshot(log.folder(), last), shard.snapshot())


def _partition(
    root: Path, manifests: list[dict[str, Any]], key: str = "shard-0000", name: str = "part-0.sqlite3"
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(root / name)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS snaps (step_id TEXT, state_key TEXT, snap_epoch INTEGER, ser_change BLOB)"
    )
    conn.execute("DELETE FROM snaps")
    for epoch, m in enumerate(manifests):
        conn.execute("INSERT INTO snaps VALUES (?, ?, ?, ?)", ("f.twin_bank", key, epoch, pickle.dumps(m)))
    conn.execute("INSERT INTO snaps VALUES (?, ?, ?, ?)", ("f.other", key, 0, pickle.dumps(123)))
    conn.commit()
    conn.close()


def test_only_files_no_resumable_manifest_names_are_deleted(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    router, shard = Router(SPEC), TwinShard(SPEC, "shard-0000")
    log = SnapshotLog(tmp_path)
    t = 1_700_000_000 * S
    written = []
    for k in range(6):
        apply(shard, router, readings([f"pump-{i}" for i in range(10)], t + k * S, rng))
        written.append(log.snapshot(shard))
    files = {p.name for p in log.folder().glob("*.pkl")}
    assert log.collect() == []  # nothing visible in the partitions yet: nothing deleted
    assert {p.name for p in log.folder().glob("*.pkl")} == files
    _partition(tmp_path, [written[3], written[4]])  # Bytewax committed 3 (and wrote 4); 5 is in flight
    log.collect()
    left = {p.name for p in log.folder().glob("*.pkl")}
    needed = {written[3]["base"], *written[3]["parts"], *written[4]["parts"], *written[5]["parts"]}
    assert needed <= left
    assert left == needed | {written[5]["base"]}
    assert_same(
        restore_snapshot(log.folder(), written[3])["banks"]["pump"]["twin_ids"],
        [f"pump-{i}" for i in range(10)],
    )


def test_a_cluster_reads_the_partitions_of_every_process_and_needs_them_all(tmp_path: Path) -> None:
    """Process I's partition is in ``process-I/``; a key's manifests may be in another process's."""
    rng = np.random.default_rng(5)
    router, shard = Router(SPEC), TwinShard(SPEC, "shard-0000")
    log = SnapshotLog(tmp_path, processes=2)
    t = 1_700_000_000 * S
    written = []
    for k in range(6):
        apply(shard, router, readings([f"pump-{i}" for i in range(10)], t + k * S, rng))
        written.append(log.snapshot(shard))
    files = {p.name for p in log.folder().glob("*.pkl")}
    _partition(tmp_path / "process-1", [written[3], written[4]], name="part-1.sqlite3")
    assert log.partitions() is None  # process 0's partition is not there (yet)
    assert log.collect() == []
    assert {p.name for p in log.folder().glob("*.pkl")} == files
    _partition(tmp_path / "process-0", [], key="shard-0001")  # another key's manifests only
    assert log.partitions() == [tmp_path / "process-0/part-0.sqlite3", tmp_path / "process-1/part-1.sqlite3"]
    assert log.collect()
    left = {p.name for p in log.folder().glob("*.pkl")}
    assert left == {written[3]["base"], *written[3]["parts"], *written[4]["parts"], *written[5]["parts"]} | {
        written[5]["base"]
    }
    assert SnapshotLog(tmp_path).partitions() is None  # one process reads part-*.sqlite3 in the root


def test_a_resumed_chain_keeps_the_files_of_the_manifest_it_resumed_from(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    router, shard = Router(SPEC), TwinShard(SPEC, "shard-0000")
    log = SnapshotLog(tmp_path)
    apply(shard, router, readings(["pump-1", "pump-2"], 1_700_000_000 * S, rng))
    resumed_from = log.snapshot(shard)
    _partition(tmp_path, [])  # the partition does not show it (yet)
    again, full = SnapshotLog.start(tmp_path, True, resumed_from)
    assert again is not None
    assert full is not None
    restored = TwinShard.restore(SPEC, None, full)
    again.attach(restored)
    assert again.collect() == []  # nothing visible: nothing deleted
    _partition(tmp_path, [{**resumed_from, "base": "base-old.pkl", "parts": []}])  # an older manifest is
    (again.folder() / "base-old.pkl").write_bytes(b"x")
    assert again.collect() == []  # the resumed manifest's files stay
    assert_same(restore_snapshot(again.folder(), resumed_from), shard.snapshot())


def test_a_manifest_whose_files_are_gone_is_refused_by_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    router, shard = Router(SPEC), TwinShard(SPEC, "shard-0000")
    log = SnapshotLog(tmp_path)
    apply(shard, router, readings(["pump-1"], 1_700_000_000 * S, rng))
    manifest = log.snapshot(shard)
    (log.folder() / manifest["base"]).unlink()
    with pytest.raises(ConfigError, match=manifest["base"]):
        SnapshotLog.start(tmp_path, True, manifest)
    with pytest.raises(ConfigError, match="--recovery-dir"):
        SnapshotLog.start(None, True, manifest)


def test_full_snapshots_need_no_log_and_an_old_full_state_starts_a_chain(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    router, shard = Router(SPEC), TwinShard(SPEC, "shard-0000")
    apply(shard, router, readings(["pump-1", "valve-2"], 1_700_000_000 * S, rng))
    full = shard.snapshot()
    assert SnapshotLog.start(tmp_path, False, full) == (None, full)
    assert SnapshotLog.start(None, True, full) == (None, full)
    log, again = SnapshotLog.start(tmp_path, True, full)
    assert log is not None
    assert again is full
    log.attach(shard)
    manifest = log.snapshot(shard)
    assert manifest["parts"] == []
    assert manifest["base"]
    off, restored = SnapshotLog.start(tmp_path, False, manifest)  # turned off: restores, then full snapshots
    assert off is None
    assert restored is not None
    assert_same(restored, full)


def test_a_part_of_many_twins_is_written_a_chunk_at_a_time_and_restores_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dte_stream.twins.snapshot_log.PART_CHUNK", 3)
    rng = np.random.default_rng(5)
    router, shard = Router(SPEC), TwinShard(SPEC, "shard-0000")
    log = SnapshotLog(tmp_path)
    t = 1_700_000_000 * S
    apply(shard, router, readings([f"pump-{i}" for i in range(4)], t, rng))
    manifest = log.snapshot(shard)  # the base
    pool = [f"pump-{i}" for i in range(12)] + [f"valve-{i}" for i in range(4)]  # new twins, a new type
    for k in range(1, 4):
        apply(shard, router, readings(pool[: 8 + 2 * k], t + k * S, rng))
        manifest = log.snapshot(shard)
        assert_same(restore_snapshot(log.folder(), manifest), shard.snapshot())
    assert manifest["parts"]
    with open(log.folder() / manifest["parts"][-1], "rb") as f:  # 12 pumps and 2 valves: 4 pickles
        chunks = []
        while f.peek(1):
            chunks.append(pickle.load(f))
    assert [sorted(c) for c in chunks] == [["pump", "valve"], ["pump"], ["pump"], ["pump"]]
    log, full = SnapshotLog.start(tmp_path, True, manifest)  # a restart goes on from it
    assert log is not None
    again = TwinShard.restore(SPEC, None, full)
    assert_same(again.snapshot(), shard.snapshot())
