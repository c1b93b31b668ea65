"""Replay speed: shards driven directly (``dte_stream.replay``) against the Bytewax dataflow, same run.

Three workloads through ``dataflows/anomaly.yaml`` (one channel per twin: a level-and-trend
Kalman filter with adaptive noise, a 1 h forecast, the anomaly scorer):

1. *one series*: NAB's ``nyc_taxi.csv`` (10,320 readings) as one twin;
2. *NAB, all 13 series*: every CSV of the NAB folder, replayed together as 13 twins;
3. *1,000 series*: 1,000 synthetic random-walk series of ``--points`` readings each, as 1,000 twins.

Each workload runs two ways, interleaved, ``--rounds`` times:

- *shards*: :func:`dte_stream.replay.replay_frame` (no engine: router + :class:`TwinShard`);
- *dataflow*: the same readings as 2,000-reading batches through :func:`dte_stream.dataflow.build_flow`
  with Bytewax's testing source and sink, ``run_main`` (what ``dte-stream replay`` did before).

Both give the same rows (checked on the first round: estimate and std of every reading to 1e-9;
where the dataflow runs on the first readings only, against a replay of those readings). Reported: wall
readings/s and CPU readings/s (process CPU time) and wall seconds, the median of the rounds;
the machine is shared, so the CPU figures are the ones to compare across runs, the wall
figures within one. The replay is timed up to its output frame (what ``dte-stream replay``
writes); turning that frame into estimate batches for the comparison is not timed.

    python benchmarks/bench_replay.py                 # every workload, 3 rounds
    python benchmarks/bench_replay.py --quick         # 1 round, 1,000 series x 100 points
    python benchmarks/bench_replay.py --no-dataflow   # the replay alone (no Bytewax rounds)

A fourth table gives the cost of one shard snapshot (``TwinShard.snapshot`` + pickle, as Bytewax
stores it at each epoch's end) at 100,000 twins of two channels.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np

from dte_stream.batches import DeadLetter, EstimateBatch, ReadingBatch, SourceBatch
from dte_stream.replay import read_series, replay_frame
from dte_stream.spec import DataflowSpec, load_spec, parse_spec
from dte_stream.twins.routing import Router
from dte_stream.twins.shard import TwinShard

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "dataflows" / "anomaly.yaml"
NAB = Path(os.environ.get("DTE_NAB_DIR", "/work/shared/data/nab"))
T = TypeVar("T")


def _event_spec(spec: DataflowSpec) -> DataflowSpec:
    return spec.model_copy(update={"engine": spec.engine.model_copy(update={"clock": "event", "workers": 1})})


def _dataflow(spec: DataflowSpec, readings: ReadingBatch) -> list[EstimateBatch]:
    from bytewax.testing import TestingSink, TestingSource, run_main

    from dte_stream.dataflow import build_flow

    items = [
        SourceBatch("replay", readings.take(np.arange(lo, min(lo + 2000, len(readings)))), "sensor")
        for lo in range(0, len(readings), 2000)
    ]
    out: list[EstimateBatch] = []
    dead: list[DeadLetter] = []
    flow = build_flow(
        _event_spec(spec),
        inputs={"replay": TestingSource(items)},
        outputs={"replay": TestingSink(out)},
        dead_letter_output=TestingSink(dead),
    )
    run_main(flow, epoch_interval=timedelta(seconds=3600))  # type: ignore[no-untyped-call]
    return out


def _shards(spec: DataflowSpec, readings: ReadingBatch) -> object:
    """The replay's output frame (what ``dte-stream replay`` writes), timed as it is."""
    return replay_frame(spec, readings, "sensor").frame


def _frame_batch(frame: object) -> EstimateBatch:
    import polars as pl

    assert isinstance(frame, pl.DataFrame)
    n = frame.height
    return EstimateBatch(
        "sensor",
        frame["twin_id"].to_numpy().astype(np.str_),
        frame["channel"].to_numpy().astype(np.str_),
        frame["time_ns"].to_numpy(),
        frame["value"].to_numpy(),
        np.full(n, "", dtype=np.str_),
        frame["estimate"].fill_null(np.nan).to_numpy(),
        frame["std"].fill_null(np.nan).to_numpy(),
        frame["innovation"].fill_null(np.nan).to_numpy(),
        frame["nis"].fill_null(np.nan).to_numpy(),
    )


def _keyed(batches: list[EstimateBatch]) -> dict[tuple[str, int], tuple[float, float]]:
    out = {}
    for b in batches:
        keep = np.isfinite(b.value)
        ids, times = b.twin_id[keep].tolist(), b.time_ns[keep].tolist()
        pairs = zip(b.estimate[keep].tolist(), b.std[keep].tolist(), strict=True)
        for t, tm, pair in zip(ids, times, pairs, strict=True):
            out[(t, tm)] = pair
    return out


def _same(a: list[EstimateBatch], b: list[EstimateBatch]) -> bool:
    ka, kb = _keyed(a), _keyed(b)
    if ka.keys() != kb.keys():
        return False
    x = np.array([ka[k] for k in ka])
    y = np.array([kb[k] for k in ka])
    return bool(np.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True))


