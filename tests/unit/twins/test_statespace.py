"""The state-space kernel against the per-reading reference, preset behaviour, and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.twins.presets import (
    DAY_S,
    daily_seasonal,
    damped_oscillator,
    local_linear_trend,
    random_walk,
    thermal,
)
from dte_stream.twins.statespace import (
    StateSpaceKernel,
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
    ),
    min_size=1,
    max_size=40,
)


def close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=what)


def _check(got: float, want: float, what: str) -> None:
    if math.isnan(want):
        assert math.isnan(got), what
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9), what


@settings(max_examples=300, deadline=None)
@given(models(), st.lists(readings, min_size=1, max_size=4), st.floats(0.5, 50.0), st.integers(1, 4))
def test_kernel_matches_per_reading_reference(
    model: StateSpaceModel,
    batches: list[list[tuple[int, int, int, float]]],
    gate: float,
    reset_after: int,
) -> None:
    options = {"gate": gate, "reset_after": reset_after, "lateness_ns": 20 * S, "horizons_s": [1.0, 3600.0]}
    kernel = StateSpaceKernel(model, **options)  # type: ignore[arg-type]
    ref = ReferenceFilter(model, **options)  # type: ignore[arg-type]
    state = StateSpaceState.allocate(model, 2)
    channels = model.m + model.p
    for items in batches:
        twins = np.array([t for t, _, _, _ in items], dtype=np.intp)
        if int(twins.max()) >= state.capacity:
            state = state.grow(model, 6)
        chans = np.array([c % channels for _, c, _, _ in items], dtype=np.intp)
        times = np.array([t * S // 4 for _, _, t, _ in items], dtype=np.int64)
        values = np.array([v for _, _, _, v in items])
        for idx in rounds_of(twins, times):
            out = kernel.step(state, twins[idx], chans[idx], times[idx], values[idx])
            for j, i in enumerate(idx.tolist()):
                want = ref.update(f"t{twins[i]}", int(chans[i]), int(times[i]), float(values[i]))
                where = f"reading {i} of {items}"
                np.testing.assert_allclose(
                    out.estimate[j], want.estimate, rtol=1e-9, atol=1e-9, err_msg=where
                )
                close(out.std[j], want.std, where)
                for name in ("predicted", "innovation", "s", "nis"):
                    _check(float(getattr(out, name)[j]), getattr(want, name), f"{name} of {where}")
                for flag in ("gated", "reset", "late", "rejected"):
                    assert bool(getattr(out, flag)[j]) == getattr(want, flag), f"{flag} of {where}"
                for h in range(2):
                    _check(float(out.forecast[j, h]), want.forecast[h], f"forecast of {where}")
                    _check(float(out.forecast_std[j, h]), want.forecast_std[h], f"forecast std of {where}")
    assert np.isfinite(state.x).all()
    assert np.isfinite(state.P).all()


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
