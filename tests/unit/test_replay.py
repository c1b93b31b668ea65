"""Replay drives the twin shards with no engine: the same outputs as the Bytewax dataflow, many series."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
from bytewax.testing import TestingSink, TestingSource, run_main

from dte_stream.batches import DeadLetter, EstimateBatch, ReadingBatch, SourceBatch
from dte_stream.cli.main import main
from dte_stream.dataflow import build_flow
from dte_stream.replay import dead_letters_path, read_readings_csv, read_series, replay_frame
from dte_stream.spec import parse_spec

SPEC = {
    "name": "equal",
    "sources": [{"kind": "simulator", "twin_type": "pump"}],
    "twin_types": [
        {
            "name": "pump",
            "channels": {
                "temp": {"filter": {"model": "local_linear_trend"}},
                "flow": {"quality": {"stale_min": "5s"}},
            },
            "kalman": {"horizons": ["10s"]},
            "outputs": {"states": True},
        }
    ],
    "sinks": [{"kind": "local_store"}],
    "engine": {"clock": "event", "shards": 3},
}


def _readings() -> ReadingBatch:
    """8 twins, 2 channels, 150 s; twin 3's flow stops half-way; a spike; one reading too late."""
    rng = np.random.default_rng(7)
    ids, chans, times, values = [], [], [], []
    for k in range(150):
        for i in range(8):
            for c, base in (("temp", 20.0 + i), ("flow", 3.0)):
                if c == "flow" and i == 3 and k > 75:
                    continue
                ids.append(f"p{i}")
                chans.append(c)
                times.append(1_767_225_600 * 10**9 + k * 10**9 + i * 1000)
                values.append(base + 0.1 * k * (c == "temp") + rng.normal(0, 0.2) + (15.0 if k == 90 else 0))
    ids.append("p0")
    chans.append("temp")
    times.append(1_767_225_600 * 10**9)  # older than the lateness bound by the time it comes
    values.append(1.0)
    return ReadingBatch.from_columns(ids, chans, times, values)


def _rows(batches: list[EstimateBatch]) -> dict[tuple[str, str, int], dict[str, float]]:
    out = {}
    for b in batches:
        for i in range(len(b)):
            if not np.isfinite(b.value[i]):
                continue  # a timer row: when timers fire differs between engines
            fields = {
                "value": b.value[i], "estimate": b.estimate[i], "std": b.std[i],
                "innovation": b.innovation[i], "nis": b.nis[i], "flags": float(b.flag_column()[i]),
                "anomaly_score": b.score_column()[i], **{k: v[i] for k, v in b.extra.items()},
            }  # fmt: skip
            key = (str(b.twin_id[i]), str(b.channel[i]), int(b.time_ns[i]))
            assert key not in out, key
            out[key] = fields
    return out


def test_replay_gives_the_dataflows_outputs_for_every_field() -> None:
    spec = parse_spec(SPEC)
    readings = _readings()
    # The dataflow: the same readings as 2,000-reading source batches through Bytewax.
    items = [
        SourceBatch("replay", readings.take(np.arange(lo, min(lo + 2000, len(readings)))), "pump")
        for lo in range(0, len(readings), 2000)
    ]
    got: list[EstimateBatch] = []
    dead: list[DeadLetter] = []
    flow = build_flow(
        spec,
        inputs={"replay": TestingSource(items)},
        outputs={"replay": TestingSink(got)},
        dead_letter_output=TestingSink(dead),
    )
    run_main(flow, epoch_interval=timedelta(seconds=3600))  # type: ignore[no-untyped-call]
    flow_rows = _rows(got)
    # The replay: shards driven directly, with its own (larger) batches.
    result = replay_frame(spec, readings, "pump", batch_readings=777)
    frame = result.frame
    assert frame.height == len(flow_rows) == len(readings) - 1
    assert [d.reason for d in result.dead_letters] == [d.reason for d in dead]
    assert len(dead) == 1
    assert "older than twin 'p0'" in dead[0].reason
    columns = [
        c for c in frame.columns if c not in ("timestamp", "time_ns", "twin_id", "channel", "flag_names")
    ]
    assert {"level", "slope", "forecast_10s"} <= set(columns)
    compared = 0
    for row in frame.iter_rows(named=True):
        want = flow_rows[(row["twin_id"], row["channel"], row["time_ns"])]
        for name in columns:
            a, b = row[name], want[name]
            a = float("nan") if a is None else float(a)
            assert np.isclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True), (row["twin_id"], name, a, b)
            compared += 1
    assert compared > 10_000
    assert result.stale_events >= 1  # p3's flow stopped


def test_many_series_from_a_folder_replay_as_many_twins(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    (folder / "sub").mkdir(parents=True)
    for name, offset in (("a", 0.0), ("b", 10.0), ("sub/c", 20.0)):
        stamps = [f"2024-01-01 00:{m:02d}:00" for m in range(50)]
        pl.DataFrame({"timestamp": stamps, "value": [offset + m % 3 for m in range(50)]}).write_csv(
            folder / f"{name}.csv"
        )
    batch, letters = read_series([folder])
    assert letters == []
    assert sorted(set(batch.twin_id.tolist())) == ["a", "b", "c"]
    assert (np.diff(batch.time_ns) >= 0).all()
    out = tmp_path / "out.csv"
    spec = Path(__file__).resolve().parents[2] / "dataflows" / "anomaly.yaml"
    assert main(["replay", str(spec), "--input", str(folder), "--output", str(out), "--quiet"]) == 0
    frame = pl.read_csv(out)
    assert frame.height == 150
    assert frame.group_by("twin_id").len().sort("twin_id").rows() == [("a", 50), ("b", 50), ("c", 50)]


def test_broken_rows_become_dead_letters_with_their_row_numbers(
    tmp_path: Path,
) -> None:
    src = tmp_path / "broken.csv"
    src.write_text(
        "timestamp,value\n"
        "2024-01-01 00:00:00,1.0\n"
        "2024-01-01 00:01:00,2.0,extra\n"
        '2024-01-01 00:02:00,"3.0\n'
        "garbage,4.0\n"
        "2024-01-01 00:04:00,5.0\n"
    )
    batch, letters = read_readings_csv(src)
    assert batch.value.tolist() == [1.0, 5.0]
    reasons = [letter.reason for letter in letters]
    assert reasons[0] == "row 3: 3 fields where the header has 2"
    assert reasons[1].startswith("row 4: not a CSV row")
    assert reasons[2] == "row 5: timestamp 'garbage' is not a time (ISO 8601, epoch seconds)"
    assert letters[0].raw == b"2024-01-01 00:01:00,2.0,extra"
    out = tmp_path / "out.csv"
    spec = Path(__file__).resolve().parents[2] / "dataflows" / "anomaly.yaml"
    assert main(["replay", str(spec), "--input", str(src), "--output", str(out), "--quiet"]) == 0
    written = [json.loads(line)["reason"] for line in dead_letters_path(out).read_text().splitlines()]
    assert written == reasons
