"""The dte-stream command as a user runs it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[3]


def dte(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, "-m", "dte_stream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env=env,
        check=False,
    )


def test_validate_good_spec_prints_one_line_summary() -> None:
    res = dte("validate", "dataflows/demo.yaml")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1
    assert "demo: valid spec v1; sources: pumps (simulator); twin types: pump (3 channels)" in res.stdout


def test_validate_bad_spec_lists_problems_without_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: Bad Name\n"
        "sources: [{kind: simulator, twin_type: pump, twins: -1, rat: 5}]\n"
        "twin_types: [{name: pump, channels: {}}]\n"
        "sinks: [{kind: influx}]\n"
    )
    res = dte("validate", str(spec))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "name: String should match pattern" in res.stderr
    assert "sources[0]: unknown field 'rat'; allowed:" in res.stderr
    assert "twin_types[0].channels: Dictionary should have at least 1 item" in res.stderr
    assert "sinks[0]: kind 'influx' is not known; allowed: 'local_store', 'kafka', 'influxdb'" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--twins", "0"], "--twins: must be at least 1, got 0"),
        (["demo", "--rate", "fast"], "--rate: 'fast' is not a number"),
        (["demo", "--duration", "-3"], "--duration: must be a finite number >= 0"),
        (["run", "nope.yaml"], "nope.yaml:\n  - file not found"),
        (["query", "--data-dir", "/nonexistent/dte", "--limit", "1"], "no data in /nonexistent/dte"),
        (["query", "--since", "yesterday-ish"], "is not a time"),
    ],
)
def test_bad_arguments_give_a_clear_message(args: list[str], message: str) -> None:
    res = dte(*args)
    assert res.returncode == 2, res
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_demo_then_query_shows_readings_and_estimates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    res = dte("demo", "--twins", "20", "--rate", "0", "--duration", "3", "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    assert "finished after" in res.stderr
    assert "20 twins, 0 dead letters" in res.stderr
    # the summary's count is what the store holds: nothing buffered was lost
    processed = int(res.stderr.split(" readings processed")[0].rsplit(" ", 1)[1].replace(",", ""))
    stored = pl.scan_parquet(data / "readings" / "**" / "*.parquet").select(pl.len()).collect().item()
    assert stored == processed > 0

    res = dte(
        "query", "--data-dir", str(data), "--twin", "pump-0007", "--channel", "flow", "--format", "json"
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 20
    assert {r["twin_id"] for r in rows} == {"pump-0007"}
    assert all(r["channel"] == "flow" and r["unit"] == "m3/h" for r in rows)
    assert all(abs(r["estimate"] - r["value"]) < 30 for r in rows)  # the filter tracks the readings
    assert [r["time_ns"] for r in rows] == sorted(r["time_ns"] for r in rows)


def test_run_spec_with_env_reference_and_ticks(tmp_path: Path) -> None:
    spec = tmp_path / "flow.yaml"
    spec.write_text(
        "name: ticks\n"
        "sources: [{kind: simulator, twin_type: gauge, twins: 7, ticks: 11, rate: 0,"
        " start: '2026-01-01T00:00:00Z'}]\n"
        "twin_types: [{name: gauge, channels: {level: {}, humidity: {}}}]\n"
        "sinks: [{kind: local_store, data_dir: '${FLOW_DIR}'}]\n"
    )
    env_dir = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "dte_stream", "run", str(spec), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FLOW_DIR": str(env_dir)},
        check=False,
    )
    assert res.returncode == 0, res.stderr
    frame = pl.read_parquet(env_dir / "readings" / "**" / "*.parquet")
    assert frame.height == 7 * 11 * 2  # exactly `ticks` readings per twin and channel
    assert frame["twin_id"].n_unique() == 7
    assert str(frame["time"].min()) == "2026-01-01 00:00:00+00:00"
