"""The built-in simulator: deterministic, independent of partitioning, faults with ground truth."""

from __future__ import annotations

import time
from pathlib import Path

import bytewax.operators as op
import numpy as np
import orjson
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from dte_stream.batches import SourceBatch
from dte_stream.codecs.base import DecodeContext
from dte_stream.connectors.simulator.signals import FAULT_KINDS, ChunkSignals, profile_for
from dte_stream.connectors.simulator.source import SimulatorSource
from dte_stream.spec.model import SimulatorSourceSpec

START = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
CHANNELS = ["temperature", "pressure", "flow"]


def _collect(spec: SimulatorSourceSpec) -> pl.DataFrame:
    out: list[SourceBatch] = []
    flow = Dataflow("sim_test")
    op.output("out", op.input("sim", flow, SimulatorSource(spec, CHANNELS)), TestingSink(out))
    run_main(flow)
    frames = [
        pl.DataFrame(
            {
                "twin_id": b.readings.twin_id.tolist(),
                "channel": b.readings.channel.tolist(),
                "time_ns": b.readings.time_ns,
                "value": b.readings.value,
            }
        )
        for b in out
    ]
    return pl.concat(frames).sort("twin_id", "channel", "time_ns")


def _spec(**kw: object) -> SimulatorSourceSpec:
    base: dict[str, object] = {
        "kind": "simulator",
        "twin_type": "pump",
        "twins": 1200,
        "ticks": 5,
        "rate": 0,
        "start": "2026-01-01T00:00:00Z",
        "seed": 7,
    }
    base.update(kw)
    return SimulatorSourceSpec.model_validate(base)


def test_exact_count_and_same_readings_for_same_seed_whatever_the_partitions() -> None:
    a = _collect(_spec(partitions=1))
    b = _collect(_spec(partitions=3))
    assert a.height == 1200 * 5 * 3
    assert a.equals(b)
    c = _collect(_spec(partitions=1, seed=8))
    assert not a["value"].equals(c["value"])


def test_signals_are_realistic_per_channel() -> None:
    frame = _collect(_spec(twins=200, ticks=50, faults_per_twin_hour=0))
    stats = frame.group_by("channel").agg(
        pl.col("value").mean().alias("mean"), pl.col("value").std().alias("sd")
    )
    means = dict(zip(stats["channel"], stats["mean"], strict=True))
    assert 50 < means["temperature"] < 70
    assert 3 < means["pressure"] < 5
    assert 100 < means["flow"] < 140
    # noise: consecutive readings of one sensor differ by about the declared noise, not more
    one = frame.filter((pl.col("twin_id") == "pump-0003") & (pl.col("channel") == "pressure"))[
        "value"
    ].to_numpy()
    assert 0.02 < np.std(np.diff(one)) / np.sqrt(2) < 0.1


