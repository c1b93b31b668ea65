"""The default anomaly scorer (ContextualScorer): context, quiet period, scale, range, state handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.spec.twins import AnomalySpec
from dte_stream.twins.anomaly import ANOMALY_LEVEL
from dte_stream.twins.contextual import ContextualScorer
from dte_stream.twins.scorers import build_scorer

MIN = 60 * 10**9
ONE = np.zeros(1, dtype=np.intp)


def daily(n: int, step_min: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` readings ``step_min`` apart of a daily wave plus noise; innovations are the noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.int64) * step_min * MIN
    noise = rng.normal(size=n)
    value = 10.0 * np.sin(2 * math.pi * t / (1440 * MIN)) + noise
    return t, value, noise


def replay(scorer: ContextualScorer, t: np.ndarray, value: np.ndarray, innovation: np.ndarray) -> np.ndarray:
    out = np.zeros(t.shape[0])
    for i in range(t.shape[0]):
        out[i] = scorer.score(ONE, ONE, t[i : i + 1], value[i : i + 1], innovation[i : i + 1], np.ones(1))[0]
    return out


def test_context_sees_what_the_innovation_does_not() -> None:
    t, value, innov = daily(144 * 8)
    value[144 * 7 + 30 : 144 * 7 + 60] -= 8.0  # day 8: five hours far below the usual wave
    scores = replay(ContextualScorer(1, 1), t, value, innov)
    assert scores[144 * 7 + 30 : 144 * 7 + 60].max() >= ANOMALY_LEVEL
    assert scores[144 * 3 : 144 * 7].max() < 0.5  # normal days after the context is ready
    # The innovation alone (no context) sees nothing: the innovations are plain noise.
    alone = replay(ContextualScorer(1, 1, context_after=1e12), t, value, innov)
    assert alone[144 * 7 + 30 : 144 * 7 + 60].max() < 0.5


def test_scale_free() -> None:
    t, value, innov = daily(144 * 4, seed=1)
    value[144 * 3 + 10] += 40.0
    innov[144 * 3 + 10] += 40.0
    base = replay(ContextualScorer(1, 1), t, value, innov)
    scaled = replay(ContextualScorer(1, 1), t, value * 1e3 + 5e3, innov * 1e3)
    np.testing.assert_allclose(scaled, base, rtol=1e-7, atol=1e-9)
    assert base.max() > 0.9


def test_quiet_halves_repeats_after_a_flag_but_not_a_larger_surprise() -> None:
    t, value, innov = daily(400, seed=2)
    innov[[300, 310, 320]] = [6.0, 5.8, 6.5]  # a surprise, a slightly smaller one, a larger one
    params = {"context_after": 1e12, "peak_ref": 1e9}  # innovation only, no recurring-surprise memory
    loud = replay(ContextualScorer(1, 1, quiet=0, **params), t, value, innov.copy())
    quiet = replay(ContextualScorer(1, 1, quiet=50, **params), t, value, innov.copy())
    assert loud[300] >= ANOMALY_LEVEL
    assert loud[310] >= ANOMALY_LEVEL
    assert quiet[300] == loud[300]
    assert quiet[310] == pytest.approx(loud[310] / 2)
    assert quiet[320] == loud[320] > loud[300]


def test_scores_in_unit_range_even_for_extremes() -> None:
    scorer = ContextualScorer(channels=2, capacity=3)
    rng = np.random.default_rng(3)
    rows = np.array([0, 1, 2, 0, 1, 2])
    ch = np.array([0, 0, 0, 1, 1, 1])
    for k in range(200):
        x = rng.standard_cauchy(6) * rng.choice([1e-12, 1.0, 1e12], 6)
        x[rng.integers(0, 6)] = rng.choice([0.0, np.inf, -np.inf, np.nan])
        out = scorer.score(rows, ch, np.full(6, k * MIN), x, x[::-1].copy(), np.ones(6))
        assert np.isfinite(out).all()
        assert ((out >= 0) & (out <= 1)).all()


def test_nan_innovation_scores_zero_and_is_not_learned() -> None:
    scorer = ContextualScorer(1, 1)
    before = scorer.snapshot(1)
    out = scorer.score(ONE, ONE, np.array([0]), np.array([1.0]), np.array([np.nan]), np.ones(1))
    assert out.tolist() == [0.0]
    after = scorer.snapshot(1)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), cells=st.integers(1, 4), rounds=st.integers(1, 40))
def test_vectorised_rounds_equal_one_scorer_per_cell(seed: int, cells: int, rounds: int) -> None:
    rng = np.random.default_rng(seed)
    together = ContextualScorer(channels=1, capacity=cells, context_after=3600.0, warmup=5, quiet=3)
    alone = [
        ContextualScorer(channels=1, capacity=1, context_after=3600.0, warmup=5, quiet=3)
        for _ in range(cells)
    ]
    rows = np.arange(cells)
    for r in range(rounds):
        t = (r * 600 + rng.integers(0, 300, cells)) * 10**9
        v = rng.normal(size=cells) * 3
        u = rng.standard_t(3, size=cells)
        got = together.score(rows, np.zeros(cells, dtype=np.intp), t, v, u, np.ones(cells))
        for c in range(cells):
            one = alone[c].score(ONE, ONE, t[c : c + 1], v[c : c + 1], u[c : c + 1], np.ones(1))
            assert got[c] == one[0]


def test_snapshot_restore_grow_take_reset() -> None:
    t, value, innov = daily(300, seed=4)
    scorer = ContextualScorer(channels=1, capacity=2)
    for i in range(300):
        rows = np.array([0, 1])
        scorer.score(rows, np.zeros(2, dtype=np.intp), np.full(2, t[i]), np.array([value[i], -value[i]]),
                     np.array([innov[i], 2 * innov[i]]), np.ones(2))  # fmt: skip
    snap = scorer.snapshot(2)
    copy = ContextualScorer(channels=1, capacity=0)
    copy.restore(snap)
    probe = (np.array([0, 1]), np.zeros(2, dtype=np.intp), np.full(2, t[-1] + 600 * 10**9),
             np.array([3.0, 4.0]), np.array([0.5, 9.0]), np.ones(2))  # fmt: skip
    np.testing.assert_array_equal(copy.score(*probe), scorer.score(*probe))
    scorer.grow(5)
    assert scorer.capacity == 5
    scorer.take(np.array([1]))
    np.testing.assert_array_equal(scorer.snapshot(1)["profile"], copy.snapshot(2)["profile"][1:2])
    scorer.reset_rows(np.array([0]))
    assert scorer.snapshot(1)["count"].tolist() == [[0]]
    with pytest.raises(ValueError, match="lacks"):
        copy.restore({"count": snap["count"]})
    assert ContextualScorer(1, 1).nbytes_per_cell() == 13 * 8 + 2 * 24 * 8


def test_invalid_parameters_are_rejected() -> None:
    for kwargs in (
        {"context_bins": 0},
        {"quiet": -1},
        {"level": 0.0},
        {"context_halflife": 0.0},
        {"warmup": 1},
    ):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            ContextualScorer(1, 1, **kwargs)  # type: ignore[arg-type]


def test_build_scorer_follows_the_spec() -> None:
    spec = AnomalySpec(quiet=7, context_bins=48, context_halflife="1d", context_after="12h")
    scorer = build_scorer(spec, channels=3, capacity=4)
    assert isinstance(scorer, ContextualScorer)
    assert (scorer.quiet, scorer.bins, scorer.context_halflife, scorer.context_after) == (
        7,
        48,
        86400.0,
        43200.0,
    )
    assert scorer.snapshot(4)["profile"].shape == (4, 3, 48)
