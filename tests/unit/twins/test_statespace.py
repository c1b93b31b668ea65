"""The state-space kernel against the per-reading reference, preset behaviour, and validation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.twins.kalman import StateSpaceKernel
from dte_stream.twins.presets import (
    DAY_S,
    daily_seasonal,
    damped_oscillator,
    local_linear_trend,
    random_walk,
    thermal,
)
from dte_stream.twins.statespace import (
    NOISE_SCALE_FLOOR,
    StateSpaceModel,
    StateSpaceState,
    expm_batched,
)
from dte_stream.twins.statespace_reference import ReferenceFilter, expm_taylor

S = 10**9


def rounds_of(twins: np.ndarray, times: np.ndarray) -> list[np.ndarray]:
    """Reading positions in rounds of at most one reading per twin, each twin's readings in time order.

    (The bank has its own vectorised split; the kernel only needs some valid one.)
    """
    order = np.lexsort((times, twins))
    rank = np.zeros(order.shape[0], dtype=np.intp)
    for j in range(1, order.shape[0]):
        same = twins[order[j]] == twins[order[j - 1]]
        rank[j] = rank[j - 1] + 1 if same else 0
    return [order[rank == k] for k in range(int(rank.max(initial=-1)) + 1)]


positive = st.floats(0.01, 10.0)


@st.composite
def models(draw: st.DrawFn) -> StateSpaceModel:
    """Random presets with random parameters, and random stable custom models (n 1..4, m 1..3)."""
    kind = draw(
        st.sampled_from(["rw", "llt", "thermal", "thermal_ctrl", "osc", "season", "custom", "discrete"])
    )
    m = draw(st.integers(1, 3))
    r = [draw(positive) for _ in range(m)]
    p0 = draw(st.floats(1.0, 1000.0))
    if kind == "rw":
        return random_walk(draw(positive), r, prior_variance=p0)
    if kind == "llt":
        return local_linear_trend(draw(positive), draw(st.floats(1e-6, 0.1)), r, prior_variance=p0)
    if kind == "thermal":
        return thermal(draw(st.floats(1.0, 1000.0)), draw(positive), r, setpoint=draw(st.floats(-50, 50)))
    if kind == "thermal_ctrl":
        return thermal(draw(st.floats(1.0, 1000.0)), draw(positive), r, prior_variance=p0)
    if kind == "osc":
        return damped_oscillator(
            draw(st.floats(2.0, 500.0)), draw(st.floats(0.0, 2.0)), draw(positive), r, p0
        )
    if kind == "season":
        return daily_seasonal(
            draw(positive), draw(positive), r, period_s=draw(st.sampled_from([60.0, DAY_S]))
        )
    n = draw(st.integers(1, 4))
    p = draw(st.integers(0, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lq = rng.normal(size=(n, n)) * 0.3
    x0 = rng.normal(size=n)
    c = rng.normal(size=n) * 0.1
    b = rng.normal(size=(n, p)) * 0.1 if p else None
    h = rng.normal(size=(m, n))
    if kind == "custom":
        g = rng.normal(size=(n, n))
        d = rng.normal(size=(n, n))
        a = (g - g.T) * 0.1 - (d @ d.T / n + 0.01 * np.eye(n)) * 0.1
        return StateSpaceModel.build(a, h, lq @ lq.T, r, P0=np.eye(n) * p0, x0=x0, c=c, B=b)
    g = rng.normal(size=(n, n))
    f = g / max(1e-9, float(np.abs(np.linalg.eigvals(g)).max())) * 0.9
    return StateSpaceModel.build(
        f,
        h,
        lq @ lq.T,
        r,
        kind="discrete",
        step_s=draw(st.floats(0.5, 20.0)),
        P0=np.eye(n) * p0,
        x0=x0,
        c=c,
        B=b,
    )


readings = st.lists(
    st.tuples(
        st.integers(0, 5),  # twin
        st.integers(0, 10),  # channel (folded onto the model's m + p channels)
        st.integers(0, 400),  # time in units of 0.25 s: zero gaps, irregular gaps, out of order
        st.floats(-30.0, 30.0, allow_nan=False),
        st.one_of(st.just(1.0), st.floats(1.0, 20.0)),  # r_scale: trust lowered by quality flags
    ),
    min_size=1,
    max_size=40,
)

noise_options = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {
            "adaptive_noise": st.just(True),
            "noise_halflife": st.floats(0.5, 20.0),  # short: the exponential phase starts early
            "warmup": st.integers(1, 6),
        }
    ),
)


def close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=what)


def _check(got: float, want: float, what: str, magnitude: float = 1.0) -> None:
    """Equal to 1e-9, relative or absolute; ``magnitude`` scales the absolute part (the size of
    the values that went in, for quantities that cancel, such as a forecast an hour ahead)."""
    if math.isnan(want):
        assert math.isnan(got), what
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9 * magnitude), what


@settings(max_examples=300, deadline=None)
@given(
    models(),
    st.lists(readings, min_size=1, max_size=4),
    st.floats(0.5, 50.0),
    st.integers(1, 4),
    noise_options,
)
def test_kernel_matches_per_reading_reference(
    model: StateSpaceModel,
    batches: list[list[tuple[int, int, int, float, float]]],
    gate: float,
    reset_after: int,
    noise: dict[str, object],
) -> None:
    options = {"gate": gate, "reset_after": reset_after, "lateness_ns": 20 * S, "horizons_s": [1.0, 3600.0]}
    options.update(noise)
    kernel = StateSpaceKernel(model, **options)  # type: ignore[arg-type]
    ref = ReferenceFilter(model, **options)  # type: ignore[arg-type]
    state = StateSpaceState.allocate(model, 2)
    channels = model.m + model.p
    for items in batches:
        twins = np.array([t for t, _, _, _, _ in items], dtype=np.intp)
        if int(twins.max()) >= state.capacity:
            state = state.grow(model, 6)
        chans = np.array([c % channels for _, c, _, _, _ in items], dtype=np.intp)
        times = np.array([t * S // 4 for _, _, t, _, _ in items], dtype=np.int64)
        values = np.array([v for _, _, _, v, _ in items])
        trust = np.array([r for _, _, _, _, r in items])
        for idx in rounds_of(twins, times):
            out = kernel.step(state, twins[idx], chans[idx], times[idx], values[idx], r_scale=trust[idx])
            for j, i in enumerate(idx.tolist()):
                want = ref.update(
                    f"t{twins[i]}", int(chans[i]), int(times[i]), float(values[i]), r_scale=float(trust[i])
                )
                where = f"reading {i} of {items}"
                np.testing.assert_allclose(
                    out.estimate[j], want.estimate, rtol=1e-9, atol=1e-9, err_msg=where
                )
                close(out.std[j], want.std, where)
                for name in ("predicted", "innovation", "s", "nis", "channel_estimate", "channel_std"):
                    _check(float(getattr(out, name)[j]), getattr(want, name), f"{name} of {where}")
                for flag in ("gated", "reset", "late", "rejected"):
                    assert bool(getattr(out, flag)[j]) == getattr(want, flag), f"{flag} of {where}"
                size = 1.0 + max(abs(v) for _, _, _, v, _ in items)
                for h in range(2):
                    _check(float(out.forecast[j, h]), want.forecast[h], f"forecast of {where}", size)
                    _check(float(out.forecast_std[j, h]), want.forecast_std[h], f"forecast std of {where}")
    assert np.isfinite(state.x).all()
    assert np.isfinite(state.P).all()
    for twin in range(6):  # the learned noise scale itself
        tw = ref.twins.get(f"t{twin}")
        if tw is not None:
            assert state.scale_count[twin] == tw.scale_count
            assert state.scale[twin] == pytest.approx(tw.scale, rel=1e-9)


def test_batched_expm_matches_scipy() -> None:
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 5, 5)) * rng.uniform(0.001, 20.0, size=(50, 1, 1))
    want = np.stack([linalg.expm(x) for x in a])
    np.testing.assert_allclose(expm_batched(a), want, rtol=1e-11, atol=1e-13 * np.abs(want).max())
    np.testing.assert_allclose(expm_taylor(a[3]), want[3], rtol=1e-11, atol=1e-13 * np.abs(want[3]).max())


def _run(
    kernel: StateSpaceKernel, times_s: np.ndarray, values: np.ndarray, channel: int = 0
) -> StateSpaceState:
    state = StateSpaceState.allocate(kernel.model, 1)
    for t, v in zip(times_s.tolist(), values.tolist(), strict=True):
        kernel.step(state, np.array([0]), np.array([channel]), np.array([round(t * S)]), np.array([v]))
    return state


def test_trend_model_recovers_slope() -> None:
    rng = np.random.default_rng(2)
    times = np.cumsum(rng.uniform(0.5, 3.0, size=400))  # irregular sampling
    values = 10.0 + 0.25 * times + rng.normal(0, 0.3, size=times.shape)
    state = _run(StateSpaceKernel(local_linear_trend(1e-4, 1e-8, [0.09])), times, values)
    assert state.x[0, 1] == pytest.approx(0.25, abs=0.01)


def test_thermal_model_converges_to_set_point_given_as_control_input() -> None:
    model = thermal(tau_s=300.0, noise=1e-4, measurement_noise=[0.04])
    kernel = StateSpaceKernel(model)
    state = StateSpaceState.allocate(model, 1)
    one = np.array([0])
    kernel.step(state, one, np.array([0]), np.array([0]), np.array([15.0]))  # first reading: 15 °C
    kernel.step(state, one, np.array([1]), np.array([0]), np.array([21.0]))  # set point 21 °C
    # No further readings: the prediction alone relaxes to the set point.
    out = kernel.step(state, one, np.array([1]), np.array([3600 * S]), np.array([21.0]))
    assert out.estimate[0, 0] == pytest.approx(21.0, abs=1e-3)
    # With a fixed set point and noisy readings that follow the physics, too.
    rng = np.random.default_rng(3)
    times = np.arange(0.0, 3600.0, 10.0)
    truth = 21.0 + (15.0 - 21.0) * np.exp(-times / 300.0)
    fixed = StateSpaceKernel(thermal(300.0, 1e-4, [0.04], setpoint=21.0))
    state = _run(fixed, times, truth + rng.normal(0, 0.2, size=times.shape))
    assert state.x[0, 0] == pytest.approx(21.0, abs=0.1)


def test_seasonal_model_tracks_a_daily_sine() -> None:
    rng = np.random.default_rng(4)
    times = np.arange(0.0, 3 * DAY_S, 600.0)
    truth = 20.0 + 5.0 * np.sin(2 * np.pi * times / DAY_S)
    kernel = StateSpaceKernel(daily_seasonal(1e-6, 1e-6, [0.25]), horizons_s=[6 * 3600.0])
    state = StateSpaceState.allocate(kernel.model, 1)
    errors = []
    for t, v in zip(times.tolist(), (truth + rng.normal(0, 0.5, size=times.shape)).tolist(), strict=True):
        out = kernel.step(state, np.array([0]), np.array([0]), np.array([round(t * S)]), np.array([v]))
        if t > DAY_S:  # after one day the seasonal pair has locked on: check the 6 h forecast too
            ahead = 20.0 + 5.0 * np.sin(2 * np.pi * (t + 6 * 3600.0) / DAY_S)
            errors.append(
                (out.estimate[0, 0] + out.estimate[0, 1] - (truth[int(t // 600)]), out.forecast[0, 0] - ahead)
            )
    err = np.abs(np.array(errors))
    assert err[:, 0].mean() < 0.3
    assert err[:, 1].mean() < 0.5


def test_damped_oscillator_predicts_its_motion() -> None:
    period, zeta = 20.0, 0.05
    model = damped_oscillator(period, zeta, 1e-6, [0.0001])
    w = 2 * np.pi / period
    wd = w * math.sqrt(1 - zeta**2)
    times = np.arange(0.0, 60.0, 0.5)
    pos = np.exp(-zeta * w * times) * np.cos(wd * times)
    kernel = StateSpaceKernel(model, horizons_s=[5.0])
    state = StateSpaceState.allocate(model, 1)
    for t, v in zip(times.tolist(), pos.tolist(), strict=True):
        out = kernel.step(state, np.array([0]), np.array([0]), np.array([round(t * S)]), np.array([v]))
    t_end = times[-1] + 5.0
    assert out.forecast[0, 0] == pytest.approx(np.exp(-zeta * w * t_end) * np.cos(wd * t_end), abs=0.01)


def test_a_spike_is_gated_and_a_level_shift_is_followed() -> None:
    kernel = StateSpaceKernel(random_walk(1e-4, [0.01]), reset_after=3)
    state = StateSpaceState.allocate(kernel.model, 1)
    rows = np.array([0])

    def feed(t: int, v: float) -> tuple[float, bool, bool]:
        out = kernel.step(state, rows, np.array([0]), np.array([t * S]), np.array([v]))
        return float(out.estimate[0, 0]), bool(out.gated[0]), bool(out.reset[0])

    for t in range(50):
        feed(t, 10.0)
    estimate, gated, _ = feed(50, 100.0)  # one spike: not applied, estimate stays
    assert gated
    assert estimate == pytest.approx(10.0, abs=1e-3)
    assert feed(51, 10.0)[0] == pytest.approx(10.0, abs=1e-3)
    results = [feed(52 + i, 30.0) for i in range(6)]  # a genuine shift to 30
    assert [g for _, g, _ in results[:2]] == [True, True]
    assert results[2][2]  # third consecutive rejection: reset, applied
    assert results[-1][0] == pytest.approx(30.0, abs=0.1)


def test_late_readings_within_bound_apply_and_older_are_rejected() -> None:
    kernel = StateSpaceKernel(random_walk(0.01, [1.0]), lateness_ns=10 * S)
    state = StateSpaceState.allocate(kernel.model, 1)
    rows, ch = np.array([0]), np.array([0])
    kernel.step(state, rows, ch, np.array([100 * S]), np.array([5.0]))
    late = kernel.step(state, rows, ch, np.array([95 * S]), np.array([6.0]))
    assert late.late[0]
    assert not late.rejected[0]
    assert state.last_ns[0] == 100 * S
    before = state.x.copy()
    old = kernel.step(state, rows, ch, np.array([50 * S]), np.array([60.0]))
    assert old.rejected[0]
    assert math.isnan(old.innovation[0])
    np.testing.assert_array_equal(state.x, before)


def test_several_channels_observe_one_state_and_missing_ones_are_skipped() -> None:
    kernel = StateSpaceKernel(local_linear_trend(1e-4, 1e-8, [0.01, 1.0]))
    state = StateSpaceState.allocate(kernel.model, 3)
    rows = np.array([0, 1, 2])
    for t in range(20):  # twin 0 sees both channels, twin 1 only channel 0, twin 2 only channel 1
        kernel.step(state, rows, np.array([0, 0, 1]), np.full(3, t * S), np.full(3, 2.0 * t))
        kernel.step(state, rows[:1], np.array([1]), np.array([t * S]), np.array([2.0 * t]))
    np.testing.assert_allclose(state.x[:, 0], 38.0, atol=0.05)
    assert state.P[0, 0, 0] < state.P[1, 0, 0] < state.P[2, 0, 0]


def test_state_grows_and_copies_rows() -> None:
    model = local_linear_trend(1e-4, 1e-8, [0.01])
    state = StateSpaceState.allocate(model, 2)
    StateSpaceKernel(model).step(state, np.array([1]), np.array([0]), np.array([0]), np.array([3.0]))
    bigger = state.grow(model, 5)
    assert bigger.capacity == 5
    np.testing.assert_array_equal(bigger.x[:2], state.x)
    assert bigger.initialised.tolist() == [False, True, False, False, False]
    bigger.reset_rows(model, np.array([1]))
    assert not bigger.initialised[1]
    assert state.rows(np.array([1])).x[0, 0] == pytest.approx(3.0, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"A": [[0.0, 1.0]]}, "matrix A"),
        ({"A": [[math.nan]]}, "matrix A has non-finite"),
        ({"H": [[1.0, 0.0]]}, "matrix H"),
        ({"Q": [[-1.0]]}, "matrix Q is not positive semidefinite"),
        (
            {"Q": [[1.0, 2.0], [0.0, 1.0]], "A": np.zeros((2, 2)), "H": [[1.0, 0.0]], "P0": np.eye(2)},
            "matrix Q is not symmetric",
        ),
        ({"R": [0.0]}, "matrix R"),
        ({"R": [[1.0, 0.5], [0.5, 1.0]], "H": [[1.0], [1.0]]}, "matrix R must be diagonal"),
        ({"P0": [[0.0]]}, "matrix P0 is not positive definite"),
        ({"B": [[1.0], [2.0]]}, "matrix B"),
        ({"Q": [[math.inf]]}, "matrix Q has non-finite"),
    ],
)
def test_bad_matrices_are_named(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"A": [[0.0]], "H": [[1.0]], "Q": [[1.0]], "R": [1.0], "P0": [[1.0]]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        StateSpaceModel.build(**args)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(
    models(),
    readings,
    st.floats(1e-3, 1e3),
    st.integers(1, 6),
    st.floats(0.5, 50.0),
)
def test_adaptive_noise_makes_the_filter_scale_free(
    model: StateSpaceModel,
    items: list[tuple[int, int, int, float, float]],
    factor: float,
    warmup: int,
    gate: float,
) -> None:
    """Values, x0, c and control inputs times ``factor``: estimates times ``factor``, NIS and flags equal.

    Above the noise-scale floor: a twin whose learned scale was held at ``NOISE_SCALE_FLOOR`` in
    either run (a series that never changed) is left out from then on, since the floor is an
    absolute fraction of the model's nominal noise and is the same in both units.
    """
    scaled = dataclasses.replace(model, x0=model.x0 * factor, c=model.c * factor)
    options = {"adaptive_noise": True, "noise_halflife": 5.0, "warmup": warmup, "gate": gate}
    options |= {"lateness_ns": 20 * S, "horizons_s": [60.0]}
    plain = StateSpaceKernel(model, **options)  # type: ignore[arg-type]
    other = StateSpaceKernel(scaled, **options)  # type: ignore[arg-type]
    state, state_c = StateSpaceState.allocate(model, 6), StateSpaceState.allocate(scaled, 6)
    twins = np.array([t for t, _, _, _, _ in items], dtype=np.intp)
    chans = np.array([c % (model.m + model.p) for _, c, _, _, _ in items], dtype=np.intp)
    times = np.array([t * S // 4 for _, _, t, _, _ in items], dtype=np.int64)
    values = np.array([v for _, _, _, v, _ in items])
    values[np.abs(values) < 1e-100] = 0.0  # innovation^2 would be subnormal: no relative precision left
    trust = np.array([r for _, _, _, _, r in items])
    floored = np.zeros(6, dtype=bool)
    for idx in rounds_of(twins, times):
        args = (twins[idx], chans[idx], times[idx])
        a = plain.step(state, *args, values[idx], r_scale=trust[idx])
        b = other.step(state_c, *args, values[idx] * factor, r_scale=trust[idx])
        floored |= (state.scale == NOISE_SCALE_FLOOR) | (state_c.scale == NOISE_SCALE_FLOOR)
        ok = ~floored[twins[idx]]
        if not ok.any():
            continue
        atol = 1e-6 * factor * (1.0 + np.abs(a.estimate[ok]).max())
        np.testing.assert_allclose(b.estimate[ok], a.estimate[ok] * factor, rtol=1e-6, atol=atol)
        np.testing.assert_allclose(
            b.channel_estimate[ok], a.channel_estimate[ok] * factor, rtol=1e-6, atol=atol
        )
        np.testing.assert_allclose(b.nis[ok], a.nis[ok], rtol=1e-6, atol=1e-9)
        for flag in ("gated", "reset", "late", "rejected"):
            np.testing.assert_array_equal(getattr(b, flag)[ok], getattr(a, flag)[ok], err_msg=flag)
        learned = ok & (state.scale_count[twins[idx]] > 0)  # before: the model's own unit scale
        for name in ("std", "channel_std", "forecast_std"):
            got, want = getattr(b, name)[learned], getattr(a, name)[learned] * factor
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * factor, err_msg=name)
    np.testing.assert_array_equal(state_c.scale_count[~floored], state.scale_count[~floored])
    # sigma in value units; absolute tolerance: a tiny innovation is a difference of values (cancellation)
    sigma = np.sqrt(state.scale) * np.where(state.scale_count > 0, factor, 1.0)
    np.testing.assert_allclose(
        np.sqrt(state_c.scale)[~floored], sigma[~floored], rtol=1e-6, atol=1e-9 * factor
    )


def test_adaptive_noise_learns_the_noise_level_and_gates_only_after_warmup() -> None:
    rng = np.random.default_rng(5)
    model = random_walk(1e-6, [1.0])  # the model says unit noise; the sensor has std 5
    kernel = StateSpaceKernel(model, adaptive_noise=True, warmup=10)
    state = StateSpaceState.allocate(model, 1)
    values = 20.0 + rng.normal(0.0, 5.0, size=2000)
    values[5] = 60.0  # during warm-up: applied
    values[1500] = 60.0  # afterwards: gated (8 sigma)
    nis, gated = [], []
    for t, v in enumerate(values.tolist()):
        out = kernel.step(state, np.array([0]), np.array([0]), np.array([t * S]), np.array([v]))
        nis.append(float(out.nis[0]))
        gated.append(bool(out.gated[0]))
    assert not gated[5]
    assert gated[1500]
    assert sum(gated) <= 3
    assert state.scale[0] == pytest.approx(25.0, rel=0.3)
    assert np.nanmean(nis[500:]) == pytest.approx(1.0, abs=0.2)
    assert float(out.channel_std[0]) == pytest.approx(math.sqrt(state.scale[0] * state.P[0, 0, 0]), rel=1e-12)
    # The same series without adaptation: almost every reading is beyond the unit-noise gate.
    fixed = StateSpaceKernel(model)
    state = StateSpaceState.allocate(model, 1)
    outs = [
        fixed.step(state, np.array([0]), np.array([0]), np.array([t * S]), np.array([v]))
        for t, v in enumerate(values[:200].tolist())
    ]
    assert np.nanmean([float(o.nis[0]) for o in outs]) > 5.0


def test_r_scale_lowers_the_trust_in_a_reading() -> None:
    model = random_walk(0.01, [1.0], prior_variance=1.0)
    kernel = StateSpaceKernel(model, gate=math.inf)  # the jump to 10 would be gated (NIS 22)
    state = StateSpaceState.allocate(model, 2)
    rows, ch, t0 = np.array([0, 1]), np.array([0, 0]), np.zeros(2, dtype=np.int64)
    kernel.step(state, rows, ch, t0, np.array([0.0, 0.0]))
    out = kernel.step(state, rows, ch, t0 + S, np.array([10.0, 10.0]), r_scale=np.array([1.0, 4.0]))
    assert 0.0 < out.estimate[1, 0] < out.estimate[0, 0] < 10.0
    assert out.s[1] - out.s[0] == pytest.approx(3.0)  # R = 1 became 4
    # After the first reading P = 1 * 1 / (1 + 1); predicted 1 s on: 0.51. Gain 0.51 / (0.51 + R r_scale).
    assert out.estimate[0, 0] == pytest.approx(10.0 * 0.51 / 1.51, rel=1e-12)
    assert out.estimate[1, 0] == pytest.approx(10.0 * 0.51 / 4.51, rel=1e-12)
    for bad in (np.array([1.0, 0.5]), np.array([1.0, np.nan]), np.array([1.0, np.inf]), np.ones(3)):
        with pytest.raises(ValueError, match="r_scale"):
            kernel.step(state, rows, ch, t0 + 2 * S, np.array([1.0, 1.0]), r_scale=bad)


def test_channel_estimate_and_std_are_nan_for_control_and_rejected_readings() -> None:
    model = thermal(tau_s=300.0, noise=1e-4, measurement_noise=[0.04, 0.09])
    kernel = StateSpaceKernel(model, lateness_ns=10 * S)
    state = StateSpaceState.allocate(model, 3)
    rows = np.array([0, 1, 2])
    out = kernel.step(state, rows, np.array([0, 1, 0]), np.full(3, 100 * S), np.array([15.0, 16.0, 17.0]))
    np.testing.assert_allclose(out.channel_estimate, out.estimate[:, 0])
    np.testing.assert_allclose(out.channel_std, out.std[:, 0])
    # twin 0: a control reading (set point); twin 1: rejected (90 s old); twin 2: an ordinary reading
    out = kernel.step(
        state, rows, np.array([2, 0, 1]), np.array([100, 10, 101]) * S, np.array([21.0, 0, 17.0])
    )
    assert np.isnan(out.channel_estimate[:2]).all()  # twin 0: a control reading; twin 1: rejected
    assert np.isnan(out.channel_std[:2]).all()
    assert out.rejected.tolist() == [False, True, False]
    assert out.channel_estimate[2] == pytest.approx(17.0, abs=0.1)  # relaxing towards set point 0
    assert 0.0 < out.channel_std[2] < 0.2


#: A custom model with A @ A == 0 (closed-form discretisation), a constant term and an input.
NILPOTENT = StateSpaceModel.build(
    [[0.0, 2.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]],
    np.diag([0.1, 0.2, 0.3]) + 0.01, [1.0], P0=np.eye(3), c=[0.1, 0.2, 0.3], B=[[1.0], [0.0], [0.5]],
)  # fmt: skip


@pytest.mark.parametrize(
    "model",
    [
        random_walk(0.3, [1.0]),
        local_linear_trend(0.3, 1e-3, [1.0]),
        thermal(50.0, 0.2, [1.0], setpoint=20.0),
        thermal(50.0, 0.2, [1.0]),
        NILPOTENT,
    ],
)
def test_closed_form_discretisation_equals_van_loan(model: StateSpaceModel) -> None:
    disc = StateSpaceKernel(model).discretise
    assert disc.closed_form
    gaps = np.array([1, 10**6, S, 37 * S // 10, 3600 * S, 86_400 * S], dtype=np.int64)
    f, qd, g = disc(gaps)
    ref = ReferenceFilter(model)
    for i, gap in enumerate(gaps.tolist()):
        want = ref.transition(gap)
        for got, exact, name in zip((f[i], qd[i], g[i]), want, "FQG", strict=True):
            np.testing.assert_allclose(got, exact, rtol=1e-10, atol=1e-14 * np.abs(exact).max(), err_msg=name)
    if model.n == 1:
        fs, qs, gs = disc.scalar(gaps)
        np.testing.assert_allclose(fs, f[:, 0, 0], rtol=1e-15)
        np.testing.assert_allclose(qs, qd[:, 0, 0], rtol=1e-15)
        np.testing.assert_allclose(gs, g[:, 0, :], rtol=1e-15)
    assert not StateSpaceKernel(damped_oscillator(10.0, 0.1, 0.01, [1.0])).discretise.closed_form


def test_take_compacts_rows_in_order_with_the_noise_scale() -> None:
    model = local_linear_trend(1e-4, 1e-8, [0.01])
    kernel = StateSpaceKernel(model, adaptive_noise=True)
    state = StateSpaceState.allocate(model, 4)
    rows = np.arange(4)
    for t in range(5):
        kernel.step(state, rows, np.zeros(4, dtype=np.intp), np.full(4, t * S), rows * 10.0 + t * (1 + rows))
    kept = state.take(np.array([3, 1]))
    assert kept.capacity == 2
    for name, value in kept.arrays().items():
        np.testing.assert_array_equal(value, state.arrays()[name][[3, 1]], err_msg=name)
    assert kept.scale_count.tolist() == [4, 4]
    kept.x[0] = 0.0  # a copy, not a view
    assert state.x[3, 0] != 0.0
    state.reset_rows(model, np.array([1]))
    assert (state.scale[1], state.scale_count[1], state.initialised[1]) == (1.0, 0, False)
    # A state built without the scale fields (an older snapshot) starts them at 1.0 and 0.
    old = StateSpaceState(kept.x, kept.P, kept.last_ns, kept.initialised, kept.u, kept.gated_run)
    assert (old.scale.tolist(), old.scale_count.tolist()) == ([1.0, 1.0], [0, 0])


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2),
    st.sampled_from(["continuous", "discrete"]),
    st.floats(0.5, 20.0),
    noise_options,
)
def test_the_two_state_algebra_equals_the_matrix_algebra(
    seed: int, p: int, kind: str, gate: float, noise: dict[str, object]
) -> None:
    """``n == 2`` written out entry by entry (``PairAlgebra``) gives the batched products' numbers.

    Rounds of many twins with controls, zero gaps, late and rejected readings, gated runs and
    resets; every output and the state after every round, to 1e-6 relative. (The random models
    here include near-singular covariances after resets and spikes 25x the noise: there the
    Joseph-form update cancels digits, and one example of hundreds differed by 1.8e-7 in a
    std, both forms being rounding-limited. The per-reading reference test above holds the
    kernel, with this algebra, to 1e-9 on the presets and random models.)
    """
    from dte_stream.twins.kalman_linalg import MatrixAlgebra, PairAlgebra, algebra_for

    rng = np.random.default_rng(seed)
    m = 2
    a = rng.normal(size=(2, 2)) * 0.2
    if kind == "continuous":
        a = a - np.eye(2) * 0.3
    else:
        a = a / max(1e-9, float(np.abs(np.linalg.eigvals(a)).max())) * 0.9
    lq = rng.normal(size=(2, 2)) * 0.3
    model = StateSpaceModel.build(
        a,
        rng.normal(size=(m, 2)),
        lq @ lq.T,
        [0.5, 2.0],
        kind=kind,  # type: ignore[arg-type]
        step_s=1.0,
        P0=np.eye(2) * 10.0,
        x0=rng.normal(size=2),
        c=rng.normal(size=2) * 0.1,
        B=rng.normal(size=(2, p)) * 0.1 if p else None,
    )
    assert algebra_for(model.n) is PairAlgebra
    options = {"gate": gate, "reset_after": 2, "lateness_ns": 20 * S, "horizons_s": [1.0, 600.0]}
    options.update(noise)
    kernels = []
    for algebra in (PairAlgebra, MatrixAlgebra):
        kernel = StateSpaceKernel(model, **options)  # type: ignore[arg-type]
        kernel._algebra = algebra
        kernels.append((kernel, StateSpaceState.allocate(model, 50)))
    clock = np.zeros(50, dtype=np.int64)
    for _ in range(30):
        rows = rng.choice(50, size=int(rng.integers(1, 50)), replace=False)
        k = rows.shape[0]
        step = rng.choice([0, 1, 3, -5, -40], size=k, p=[0.2, 0.5, 0.2, 0.05, 0.05]) * S
        times = clock[rows] + step
        clock[rows] = np.maximum(clock[rows], times)
        channels = rng.integers(0, m + p, size=k)
        values = rng.normal(size=k) * np.where(rng.random(k) < 0.1, 50.0, 2.0)  # some spikes
        trust = np.where(rng.random(k) < 0.2, 4.0, 1.0)
        pair, matrix = (
            kern.step(state, rows, channels, times, values, r_scale=trust) for kern, state in kernels
        )
        for field in dataclasses.fields(pair):
            got, want = getattr(pair, field.name), getattr(matrix, field.name)
            if got.dtype == bool:
                assert np.array_equal(got, want), field.name
            else:
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=field.name)
        (_, s_pair), (_, s_matrix) = kernels
        np.testing.assert_allclose(s_pair.x, s_matrix.x, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(s_pair.P, s_matrix.P, rtol=1e-6, atol=1e-9)