def test_faults_are_injected_and_recorded(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    spec = _spec(twins=50, ticks=3600, interval="1s", faults_per_twin_hour=4, ground_truth=str(truth))
    frame = _collect(spec)
    faults = [orjson.loads(line) for line in truth.read_bytes().splitlines()]
    assert 100 < len(faults) < 320  # about 4 per twin-hour, one hour of 50 twins
    assert {f["kind"] for f in faults} == set(FAULT_KINDS)
    spikes = [f for f in faults if f["kind"] == "spike"]
    f = spikes[0]
    series = frame.filter((pl.col("twin_id") == f["twin_id"]) & (pl.col("channel") == f["channel"]))
    at = series.filter(pl.col("time_ns") == f["start_ns"])["value"].item()
    before = series.filter(pl.col("time_ns") == f["start_ns"] - 10**9)["value"].item()
    assert abs(at - before) > 0.5 * abs(f["magnitude"])  # the spike is in the data


def test_stuck_fault_repeats_one_value() -> None:
    profiles = [profile_for(c, {}) for c in CHANNELS]
    sig = ChunkSignals(
        seed=1,
        chunk=0,
        twin_ids=[f"t{i}" for i in range(20)],
        channels=CHANNELS,
        profiles=profiles,
        start_ns=START,
        interval_ns=10**9,
        faults_per_twin_hour=30,
    )
    window_faults = sig.faults_in_window(0)
    stuck = [f for f in window_faults if FAULT_KINDS[f[2]] == "stuck"]
    assert stuck
    tw, ch, _, start, end, _ = stuck[0]
    first = (start - START) // 10**9
    values = [sig.values(t)[1][tw, ch] for t in range(first, first + 5) if START + t * 10**9 < end]
    assert len(set(values)) == 1


def test_simulated_json_messages_are_the_codec_s_bytes() -> None:
    """The fast json path writes exactly what the json codec encodes for each reading."""
    from dte_stream.codecs import get_codec
    from dte_stream.connectors.simulator.publish import SimulationPlan, simulated_messages
    from dte_stream.readings import ReadingBatch

    plan = SimulationPlan(twins=4, count=50, start_ns=1_767_323_045_000_000_000)
    messages = list(simulated_messages(plan))
    assert sum(n for _, _, n in messages) == 50
    codec = get_codec("json")
    for twin, payload, _ in messages:
        readings = codec.decode(payload, DecodeContext("test")).readings
        assert readings.twin_id.tolist() == [twin]
        again = ReadingBatch.from_columns(
            readings.twin_id, readings.channel, readings.time_ns, readings.value
        )
        assert codec.encode(again) == payload
    senml = list(simulated_messages(SimulationPlan(twins=4, count=50, codec="senml", start_ns=plan.start_ns)))
    assert sum(n for _, _, n in senml) == 50


def test_readings_sent_as_fast_as_possible_are_never_stamped_ahead() -> None:
    from dte_stream.connectors.simulator.publish import SimulationPlan, default_start_ns
    from dte_stream.times import NS_PER_S, now_ns

    plan = SimulationPlan(twins=100, count=30_000)  # 100 ticks of 1 s
    start = default_start_ns(plan)
    last_tick = start + 99 * NS_PER_S
    assert last_tick <= now_ns()
    assert default_start_ns(plan, rate=300.0) >= now_ns() - 2 * NS_PER_S  # real time: from now on


def _emitted(part: object) -> tuple[list[int], int]:
    """The event times of the next readings the partition emits, and the wall clock right then."""
    from dte_stream.times import now_ns

    while True:
        batches = part.next_batch()  # type: ignore[attr-defined]
        at = now_ns()
        if batches:
            return [int(t) for b in batches for t in b.readings.time_ns.tolist()], at
        time.sleep(0.05)


def test_a_real_time_simulator_stamps_readings_when_it_emits_them_also_after_a_restart() -> None:
    """Issue 11: the demo's readings were stamped seconds behind, from when the dataflow was built."""
    from dte_stream.times import NS_PER_S

    spec = _spec(twins=3, ticks=None, rate=None, start=None, interval=1.0)
    source = SimulatorSource(spec, ["temperature", "pressure"])
    [name] = source.list_parts()
    part = source.build_part("sim", name, None)
    time.sleep(1.5)  # a slow start (imports, workers): it must not show in the stamps
    for _ in range(2):  # the first tick and the next one, a second later
        stamps, at = _emitted(part)
        assert len(stamps) == 6
        assert len(set(stamps)) == 1
        assert abs(at - stamps[0]) < NS_PER_S, (at - stamps[0]) / NS_PER_S
    state = part.snapshot()
    time.sleep(1.5)  # down for a while, then resumed
    again = source.build_part("sim", name, state)
    stamps, at = _emitted(again)
    assert abs(at - stamps[0]) < NS_PER_S, (at - stamps[0]) / NS_PER_S
    assert again.snapshot()["tick"] == state["tick"] + 1  # the sequence carries on


def test_a_simulator_given_a_start_keeps_it_in_real_time() -> None:
    spec = _spec(twins=3, ticks=None, rate=None, interval=1.0)  # start: 2026-01-01
    source = SimulatorSource(spec, ["temperature"])
    stamps, _ = _emitted(source.build_part("sim", source.list_parts()[0], None))
    assert set(stamps) == {source.plan.start_ns}
