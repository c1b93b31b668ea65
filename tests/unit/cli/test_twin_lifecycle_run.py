"""Twin lifecycle through whole dataflow runs: layout checks on restart, stale sensors in replays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl

from dte_stream.replay import replay_frame
from dte_stream.spec import parse_spec
from dte_stream.twins.flags import STALE

SPEC = (
    "name: lifecycle\n"
    "sources: [{kind: simulator, twin_type: gauge, twins: 5, ticks: 30, rate: 0,"
    " start: '2026-01-01T00:00:00Z'}]\n"
    "twin_types: [{name: gauge, channels: {level: {filter: {model: MODEL}}, humidity: {}}}]\n"
    "sinks: [{kind: local_store, data_dir: DATA}]\n"
    "engine: {epoch_seconds: 0.2}\n"
)


def _run(spec: Path, recovery: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dte_stream", "run", str(spec), "--quiet", "--recovery-dir", str(recovery)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_restart_with_a_changed_state_layout_is_refused_and_tuning_is_not(tmp_path: Path) -> None:
    spec = tmp_path / "flow.yaml"
    recovery = tmp_path / "recovery"
    data = tmp_path / "data"
    spec.write_text(SPEC.replace("MODEL", "random_walk").replace("DATA", str(data)))
    first = _run(spec, recovery)
    assert first.returncode == 0, first.stderr
    assert pl.read_parquet(data / "readings" / "**" / "*.parquet").height == 5 * 30 * 2
    # another model for one channel: the saved filter state cannot be loaded
    spec.write_text(SPEC.replace("MODEL", "local_linear_trend").replace("DATA", str(data)))
    refused = _run(spec, recovery)
    assert refused.returncode == 2
    assert "the recovery state does not fit this spec" in refused.stderr
    assert "twin type 'gauge'" in refused.stderr
    assert "fresh --recovery-dir" in refused.stderr
    assert "Traceback" not in refused.stderr
    # tuning (noise levels) keeps the layout: the restart resumes
    tuned = SPEC.replace("MODEL", "random_walk, process_noise: 0.5").replace("DATA", str(data))
    spec.write_text(tuned)
    resumed = _run(spec, recovery)
    assert resumed.returncode == 0, resumed.stderr


def test_a_sensor_that_stops_is_reported_stale_in_event_time() -> None:
    spec = parse_spec(
        {
            "name": "stale",
            "sources": [{"kind": "simulator", "twin_type": "gauge"}],
            "twin_types": [{"name": "gauge", "channels": {"level": {}}}],
            "sinks": [{"kind": "local_store"}],
        }
    )
    from dte_stream.readings import ReadingBatch

    times = [1_767_225_600 * 10**9 + k * 10**9 for k in range(200)]
    ids = ["a"] * 200 + ["b"] * 20  # b stops after 20 s while a goes on
    batch = ReadingBatch.from_columns(ids, ["level"] * 220, times + times[:20], [1.0] * 220)
    order = batch.time_ns.argsort(kind="stable")
    result = replay_frame(spec, batch.take(order), "gauge")
    assert result.dead_letters == []
    assert result.frame.height == 220
    assert result.stale_events == 1
    assert not ((result.frame["flags"] & STALE) > 0).any()  # reading rows never carry the timer's flag
