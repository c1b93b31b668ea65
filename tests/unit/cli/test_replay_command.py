"""``dte-stream replay``: CSV in, one scored row per reading out, bad rows as dead letters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dte_stream.cli.main import main
from dte_stream.errors import ConfigError
from dte_stream.replay import dead_letters_path, read_readings_csv
from dte_stream.twins.flags import ANOMALY

ROOT = Path(__file__).resolve().parents[3]
SPEC = ROOT / "dataflows" / "anomaly.yaml"


def _series(path: Path, n: int = 400, spike_at: int = 300) -> Path:
    rng = np.random.default_rng(5)
    values = 50 + rng.normal(size=n)
    values[spike_at] += 25
    stamps = [f"2024-01-01 {h:02d}:{m:02d}:00" for h, m in (divmod(i, 60) for i in range(n))]
    pl.DataFrame({"timestamp": stamps, "value": values}).write_csv(path)
    return path


def test_one_sensor_csv_gives_one_row_per_reading_with_every_output(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert (
        main(
            [
                "replay",
                str(SPEC),
                "--input",
                str(_series(tmp_path / "s.csv")),
                "--output",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    frame = pl.read_csv(out)
    assert frame.height == 400
    assert frame.columns[:12] == [
        "timestamp", "time_ns", "twin_id", "channel", "value", "estimate", "std", "innovation", "nis",
        "anomaly_score", "flags", "flag_names",
    ]  # fmt: skip
    assert {"forecast_1h", "forecast_1h_std", "level", "slope"} <= set(frame.columns)
    assert frame["twin_id"].unique().to_list() == ["s"]
    assert frame["timestamp"][0] == "2024-01-01T00:00:00Z"
    assert frame["time_ns"].is_sorted()
    scores = frame["anomaly_score"].fill_null(0.0).to_numpy()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[300] >= 0.7
    assert frame["flags"][300] & ANOMALY
    assert "anomaly" in frame["flag_names"][300]
    assert np.median(scores[50:300]) < 0.2
    assert not dead_letters_path(out).exists()


def test_unreadable_rows_are_dead_letters_and_the_rest_goes_through(tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(
        "timestamp,value\n"
        "2024-01-01T00:00:00Z,1.0\n"
        "yesterday,2.0\n"
        "2024-01-01T00:00:02+01:00,abc\n"
        "2024-01-01 00:00:03,\n"
        "1704067204,4.5\n"
        "2024-01-01 00:00:05,nan\n"
        "2024-01-01T00:00:06.5Z,6.0\n"
    )
    out = tmp_path / "out.csv"
    assert main(["replay", str(SPEC), "--input", str(src), "--output", str(out), "--quiet"]) == 0
    frame = pl.read_csv(out)
    assert frame["value"].to_list() == [1.0, 4.5, 6.0]
    assert frame["time_ns"].to_list() == [1704067200 * 10**9, 1704067204 * 10**9, 1704067206_500_000_000]
    letters = [json.loads(line) for line in dead_letters_path(out).read_text().splitlines()]
    reasons = [letter["reason"] for letter in letters]
    assert len(reasons) == 4
    assert reasons[0].startswith("row 3: timestamp")
    assert "yesterday" in reasons[0]
    assert reasons[1] == "row 4: value 'abc' is not a number"
    assert reasons[2].startswith("row 5: value")
    assert reasons[3] == "row 7: value nan is not finite"


def test_readings_with_twin_and_channel_columns(tmp_path: Path) -> None:
    src = tmp_path / "many.csv"
    rows = ["twin_id,channel,time_ns,value"]
    rows += [f"t{i % 3},value,{k * 10**9},{k + i}" for k in range(20) for i in range(3)]
    src.write_text("\n".join(rows) + "\n")
    batch, letters = read_readings_csv(src)
    assert len(batch) == 60
    assert letters == []
    assert sorted(set(batch.twin_id.tolist())) == ["t0", "t1", "t2"]


def test_a_csv_without_value_or_time_is_refused_with_the_columns_named(tmp_path: Path) -> None:
    src = tmp_path / "x.csv"
    src.write_text("when,reading\n1,2\n")
    with pytest.raises(ConfigError, match=r"needs a value column and a time column.*it has when, reading"):
        read_readings_csv(src)
    assert main(["replay", str(SPEC), "--input", str(src), "--output", str(tmp_path / "o.csv")]) == 2
