"""The bank's per-reading path (Python floats) against its rounds path (numpy): same outputs, same state."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twin_bank_checks import bank_state

from dte_stream.readings import ReadingBatch
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins.bank import PER_READING_BELOW, TwinBank
from dte_stream.twins.routing import TypedBatch

S = 10**9

filters = st.sampled_from(
    [
        {"model": "random_walk", "process_noise": 0.01, "measurement_noise": 0.5},
        {"model": "local_linear_trend", "level_noise": 0.001, "slope_noise": 1e-9, "measurement_noise": 1.0},
        {"model": "thermal", "tau": 600, "setpoint": 20.0, "measurement_noise": 0.2},
        {"model": "damped_oscillator", "period": 120, "damping": 0.3, "measurement_noise": 0.1},
        {"model": "daily_seasonal", "measurement_noise": 0.3},
    ]
)
qualities = st.fixed_dictionaries(
    {
        "spike_sigma": st.sampled_from([0, 3.0]),
        "stuck_after": st.sampled_from([0, 2]),
        "max_clock_skew": st.sampled_from([None, 60]),
        "min": st.sampled_from([None, -50.0]),
        "max": st.sampled_from([None, 50.0]),
    }
)
shared_models = st.sampled_from(
    [
        [],
        [
            {
                "name": "pair",
                "preset": {
                    "model": "local_linear_trend",
                    "level_noise": 0.1,
                    "measurement_noise": [0.5, 2.0],
                },
                "observes": ["c1", "c2"],
            }
        ],
        [
            {
                "name": "room",
                "preset": {"model": "thermal", "tau": 300, "measurement_noise": [0.5]},
                "observes": ["c1"],
                "controls": ["c2"],
            }
        ],
    ]
)


@st.composite
def twin_types(draw: st.DrawFn) -> TwinTypeSpec:
    models = draw(shared_models)
    members = {c for m in models for c in (*m["observes"], *m.get("controls", []))}
    channels: dict[str, dict[str, Any]] = {}
    for name in ("c0", "c1", "c2"):
        channels[name] = {"quality": draw(qualities)}
        if name not in members:
            channels[name]["filter"] = draw(filters)
    anomaly: dict[str, Any] = draw(
        st.sampled_from(
            [
                {"enabled": False},
                {"method": "contextual", "context_bins": 4, "context_after": 0, "quiet": 5, "level": 0.3},
                {"method": "contextual"},
            ]
        )
    )
    return TwinTypeSpec.model_validate(
        {
            "name": "t",
            "channels": channels,
            "models": models,
            "kalman": {
                "gate": draw(st.sampled_from([None, 6.0])),
                "adaptive_noise": draw(st.booleans()),
                "horizons": draw(st.sampled_from([[], [60, 3600]])),
                "lateness": "30m",
                "reset_after": draw(st.sampled_from([1, 3])),
            },
            "anomaly": anomaly,
            "outputs": {"states": draw(st.booleans())},
        }
    )


values = st.one_of(
    st.floats(-60, 60, allow_nan=False),
    st.sampled_from([0.0, 1.0, 1.0, 1000.0, float("nan")]),  # flat runs, spikes, a missing value
)
readings = st.lists(
    st.tuples(
        st.integers(0, 2),  # twin
        st.integers(0, 2),  # channel
        st.integers(0, 3 * 3_600).map(lambda s: s * S // 4),  # regular, duplicate, late, too late
        values,
    ),
    min_size=1,
    max_size=60,
)


def _batch(spec: TwinTypeSpec, items: list[tuple[int, int, int, float]]) -> TypedBatch:
    names = np.array(spec.channel_names())
    channels = [c for _, c, _, _ in items]
    rb = ReadingBatch.from_columns(
        [f"w{t}" for t, *_ in items], names[channels], [t for *_, t, _ in items], [v for *_, v in items]
    )
    return TypedBatch(spec.name, rb, np.asarray(channels, dtype=np.intp))


def _same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Equal to 1e-9: relative, or absolute on the column's scale (a state crossing zero, say a
    seasonal component, carries the rounding of its magnitude, not of its value near zero)."""
    if a.dtype.kind == "f":
        finite = np.abs(a[np.isfinite(a)])
        scale = max(1.0, float(finite.max())) if finite.size else 1.0
        close = np.isclose(a, b, rtol=1e-9, atol=1e-9 * scale, equal_nan=True)
        worst = np.nanmax(np.abs(a - b)[~close]) if not close.all() else 0.0
        assert close.all(), (
            f"{what}: {int((~close).sum())} values differ, up to {worst:.3g} (scale {scale:.3g})"
        )
    else:
        assert np.array_equal(a, b), what


