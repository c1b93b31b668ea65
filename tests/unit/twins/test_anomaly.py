"""The anomaly scorer: scale-freedom, range, spikes against noise, new normals, state handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.twins.anomaly import ANOMALY_LEVEL, AnomalyScorer, gaussian_log_sf
from dte_stream.twins.kalman import StateSpaceKernel
from dte_stream.twins.presets import random_walk
from dte_stream.twins.statespace import StateSpaceState

S = 10**9
ONE = np.zeros(1, dtype=np.intp)


def replay(values: np.ndarray, scorer: AnomalyScorer | None = None, step_s: int = 60) -> np.ndarray:
    """One twin through the random-walk filter (no gating) and the scorer, one reading per round."""
    model = random_walk(1e-3, [1.0])
    kernel = StateSpaceKernel(model, gate=math.inf)
    state = StateSpaceState.allocate(model, 1)
    scorer = scorer or AnomalyScorer(channels=1, capacity=1)
    out = np.zeros(values.shape[0])
    for i in range(values.shape[0]):
        t = np.array([i * step_s * S])
        v = values[i : i + 1]
        res = kernel.step(state, ONE, ONE, t, v)
        out[i] = scorer.score(ONE, ONE, t, v, res.innovation, res.s)[0]
    return out


def noisy_series(n: int = 1500, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 20.0 + np.cumsum(rng.normal(0, 0.05, n)) + rng.normal(0, 1.0, n)


def test_scale_free_through_the_filter() -> None:
    values = noisy_series()
    values[700] += 15.0
    base = replay(values)
    scaled = replay(values * 1000.0)
    np.testing.assert_allclose(scaled, base, rtol=1e-9, atol=1e-12)
    assert base.max() > 0.9  # the comparison is not of all-zero scores


@pytest.mark.parametrize("use_variance", [False, True])
def test_scale_free_whether_or_not_s_follows_the_scale(use_variance: bool) -> None:
    rng = np.random.default_rng(2)
    innov = rng.standard_t(4, size=(600, 1))
    s = rng.uniform(0.5, 2.0, size=(600, 1))
    runs = []
    for factor, s_factor in ((1.0, 1.0), (1e3, 1.0), (1e3, 1e6), (1e-4, 1e-8)):
        scorer = AnomalyScorer(channels=1, capacity=1, use_variance=use_variance)
        runs.append(
            np.array(
                [
                    scorer.score(ONE, ONE, ONE, ONE * 0.0, innov[i] * factor, s[i] * s_factor)[0]
                    for i in range(600)
                ]
            )
        )
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], rtol=1e-9, atol=1e-12)


def test_scores_in_unit_range_even_for_extremes() -> None:
    scorer = AnomalyScorer(channels=2, capacity=3)
    rng = np.random.default_rng(3)
    rows = np.array([0, 1, 2, 0, 1, 2])
    ch = np.array([0, 0, 0, 1, 1, 1])
    for _ in range(100):
        innov = rng.standard_cauchy(6) * rng.choice([1e-12, 1.0, 1e12], 6)
        innov[rng.integers(0, 6)] = rng.choice([0.0, np.inf, -np.inf, np.nan])
        out = scorer.score(rows, ch, rows.astype(np.int64), innov, innov, np.ones(6))
        assert out.shape == (6,)
        assert np.isfinite(out).all()
        assert ((out >= 0) & (out <= 1)).all()


def test_spike_scores_near_one_while_noise_scores_low() -> None:
    values = noisy_series()
    values[1000] += 12.0  # twelve noise standard deviations
    scores = replay(values)
    assert scores[1000] > 0.95
    noise = np.delete(scores[100:], np.arange(895, 910))
    assert np.quantile(noise, 0.99) < 0.35
    assert (noise >= ANOMALY_LEVEL).mean() < 0.002


def test_persistent_level_shift_becomes_the_new_normal() -> None:
    values = noisy_series(2000)
    values[1000:] += 25.0
    scores = replay(values)
    assert scores[1000] >= ANOMALY_LEVEL  # the shift is flagged at once
    after = scores[1030:]
    assert (after >= ANOMALY_LEVEL).sum() <= 2
    assert np.median(after) < 0.1


def test_noise_level_shift_becomes_the_new_normal() -> None:
    """Innovations ten times noisier from reading 600 on: flagged, then learned within 400 readings."""
    rng = np.random.default_rng(4)
    innov = rng.normal(size=2000)
    innov[600:] *= 10.0
    scorer = AnomalyScorer(channels=1, capacity=1)
    scores = np.array([scorer.score(ONE, ONE, ONE, ONE * 0.0, innov[i : i + 1], np.ones(1))[0]
                       for i in range(2000)])  # fmt: skip
    assert scores[600:620].max() >= ANOMALY_LEVEL
    assert (scores[1000:] >= ANOMALY_LEVEL).mean() < 0.005


def test_nan_innovation_scores_zero_and_is_not_learned() -> None:
    scorer = AnomalyScorer(channels=1, capacity=2)
    rows = np.array([0, 1])
    ch = np.zeros(2, dtype=np.intp)
    rng = np.random.default_rng(5)
    for _ in range(50):
        innov = rng.normal(size=2)
        out = scorer.score(rows, ch, rows.astype(np.int64), innov, np.array([np.nan, innov[1]]), np.ones(2))
        assert out[0] == 0.0
    assert scorer.count[0, 0] == 0
    assert scorer.count[1, 0] == 50
    assert scorer.spread[0, 0] == 0.0
    assert scorer.spread[1, 0] > 0


def test_first_readings_score_zero_during_warmup() -> None:
    scorer = AnomalyScorer(channels=1, capacity=1, warmup=10)
    out = [
        scorer.score(ONE, ONE, ONE, ONE * 0.0, np.array([1e6 * (-1) ** i]), np.ones(1))[0] for i in range(10)
    ]
    assert out == [0.0] * 10


def _feed(scorer: AnomalyScorer, rows: np.ndarray, ch: np.ndarray, innov: np.ndarray) -> np.ndarray:
    return scorer.score(
        rows, ch, np.zeros(rows.shape[0], dtype=np.int64), innov, innov, np.ones(rows.shape[0])
    )


def test_snapshot_restore_round_trip_and_grow_take() -> None:
    rng = np.random.default_rng(6)
    scorer = AnomalyScorer(channels=2, capacity=4)
    rows = np.array([0, 1, 2, 3, 0, 1])
    ch = np.array([0, 0, 0, 0, 1, 1])
    for _ in range(80):
        _feed(scorer, rows, ch, rng.normal(size=6))
    snap = scorer.snapshot(4)
    copy = AnomalyScorer(channels=2, capacity=1)
    copy.restore(snap)
    assert copy.capacity >= 4
    nxt = rng.normal(size=6) * 5
    np.testing.assert_array_equal(_feed(copy, rows, ch, nxt), _feed(scorer, rows, ch, nxt))
    # grow keeps rows; take compacts them in the given order
    scorer.grow(10)
    assert scorer.capacity == 10
    expected = scorer.snapshot(4)
    scorer.take(np.array([3, 1]))
    got = scorer.snapshot(2)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value[[3, 1]])
    assert scorer.capacity == 10
    assert (scorer.count[2:] == 0).all()
    with pytest.raises(ValueError, match="lacks"):
        copy.restore({"count": snap["count"]})


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    cells=st.integers(1, 6),
    rounds=st.integers(1, 60),
)
def test_vectorised_rounds_equal_one_scorer_per_cell(seed: int, cells: int, rounds: int) -> None:
    """Cells scored together in random subsets and orders equal each cell scored alone."""
    rng = np.random.default_rng(seed)
    channels = 2
    together = AnomalyScorer(channels=channels, capacity=cells, warmup=3)
    alone = [AnomalyScorer(channels=1, capacity=1, warmup=3) for _ in range(cells * channels)]
    for _ in range(rounds):
        k = int(rng.integers(1, cells * channels + 1))
        flat = rng.permutation(cells * channels)[:k]
        rows, ch = (flat // channels).astype(np.intp), (flat % channels).astype(np.intp)
        innov = rng.standard_t(3, size=k) * rng.uniform(0.1, 10)
        innov[rng.random(k) < 0.1] = np.nan
        s = rng.uniform(0.5, 2.0, size=k)
        got = together.score(rows, ch, np.zeros(k, dtype=np.int64), innov, innov, s)
        for j, cell in enumerate(flat):
            want = alone[cell].score(ONE, ONE, ONE, ONE * 0.0, innov[j : j + 1], s[j : j + 1])[0]
            assert got[j] == want


def test_gaussian_tail_matches_math_erfc() -> None:
    z = np.linspace(-5, 8, 131)
    want = np.array([math.log(0.5 * math.erfc(x / math.sqrt(2))) for x in z])
    np.testing.assert_allclose(gaussian_log_sf(z), want, rtol=2e-7, atol=2e-7)


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="long_halflife"):
        AnomalyScorer(channels=1, long_halflife=0.0)
    with pytest.raises(ValueError, match="channels"):
        AnomalyScorer(channels=0)


def test_recurring_surprises_stop_flagging_but_a_larger_one_still_does() -> None:
    """A spike of 15 every 100 readings is routine after its first few; a spike of 60 is not."""
    rng = np.random.default_rng(7)
    innov = rng.normal(size=1500)
    innov[200:1500:100] = 15.0
    innov[1450] = 60.0
    scorer = AnomalyScorer(channels=1, capacity=1)
    scores = np.array([scorer.score(ONE, ONE, ONE, ONE * 0.0, innov[i : i + 1], np.ones(1))[0]
                       for i in range(1500)])  # fmt: skip
    assert scores[200] >= ANOMALY_LEVEL
    assert (scores[600:1400:100] < ANOMALY_LEVEL).all()
    assert scores[1450] >= ANOMALY_LEVEL


extreme = st.sampled_from(
    [0.0, 1e-300, -1e-300, 1.0, -3.0, 1e150, -1e200, 1e300, -1.7e308, math.inf, math.nan]
)
variance = st.sampled_from([1e-300, 1.0, 1e300, math.inf, 0.0, math.nan, -1.0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(extreme, variance), min_size=1, max_size=40))
def test_extreme_values_raise_no_warning_and_keep_state_finite(readings: list[tuple[float, float]]) -> None:
    """Overflow-prone inputs (pytest turns numpy warnings into errors): scores in [0, 1], state finite."""
    scorer = AnomalyScorer(channels=1, capacity=1, warmup=2)
    for innov, s in readings:
        out = scorer.score(ONE, ONE, ONE, ONE * 0.0, np.array([innov]), np.array([s]))
        assert 0.0 <= out[0] <= 1.0
    for name, value in scorer.snapshot(1).items():
        assert np.isfinite(value).all(), name
