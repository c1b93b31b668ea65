"""``dte-stream state inspect|migrate`` on the recovery directory of real runs (the simulator)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

SPEC = (
    "version: VERSION\n"
    "name: gauges\n"
    "sources: [{kind: file, path: INPUT, twin_type: gauge, batch_lines: 40}]\n"
    "twin_types: [{name: gauge, channels: {CHANNELS}}]\n"
    "sinks: [{kind: local_store, data_dir: DATA}]\n"
    "engine: {shards: 3, epoch_seconds: 0.2, clock: event}\n"
)


def dte(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dte_stream", *args], capture_output=True, text=True, timeout=120, check=False
    )


def write(path: Path, data: Path, version: int, channels: str) -> Path:
    text = SPEC.replace("VERSION", str(version)).replace("INPUT", str(path.parent / "input.jsonl"))
    path.write_text(text.replace("DATA", str(data)).replace("CHANNELS", channels))
    return path


def readings(path: Path, ticks: range, channels: list[str]) -> None:
    """Readings of six gauges, one per channel per second, appended to ``path``."""
    rng = np.random.default_rng(ticks.start)
    with path.open("a") as f:
        for k in ticks:
            for twin in range(6):
                for c, channel in enumerate(channels):
                    value = 10 * (c + 1) + twin + rng.normal()
                    f.write(
                        json.dumps(
                            {"twin_id": f"g{twin}", "channel": channel, "time_ns": k * 10**9, "value": value}
                        )
                    )
                    f.write("\n")


def test_inspect_shows_what_the_state_holds_and_migrate_adds_a_channel(tmp_path: Path) -> None:
    data, recovery = tmp_path / "data", tmp_path / "recovery"
    readings(tmp_path / "input.jsonl", range(1_767_225_600, 1_767_225_620), ["level", "humidity"])
    v1 = write(tmp_path / "v1.yaml", data, 1, "level: {}, humidity: {}")
    first = dte("run", str(v1), "--quiet", "--recovery-dir", str(recovery))
    assert first.returncode == 0, first.stderr

    shown = dte("state", "inspect", str(recovery), "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["dataflow"] == "gauges"
    assert info["spec"] == [{"name": "gauges", "version": 1}]
    gauge = info["twin_types"]["gauge"]
    assert gauge["twins"] == 6
    assert gauge["channels"] == ["level", "humidity"]
    assert gauge["shards"] == info["shards"] <= 3
    assert gauge["bytes"] > 0
    assert info["other_state"]["gauges.source_file"]["keys"] >= 1
    text = dte("state", "inspect", str(recovery)).stdout
    assert "written by spec gauges version 1" in text
    assert "gauge: 6 twins" in text

    # a channel removed: no migration; nothing is written
    removed = write(tmp_path / "removed.yaml", data, 2, "level: {}")
    before = {str(p.relative_to(recovery)): p.read_bytes() for p in recovery.rglob("*") if p.is_file()}
    refused = dte("state", "migrate", str(recovery), "--spec", str(removed))
    assert refused.returncode == 2
    assert "channels removed: humidity" in refused.stderr
    assert "nothing was changed" in refused.stderr
    assert {
        str(p.relative_to(recovery)): p.read_bytes() for p in recovery.rglob("*") if p.is_file()
    } == before

    # a channel added with its own filter: migrated; a restart resumes the old channels' state
    v2 = write(tmp_path / "v2.yaml", data, 2, "level: {}, humidity: {}, flow: {}")
    fits = dte("state", "inspect", str(recovery), "--spec", str(v2)).stdout
    assert "fits after `dte-stream state migrate`: twin type 'gauge': channels added: flow" in fits
    not_yet = dte("run", str(v2), "--quiet", "--recovery-dir", str(recovery))
    assert not_yet.returncode == 2
    assert "state migrate" in not_yet.stderr
    migrated = dte("state", "migrate", str(recovery), "--spec", str(v2))
    assert migrated.returncode == 0, migrated.stderr
    assert "channels added: flow" in migrated.stdout
    assert sorted(p.name for p in recovery.glob("part-*")) == [
        "part-0.sqlite3",
        "part-0.sqlite3.before-migrate",
    ]
    after = json.loads(dte("state", "inspect", str(recovery), "--json").stdout)
    assert after["spec"] == [{"name": "gauges", "version": 2}]
    assert after["twin_types"]["gauge"]["channels"] == ["level", "humidity", "flow"]
    assert after["twin_types"]["gauge"]["twins"] == 6

    readings(tmp_path / "input.jsonl", range(1_767_225_620, 1_767_225_630), ["level", "humidity", "flow"])
    resumed = dte("run", str(v2), "--quiet", "--recovery-dir", str(recovery))
    assert resumed.returncode == 0, resumed.stderr
    # the old channels carried on: ticks 21..30 equal those of a run that was never stopped
    reference = write(tmp_path / "ref.yaml", tmp_path / "ref", 2, "level: {}, humidity: {}, flow: {}")
    assert dte("run", str(reference), "--quiet").returncode == 0
    cols = ["twin_id", "channel", "time", "value", "estimate", "std"]

    def later(folder: Path) -> pl.DataFrame:
        rows = pl.read_parquet(folder / "readings" / "**" / "*.parquet")
        cut = rows.filter(pl.col("channel") == "level")["time"].unique().sort()[19]
        kept = rows.filter((pl.col("time") > cut) & pl.col("channel").is_in(["level", "humidity"]))
        return kept.select(cols).sort(["twin_id", "channel", "time"])

    resumed_rows, reference_rows = later(data), later(tmp_path / "ref")
    assert resumed_rows.height == 6 * 2 * 10
    assert resumed_rows.equals(reference_rows)
    flow = pl.read_parquet(data / "readings" / "**" / "*.parquet").filter(pl.col("channel") == "flow")
    assert flow.height == 6 * 10
    assert dte("state", "inspect", str(recovery), "--spec", str(v2)).stdout.rstrip().endswith("fits as it is")


def test_a_folder_that_is_not_a_recovery_dir_is_one_clear_line(tmp_path: Path) -> None:
    missing = dte("state", "inspect", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    empty = dte("state", "inspect", str(tmp_path))
    assert empty.returncode == 2
    assert "holds no recovery partitions" in empty.stderr
    (tmp_path / "part-0.sqlite3").write_bytes(b"not a database at all" * 100)
    garbage = dte("state", "inspect", str(tmp_path))
    assert garbage.returncode == 2
    assert "not a readable recovery partition" in garbage.stderr
    assert "Traceback" not in missing.stderr + empty.stderr + garbage.stderr


def test_a_damaged_snapshot_names_its_row(tmp_path: Path) -> None:
    import sqlite3

    part = tmp_path / "part-0.sqlite3"
    db = sqlite3.connect(part)
    db.execute("CREATE TABLE commits (part_index INTEGER, commit_epoch INTEGER)")
    db.execute("CREATE TABLE snaps (step_id TEXT, state_key TEXT, snap_epoch INTEGER, ser_change BLOB)")
    db.execute("INSERT INTO commits VALUES (0, 3)")
    db.execute("INSERT INTO snaps VALUES ('plant.twin_bank', 'shard-0000', 2, x'00ff00')")
    db.commit()
    db.close()
    shown = dte("state", "inspect", str(tmp_path))
    assert shown.returncode == 2
    assert "the snapshot of plant.twin_bank shard-0000 (epoch 2) cannot be read" in shown.stderr