def _synthetic(series: int, points: int) -> ReadingBatch:
    rng = np.random.default_rng(1)
    t0 = 1_704_067_200 * 10**9
    values = np.cumsum(rng.normal(0, 1, (series, points)), axis=1) + 100.0
    ids = np.repeat(np.array([f"s{i:04d}" for i in range(series)]), points).reshape(series, points)
    times = t0 + np.arange(points)[None, :] * 60 * 10**9 + np.arange(series)[:, None] * 10**6
    order = np.argsort(times.T.reshape(-1), kind="stable")
    return ReadingBatch.from_columns(
        ids.T.reshape(-1)[order].tolist(),
        ["value"] * (series * points),
        times.T.reshape(-1)[order],
        values.T.reshape(-1)[order],
    )


def _timed(fn: Callable[[], T]) -> tuple[float, float, T]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _workload(
    name: str,
    spec: DataflowSpec,
    readings: ReadingBatch,
    rounds: int,
    dataflow_limit: int,
    skip_dataflow: bool = False,
) -> list[str]:
    n = len(readings)
    flow_readings = readings if n <= dataflow_limit else readings.take(np.arange(dataflow_limit))
    rows: dict[str, list[tuple[float, float]]] = {"shards": [], "dataflow": []}
    for r in range(rounds):
        print(f"  {name}: round {r + 1}/{rounds}", file=sys.stderr)
        wall, cpu, shard_frame = _timed(lambda: _shards(spec, readings))
        rows["shards"].append((n / wall, n / cpu))
        if skip_dataflow:
            continue
        wall, cpu, flow_out = _timed(lambda: _dataflow(spec, flow_readings))
        rows["dataflow"].append((len(flow_readings) / wall, len(flow_readings) / cpu))
        if r == 0:  # the dataflow's readings (all, or the first ones) replayed give its rows
            replayed = shard_frame if len(flow_readings) == n else _shards(spec, flow_readings)
            same = _same([_frame_batch(replayed)], flow_out)
            assert same, f"{name}: replay and dataflow outputs differ"
    out = []
    for way, figures in rows.items():
        if not figures:
            continue
        counted = n if way == "shards" else len(flow_readings)
        wall = statistics.median(f[0] for f in figures)
        cpu = statistics.median(f[1] for f in figures)
        out.append(f"| {name} | {way} | {counted:,} | {wall:,.0f} | {cpu:,.0f} | {counted / wall:,.1f} |")
    return out


def _snapshot_cost(twins: int) -> str:
    spec = parse_spec(
        {
            "name": "snap",
            "sources": [{"kind": "simulator", "twin_type": "pump"}],
            "twin_types": [{"name": "pump", "channels": {"temperature": {}, "pressure": {}}}],
            "sinks": [{"kind": "local_store"}],
            "engine": {"shards": 1, "clock": "event"},
        }
    )
    shard = TwinShard(spec, "shard-0000")
    router = Router(spec)
    ids = [f"pump-{i:06d}" for i in range(twins)]
    for k in range(3):
        rb = ReadingBatch.from_columns(
            [i for i in ids for _ in (0, 1)],
            ["temperature", "pressure"] * twins,
            np.full(2 * twins, k * 10**9),
            np.random.default_rng(k).normal(20, 1, 2 * twins),
        )
        shard.on_batch([b for _, b in router.route(rb, "bench", "pump").routed])
    costs = []
    size = 0
    for _ in range(3):
        start = time.process_time()
        data = pickle.dumps(shard.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
        costs.append(time.process_time() - start)
        size = len(data)
    return f"| {twins:,} | {statistics.median(costs) * 1e3:,.0f} | {size / 1e6:,.1f} | {size / twins:,.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--points", type=int, default=300, help="readings per synthetic series")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-dataflow", action="store_true", help="time the replay only (no Bytewax)")
    args = parser.parse_args()
    rounds, points = (1, 100) if args.quick else (args.rounds, args.points)
    spec = load_spec(SPEC)
    one, _ = read_series([NAB / "realKnownCause" / "nyc_taxi.csv"], channel="value")
    nab, _ = read_series([NAB], channel="value")
    many = _synthetic(1000, points)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"Replay, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load} (shared machine: compare CPU figures and ratios)"
    )
    print(f"`{' '.join(['python', *sys.argv])}`; median of {rounds} rounds\n")
    print("| workload | way | readings | readings/s (wall) | readings/s (CPU) | seconds (wall) |")
    print("|---|---|---:|---:|---:|---:|")
    for line in (
        _workload("one series (nyc_taxi)", spec, one, rounds, len(one), args.no_dataflow)
        + _workload("NAB, 13 series", spec, nab, rounds, 20_000, args.no_dataflow)
        + _workload("1,000 series", spec, many, rounds, 60_000, args.no_dataflow)
    ):
        print(line)
    print("\n| twins (2 channels, 1 shard) | snapshot + pickle, CPU ms | bytes (MB) | bytes per twin |")
    print("|---:|---:|---:|---:|")
    print(_snapshot_cost(100_000))


if __name__ == "__main__":
    main()