def _state(bank: TwinBank) -> dict[str, np.ndarray]:
    cells = ("last_value", "last_time", "last_estimate", "last_std", "last_flags")
    return bank_state(bank, bank.scorer.capacity if bank.scorer is not None else 0, cells)


@settings(max_examples=120, deadline=None)
@given(twin_types(), st.lists(readings, min_size=1, max_size=3), st.integers(-600, 600))
def test_per_reading_path_equals_the_rounds_path(
    spec: TwinTypeSpec, batches: list[list[tuple[int, int, int, float]]], skew_s: int
) -> None:
    rounds, reading = TwinBank(spec, capacity=2), TwinBank(spec, capacity=2)
    rounds.way, reading.way = "rounds", "reading"
    for items in batches:
        now = max(t for *_, t, _ in items) + skew_s * S  # readings ahead of it are clock-skewed
        a = rounds.update(_batch(spec, items), now)
        b = reading.update(_batch(spec, items), now)
        assert [d.reason for d in a.rejected] == [d.reason for d in b.rejected]
        ea, eb = a.estimates, b.estimates
        for name in ("twin_id", "channel", "time_ns", "value", "estimate", "std", "innovation", "nis"):
            _same(getattr(ea, name), getattr(eb, name), name)
        _same(ea.flags, eb.flags, "flags")
        _same(ea.anomaly_score, eb.anomaly_score, "anomaly_score")
        assert ea.extra.keys() == eb.extra.keys()
        for name in ea.extra:
            _same(ea.extra[name], eb.extra[name], name)
    sa, sb = _state(rounds), _state(reading)
    for name in sa:
        _same(sa[name], sb[name], name)


def test_the_bank_takes_the_per_reading_path_for_few_twins_with_many_readings() -> None:
    spec = TwinTypeSpec.model_validate({"name": "t", "channels": {"c0": {}}})
    many = [(0, 0, k * S, float(k % 7)) for k in range(4 * PER_READING_BELOW)]
    wide = [(t, 0, 0, 1.0) for t in range(3 * PER_READING_BELOW)]  # one round of many twins
    bank = TwinBank(spec)
    bank.update(_batch(spec, many), now_ns=0)
    assert bank.scalar_kernels  # the per-reading kernel ran (and keeps its transitions)
    fresh = TwinBank(spec)
    fresh.update(_batch(spec, wide), now_ns=0)
    assert not fresh.scalar_kernels


@pytest.mark.parametrize("method", ["innovation"])
def test_scorers_without_a_per_reading_form_keep_the_rounds_path(method: str) -> None:
    spec = TwinTypeSpec.model_validate({"name": "t", "channels": {"c0": {}}, "anomaly": {"method": method}})
    bank = TwinBank(spec)
    bank.update(_batch(spec, [(0, 0, k * S, float(k)) for k in range(100)]), now_ns=0)
    assert not bank.scalar_kernels


@st.composite
def long_series(draw: st.DrawFn) -> list[tuple[int, int, int, float]]:
    """One cell, hundreds of readings: the scorer warms up, learns its context and flags; past 200
    readings the likelihood stage judges too, and a burst of denser spikes may raise it."""
    n = draw(st.integers(150, 600))
    step = draw(st.sampled_from([60, 300, 3_600])) * S
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = 20.0 + np.cumsum(rng.normal(0, 1, n))
    values[rng.integers(0, n, 3)] += rng.normal(0, 40, 3)  # a few spikes
    if draw(st.booleans()):  # a burst: a moderate spike every third reading late in the series
        values[n * 2 // 3 : n * 2 // 3 + 30 : 3] += 4.0
    times = np.arange(n) * step + rng.integers(-2, 3, n) * (step // 10)  # jitter, some late
    return [(0, 0, int(t), float(v)) for t, v in zip(times.tolist(), values.tolist(), strict=True)]


@settings(max_examples=40, deadline=None)
@given(twin_types(), long_series())
def test_per_reading_path_equals_the_rounds_path_on_long_series(
    spec: TwinTypeSpec, items: list[tuple[int, int, int, float]]
) -> None:
    rounds, reading = TwinBank(spec), TwinBank(spec)
    rounds.way, reading.way = "rounds", "reading"
    half = len(items) // 2  # two micro-batches: state carried across them
    for part in (items[:half], items[half:]):
        now = max(t for *_, t, _ in part)
        a = rounds.update(_batch(spec, part), now).estimates
        b = reading.update(_batch(spec, part), now).estimates
        for name in ("estimate", "std", "innovation", "nis", "anomaly_score", "flags"):
            _same(getattr(a, name), getattr(b, name), name)
        for name in a.extra:
            _same(a.extra[name], b.extra[name], name)
    sa, sb = _state(rounds), _state(reading)
    for name in sa:
        _same(sa[name], sb[name], name)
