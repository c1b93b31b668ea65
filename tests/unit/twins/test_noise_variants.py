"""Per-channel filters that differ only in noise share one kernel (noise variants).

A bank whose random walks, level-and-trend filters and fixed-setpoint thermal filters are fused
into one kernel per model shape gives the very outputs and state (bit for bit) of a bank with
one kernel per filter setting, as every bank was built before (``build_groups(fuse=False)``),
by rounds and reading by reading; a snapshot of a bank of the old grouping restores into a
fused bank and carries on with the same numbers.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
from twin_bank_checks import output_columns

from dte_stream.readings import ReadingBatch
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins import bank as bank_module
from dte_stream.twins import flags as fl
from dte_stream.twins.bank import TwinBank
from dte_stream.twins.checkpoint import bank_snapshot, restore_bank
from dte_stream.twins.discretise import Discretiser
from dte_stream.twins.filters import build_groups
from dte_stream.twins.kalman import StateSpaceKernel
from dte_stream.twins.presets import damped_oscillator, local_linear_trend, random_walk
from dte_stream.twins.routing import TypedBatch
from dte_stream.twins.statespace import StateSpaceState

S = 10**9

SPEC = TwinTypeSpec.model_validate(
    {
        "name": "mixed",
        "channels": {
            "t": {"filter": {"process_noise": 0.001, "measurement_noise": 0.25}},
            "p": {"filter": {"process_noise": 0.00001, "measurement_noise": 0.0025}},
            "f": {"filter": {"process_noise": 0.05, "measurement_noise": 4.0}},
            "f2": {"filter": {"process_noise": 0.05, "measurement_noise": 4.0}},
            "l1": {"filter": {"model": "local_linear_trend", "level_noise": 0.01, "measurement_noise": 1.0}},
            "l2": {"filter": {"model": "local_linear_trend", "level_noise": 0.2, "slope_noise": 1e-4}},
            "h1": {"filter": {"model": "thermal", "tau": 600, "setpoint": 20.0, "measurement_noise": 0.2}},
            "h2": {"filter": {"model": "thermal", "tau": 600, "setpoint": 20.0, "noise": 0.3}},
            "h3": {"filter": {"model": "thermal", "tau": 60, "setpoint": 20.0}},
        },
        "kalman": {"horizons": [60, 600], "lateness": "10m", "gate": 6.0, "reset_after": 2},
        "anomaly": {"context_bins": 4, "context_after": 0, "quiet": 5},
        "outputs": {"states": True},
    }
)


def _with(spec: TwinTypeSpec, **kalman: Any) -> TwinTypeSpec:
    return TwinTypeSpec.model_validate(
        {**spec.model_dump(), "kalman": {**spec.kalman.model_dump(), **kalman}}
    )


def _unfused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bank_module, "build_groups", functools.partial(build_groups, fuse=False))


def _batches(spec: TwinTypeSpec, seed: int = 3) -> list[TypedBatch]:
    """Two batches of 8 twins, every cell about once a second, shuffled; spikes (gated, reset),
    NaNs, and a second batch that starts before the first ends (late readings)."""
    rng = np.random.default_rng(seed)
    names = np.array(spec.channel_names())
    out = []
    for start, stop in ((0, 60), (50, 120)):
        twin, ch, sec = np.meshgrid(
            np.arange(8), np.arange(names.size), np.arange(start, stop), indexing="ij"
        )
        twin, ch, sec = twin.ravel(), ch.ravel(), sec.ravel()
        time_ns = sec * S + twin * 11_000_000 + ch * 3_000_000 + rng.integers(0, 1_000_000, twin.size)
        value = 20.0 + np.sin(sec / 9.0 + twin) * 3.0 + ch + rng.normal(0.0, 0.4, twin.size)
        value[rng.random(twin.size) < 0.03] += 60.0
        value[rng.random(twin.size) < 0.005] = np.nan
        keep = rng.random(twin.size) < 0.9  # not every cell every second
        shuffle = rng.permutation(np.flatnonzero(keep))
        rb = ReadingBatch.from_columns(
            [f"w{t}" for t in twin[shuffle]], names[ch[shuffle]], time_ns[shuffle], value[shuffle]
        )
        out.append(TypedBatch(spec.name, rb, ch[shuffle].astype(np.intp)))
    return out


def _assert_same(a: dict[str, Any], b: dict[str, Any], where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for key, x in a.items():
        y = b[key]
        if isinstance(x, dict):
            _assert_same(x, y, f"{where}.{key}")
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{where}.{key}"
        else:
            assert x == y, f"{where}.{key}"


def _run(spec: TwinTypeSpec, way: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    bank = TwinBank(spec, capacity=2)
    bank.way = way  # type: ignore[assignment]
    outs = []
    for batch in _batches(spec):
        outs.append(bank.update(batch, int(batch.readings.time_ns.max())).estimates)
    return output_columns(outs), bank_snapshot(bank)


def test_the_spec_fuses_what_differs_only_in_noise() -> None:
    groups = TwinBank(SPEC).groups
    assert [(g.name, g.channels, [f[0] for f in g.filters]) for g in groups] == [
        ("random_walk", [0, 1, 2, 3], ["random_walk", "random_walk_2", "random_walk_3"]),
        ("local_linear_trend", [4, 5], ["local_linear_trend", "local_linear_trend_2"]),
        ("thermal", [6, 7], ["thermal", "thermal_2"]),
        ("thermal_3", [8], ["thermal_3"]),  # another time constant: another transition
    ]
    assert groups[0].variant[:4].tolist() == [0, 1, 2, 2]


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("way", ["rounds", "reading"])
def test_fused_kernels_give_the_numbers_of_one_kernel_per_setting(
    way: str, adaptive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _with(SPEC, adaptive_noise=adaptive)
    fused_out, fused_state = _run(spec, way)
    _unfused(monkeypatch)
    assert len(TwinBank(spec).groups) == 8
    plain_out, plain_state = _run(spec, way)
    _assert_same(fused_out, plain_out)
    _assert_same(fused_state, plain_state)
    flags = fused_out["flags"]
    for flag in (fl.GATED, fl.RESET, fl.LATE):
        assert (flags & flag).any(), flag
    assert np.isfinite(fused_out["forecast_10m"]).mean() > 0.5  # forecasts compared too


def test_a_snapshot_of_the_old_grouping_restores_into_fused_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _batches(SPEC)
    with monkeypatch.context() as patch:
        _unfused(patch)
        old = TwinBank(SPEC, capacity=2)
        assert len(old.groups) == 8
        old.update(first, int(first.readings.time_ns.max()))
        snap = bank_snapshot(old)
        old_next = old.update(second, int(second.readings.time_ns.max()))
        old_after = bank_snapshot(old)
    assert sorted(snap["groups"]) == sorted(f"channel:{c}" for c in SPEC.channel_names())
    fused = restore_bank(SPEC, snap)
    assert len(fused.groups) == 4
    _assert_same(bank_snapshot(fused), snap)
    fused_next = fused.update(second, int(second.readings.time_ns.max()))
    _assert_same(output_columns([fused_next.estimates]), output_columns([old_next.estimates]))
    _assert_same(bank_snapshot(fused), old_after)


def test_a_variant_takes_its_own_noise_in_the_kernel_and_the_discretiser() -> None:
    slow, fast = local_linear_trend(0.01, 1e-6, [1.0]), local_linear_trend(0.5, 1e-3, [9.0])
    fused = StateSpaceKernel(slow, horizons_s=[30.0], variants=[slow, fast])
    gaps = np.array([S, 5 * S, 2 * S])
    f, qd, g = fused.discretise(gaps, np.array([1, 0, 1]))
    for i, model in ((0, fast), (1, slow), (2, fast)):
        f1, qd1, g1 = Discretiser(model)(gaps[i : i + 1])
        assert np.array_equal(qd[i], qd1[0])
        assert np.array_equal(f[i], f1[0])
        assert np.array_equal(g[i], g1[0])
    with pytest.raises(ValueError, match="only in Q and R"):
        StateSpaceKernel(slow, variants=[slow, random_walk(0.1, [1.0])])
    oscillator = damped_oscillator(2.0, 0.1, 0.01, [1.0])
    with pytest.raises(ValueError, match="closed-form"):
        StateSpaceKernel(oscillator, variants=[oscillator])
    with pytest.raises(ValueError, match="without variants"):
        StateSpaceKernel(slow).step_rounds(
            StateSpaceState.allocate(slow, 1), np.array([0]), np.array([0]), np.array([0]),
            np.array([1.0]), None, [(0, 1)], np.array([0]),
        )  # fmt: skip
