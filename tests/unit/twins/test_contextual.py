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
    # The float32 profiles round at about 6e-8 of their scale, which moves scores by ~1e-7 at most.
    np.testing.assert_allclose(scaled, base, rtol=1e-5, atol=1e-6)
    assert base.max() > 0.9


def test_quiet_halves_repeats_after_a_flag_but_not_a_larger_surprise() -> None:
    t, value, innov = daily(400, seed=2)
    innov[[300, 310, 320]] = [6.0, 5.8, 6.5]  # a surprise, a slightly smaller one, a larger one
    # Innovation only, no recurring-surprise memory, no likelihood (three surprises in ten readings
    # raise it to 1 at once: tested on its own below).
    params = {"context_after": 1e12, "peak_ref": 1e9, "likelihood": False}
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
    # 14 float64, 4 int32 counts, two float32 profiles
    assert ContextualScorer(1, 1).nbytes_per_cell() == 14 * 8 + 4 * 4 + 2 * 24 * 4


def test_likelihood_sees_surprises_become_frequent() -> None:
    """Noise that grows 2.5-fold for 200 readings: each reading is only moderately surprising
    against the slowly learned scale, their rate is not (the anomaly likelihood)."""
    n = 3000
    rng = np.random.default_rng(5)
    t = np.arange(n, dtype=np.int64) * 5 * MIN
    innov = rng.normal(size=n)
    innov[200:2500:97] = 4.0  # now and then a moderate surprise: normal
    innov[2600:2800] *= 2.5
    value = np.zeros(n)
    params = {"context_after": 1e12}
    with_l = replay(ContextualScorer(1, 1, **params), t, value, innov.copy())
    without = replay(ContextualScorer(1, 1, likelihood=False, **params), t, value, innov.copy())
    assert without[2600:2800].max() < 0.75
    assert with_l[2600:2800].max() >= 0.8
    assert with_l[300:2500].max() < ANOMALY_LEVEL  # the occasional ones do not flag


def test_likelihood_does_not_flag_rare_regular_spikes() -> None:
    """A huge spike every 100 readings: the first ones flag, the routine later ones do not (one
    rare surprise is winsorised into the short mean, it is not a rate)."""
    n = 4000
    rng = np.random.default_rng(7)
    t = np.arange(n, dtype=np.int64) * 5 * MIN
    innov = rng.normal(size=n)
    innov[100::100] = 60.0
    scores = replay(ContextualScorer(1, 1, context_after=1e12), t, np.zeros(n), innov)
    unwinsorised = replay(
        ContextualScorer(1, 1, context_after=1e12, likelihood_winsor=1e9), t, np.zeros(n), innov
    )
    assert scores[:300].max() >= ANOMALY_LEVEL
    assert scores[1000:].max() < ANOMALY_LEVEL
    assert unwinsorised[1000:].max() >= scores[1000:].max()


def test_snapshot_from_before_the_likelihood_stage_and_float32_profiles_loads() -> None:
    """A snapshot of the layout before December 2026 (absolute float64 profile, no likelihood
    statistics) is migrated on restore: the same context, the likelihood learned afresh."""
    t, value, innov = daily(300, seed=6)
    value = value + 1e4  # far from zero: the anchor keeps the float32 offsets precise
    scorer = ContextualScorer(channels=1, capacity=1, likelihood=False)
    replay(scorer, t, value, innov)
    snap = scorer.snapshot(1)
    old = {k: v for k, v in snap.items() if not k.startswith("l_") and k != "anchor"}
    old["profile"] = snap["profile"].astype(np.float64) + snap["anchor"][..., None]
    old["profile_spread"] = snap["profile_spread"].astype(np.float64)
    copy = ContextualScorer(channels=1, capacity=1, likelihood=False)
    copy.restore(old)
    got = copy.snapshot(1)
    assert got["l_count"].tolist() == [[0]]
    assert got["profile"].dtype == np.float32
    np.testing.assert_allclose(
        got["anchor"][..., None] + got["profile"], old["profile"], rtol=1e-9, atol=1e-5
    )
    probe = (ONE, ONE, np.array([t[-1] + 600 * 10**9]), np.array([1e4 + 3.0]), np.array([0.5]), np.ones(1))
    np.testing.assert_allclose(copy.score(*probe), scorer.score(*probe), atol=1e-6)
    with pytest.raises(ValueError, match="lacks"):
        copy.restore({k: v for k, v in snap.items() if k != "c_peak"})


def _old_layout(anomaly: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A scorer snapshot as the layout before December 2026 wrote it."""
    old = {k: v for k, v in anomaly.items() if not k.startswith("l_") and k != "anchor"}
    old["profile"] = anomaly["profile"].astype(np.float64) + anomaly["anchor"][..., None]
    old["profile_spread"] = anomaly["profile_spread"].astype(np.float64)
    return old


def test_an_incremental_chain_from_an_old_base_merges_and_restores() -> None:
    """A process upgraded mid-chain resumes from an old-layout base with new-layout parts."""
    from dte_stream.readings import ReadingBatch
    from dte_stream.spec.twins import TwinTypeSpec
    from dte_stream.twins.bank import TwinBank
    from dte_stream.twins.checkpoint import bank_snapshot, merge_bank_snapshots, restore_bank
    from dte_stream.twins.routing import TypedBatch

    spec = TwinTypeSpec.model_validate({"name": "s", "channels": {"v": {}}})

    def feed(bank: TwinBank, twins: list[str], k0: int, k1: int) -> None:
        ids = [w for k in range(k0, k1) for w in twins]
        times = [k * 600 * 10**9 for k in range(k0, k1) for _ in twins]
        values = [math.sin(k / 20.0) + 0.01 * j for k in range(k0, k1) for j in range(len(twins))]
        rb = ReadingBatch.from_columns(ids, ["v"] * len(ids), times, values)
        bank.update(TypedBatch("s", rb, np.zeros(len(ids), dtype=np.intp)), max(times))

    bank = TwinBank(spec)
    feed(bank, ["a", "b"], 0, 300)
    base = bank_snapshot(bank)
    base["anomaly"] = _old_layout(base["anomaly"])
    bank.dirty[:] = False
    feed(bank, ["b"], 300, 320)
    part = bank_snapshot(bank, np.flatnonzero(bank.dirty[: len(bank.twin_ids)]))
    merged = merge_bank_snapshots(base, [part], ["a", "b"])
    restored = restore_bank(spec, merged)
    want = bank.scorer.snapshot(2) if bank.scorer is not None else {}
    got = restored.scorer.snapshot(2) if restored.scorer is not None else {}
    np.testing.assert_array_equal(got["count"], want["count"])
    np.testing.assert_array_equal(got["l_count"][1], want["l_count"][1])  # b: from the new part
    assert got["l_count"][0].tolist() == [0]  # a: from the old base, its likelihood afresh
    absolute = [s["anchor"] + s["profile"][..., 0] for s in (got, want)]
    np.testing.assert_allclose(*absolute, atol=1e-5, equal_nan=True)


def test_invalid_parameters_are_rejected() -> None:
    for kwargs in (
        {"context_bins": 0},
        {"quiet": -1},
        {"level": 0.0},
        {"context_halflife": 0.0},
        {"warmup": 1},
        {"likelihood_short": 0.0},
        {"likelihood_long": float("inf")},
        {"likelihood_winsor": -1.0},
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
    assert scorer.likelihood
    off = build_scorer(AnomalySpec(likelihood=False), channels=1, capacity=1)
    assert isinstance(off, ContextualScorer)
    assert not off.likelihood
