"""LearnerBank: every learner kind through the same contract checks, then each role's behaviour.

The contract compares the bank with a per-reading reference written here independently (a
Welford standardiser, then score-then-learn with the river model), so the vectorised grouping
and segmented standardisation are checked reading by reading, for every kind.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dte_stream.spec.learners import LEARNER_KINDS, LearnerSpec
from dte_stream.twins.learners import DRIFT_CLIP, DRIFT_WARMUP, HST_SQUASH, LearnerBank

KINDS = list(LEARNER_KINDS)
CHANNELS = ["temp", "flow"]


def spec_for(kind: str, **kw: Any) -> LearnerSpec:
    if LEARNER_KINDS[kind].role == "drift":
        kw.setdefault("features", ["value"])
        kw.setdefault("params", {"threshold": 10.0} if kind == "page_hinkley" else {})
    if kind == "half_space_trees":
        kw.setdefault("params", {"window_size": 40})
    if kind == "gaussian_score":
        kw.setdefault("params", {"grace_period": 20})
    return LearnerSpec(name="learner", kind=kind, **kw)  # type: ignore[arg-type]


def series(n: int, seed: int, shift_at: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    value = 20.0 + 0.5 * np.sin(np.arange(n) / 15.0) + rng.normal(0, 1, n)
    if shift_at is not None:
        value[shift_at:] += 6.0
    return {
        "value": value,
        "innovation": rng.normal(0, 1, n),
        "delta": np.r_[np.nan, np.diff(value)],
    }


def warmup(spec: LearnerSpec) -> int:
    p = spec.model_params()
    if spec.kind == "half_space_trees":
        return int(p["window_size"])
    if spec.kind == "gaussian_score":
        return int(p["grace_period"])
    if spec.kind == "holt_winters":
        return 2
    if spec.kind == "snarimax":
        return int(p["d"]) + int(p["p"]) + 1
    return DRIFT_WARMUP


def reference(spec: LearnerSpec, feats: dict[str, np.ndarray], *, learn_first: bool = False) -> np.ndarray:
    """One cell, one reading at a time: standardise with the statistics before the reading,
    then score (forecast, detect) and learn. ``learn_first`` is the wrong order, for contrast."""
    model = LEARNER_KINDS[spec.kind].river_type()(**spec.model_params())
    xs = np.column_stack([feats[f] for f in spec.features])
    d = xs.shape[1]
    n, mean, m2 = 0, np.zeros(d), np.zeros(d)
    out: list[float] = []
    for x in xs:
        if not np.isfinite(x).all():
            out.append(math.nan)
            continue
        std = np.sqrt(m2 / max(n, 1))
        tiny = 1e-12 * (1 + np.abs(mean))
        diff = x - mean
        z = np.where(
            std > tiny,
            diff / np.where(std > tiny, std, 1),
            np.where(np.abs(diff) > tiny, np.sign(diff) * 1e3, 0),
        )
        if n < 2:
            z = np.zeros(d)
        seen = n
        n += 1
        delta = x - mean
        mean = mean + delta / n
        m2 = m2 + delta * (x - mean)
        role = spec.role
        if role == "drift":
            if seen < DRIFT_WARMUP:
                out.append(0.0)
                continue
            model.update(float(np.clip(z[0], -DRIFT_CLIP, DRIFT_CLIP)))
            out.append(1.0 if model.drift_detected else 0.0)
            if model.drift_detected:
                n, mean, m2 = 0, np.zeros(d), np.zeros(d)
            continue
        if spec.kind == "half_space_trees":
            u = dict(zip(spec.features, (0.5 + 0.5 * np.tanh(z / HST_SQUASH)).tolist(), strict=True))
            if learn_first:
                model.learn_one(u)
            out.append(model.score_one(u) if seen >= warmup(spec) else math.nan)
            if not learn_first:
                model.learn_one(u)
        elif role == "anomaly":
            y = float(x[0])
            if learn_first:
                model.learn_one(None, y)
            out.append(model.score_one(None, y) if seen >= warmup(spec) else math.nan)
            if not learn_first:
                model.learn_one(None, y)
        else:
            y = float(x[0])
            if learn_first:
                model.learn_one(y)
            out.append(model.forecast(spec.horizon)[-1] if seen + learn_first >= warmup(spec) else math.nan)
            if not learn_first:
                model.learn_one(y)
    return np.asarray(out, dtype=np.float64)


def feed(bank: LearnerBank, twins: list[str], chans: list[int], feats: dict[str, np.ndarray]) -> np.ndarray:
    out = bank.update(
        np.asarray(twins, dtype=np.str_), np.asarray(chans, dtype=np.intp), np.arange(len(twins)), feats
    )
    return out.columns["learner"]


def interleave(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Readings of twins a and b alternating: a0 b0 a1 b1 ..."""
    merged = {f: np.ravel(np.column_stack([a[f], b[f]])) for f in a}
    return merged, ["a", "b"] * len(a["value"])


def take(feats: dict[str, np.ndarray], idx: Any) -> dict[str, np.ndarray]:
    return {f: v[idx] for f, v in feats.items()}


def same(x: np.ndarray, y: np.ndarray) -> bool:
    return bool(np.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True))


# -- contract: every kind ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_two_twins_in_uneven_batches_equal_the_per_reading_reference(kind: str) -> None:
    spec = spec_for(kind)
    a, b = series(300, 1, shift_at=150), series(300, 2)
    merged, twins = interleave(a, b)
    bank = LearnerBank([spec], CHANNELS)
    cuts = [0, 1, 2, 50, 51, 333, 334, 600]  # one-reading batches and batches of one twin's cell
    outs = [
        feed(bank, twins[lo:hi], [0] * (hi - lo), take(merged, slice(lo, hi)))
        for lo, hi in itertools.pairwise(cuts)
    ]
    got = np.concatenate(outs)
    assert same(got[0::2], reference(spec, a))
    assert same(got[1::2], reference(spec, b))
    assert np.isfinite(got[-100:]).all()
    assert len(bank) == 2


@pytest.mark.parametrize("kind", [k for k in KINDS if LEARNER_KINDS[k].role != "drift"])
def test_output_is_computed_before_the_reading_is_learned(kind: str) -> None:
    spec = spec_for(kind)
    feats = series(200, 3)
    got = feed(LearnerBank([spec], CHANNELS), ["a"] * 200, [0] * 200, feats)
    wrong = reference(spec, feats, learn_first=True)
    assert same(got, reference(spec, feats))
    assert not same(got, wrong)


@pytest.mark.parametrize("kind", KINDS)
def test_snapshot_restore_gives_identical_outputs(kind: str) -> None:
    spec = spec_for(kind)
    merged, twins = interleave(series(250, 4, shift_at=200), series(250, 5))
    bank = LearnerBank([spec], CHANNELS)
    feed(bank, twins[:300], [0] * 300, take(merged, slice(0, 300)))
    data = bank.snapshot()
    restored = LearnerBank.restore([spec], CHANNELS, data)
    assert len(restored) == len(bank) == 2
    rest = take(merged, slice(300, None))
    assert same(feed(restored, twins[300:], [0] * 200, rest), feed(bank, twins[300:], [0] * 200, rest))
    again = LearnerBank.restore([spec], CHANNELS, restored.snapshot())
    assert same(feed(again, ["a"], [0], take(merged, [0])), feed(bank, ["a"], [0], take(merged, [0])))


@pytest.mark.parametrize("kind", KINDS)
def test_a_changed_spec_restores_as_fresh_models(kind: str) -> None:
    spec = spec_for(kind)
    bank = LearnerBank([spec], CHANNELS)
    feed(bank, ["a"] * 100, [0] * 100, series(100, 6))
    other = spec.model_copy(update={"name": "other"})
    restored = LearnerBank.restore([other], CHANNELS, bank.snapshot())
    assert len(restored) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_eviction_frees_the_models_of_a_twin(kind: str) -> None:
    spec = spec_for(kind)
    merged, twins = interleave(series(150, 7), series(150, 8))
    bank = LearnerBank([spec], CHANNELS)
    feed(bank, twins, [0] * 300, merged)
    feed(bank, ["a"], [1], take(series(2, 9), slice(1, 2)))
    assert len(bank) == 3
    bank.evict(["a", "nobody"])
    assert len(bank) == 1
    again = series(120, 10)
    expected = feed(LearnerBank([spec], CHANNELS), ["x"] * 120, [0] * 120, again)
    assert same(feed(bank, ["a"] * 120, [0] * 120, again), expected)  # a starts afresh
    small = LearnerBank.restore([spec], CHANNELS, bank.snapshot())
    assert len(small) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_nan_features_give_nan_and_are_not_learned(kind: str) -> None:
    spec = spec_for(kind)
    feats = series(200, 11)
    holes = np.array([0, 30, 31, 90, 150])
    for f in spec.features:
        feats[f][holes] = np.nan if f != "value" else np.inf
    got = feed(LearnerBank([spec], CHANNELS), ["a"] * 200, [0] * 200, feats)
    assert np.isnan(got[holes]).all()
    keep = np.setdiff1d(np.arange(200), holes)
    clean = feed(LearnerBank([spec], CHANNELS), ["a"] * keep.size, [0] * keep.size, take(feats, keep))
    assert same(got[keep], clean)


@pytest.mark.parametrize("kind", KINDS)
def test_per_twin_models_share_nothing(kind: str) -> None:
    spec = spec_for(kind)
    a, b = series(200, 12, shift_at=120), series(200, 13)
    b["value"] *= 100.0
    merged, twins = interleave(a, b)
    together = feed(LearnerBank([spec], CHANNELS), twins, [0] * 400, merged)
    alone = feed(LearnerBank([spec], CHANNELS), ["a"] * 200, [0] * 200, a)
    assert same(together[0::2], alone)


@pytest.mark.parametrize("kind", KINDS)
def test_twin_type_scope_shares_one_model_per_channel(kind: str) -> None:
    spec = spec_for(kind, scope="twin_type")
    merged, twins = interleave(series(150, 14), series(150, 15))
    bank = LearnerBank([spec], CHANNELS)
    got = feed(bank, twins, [0] * 300, merged)
    assert len(bank) == 1
    assert same(got, reference(spec, merged))  # one model saw both twins' readings in order
    bank.evict(["a", "b"])
    assert len(bank) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_learners_channels_are_learned(kind: str) -> None:
    spec = spec_for(kind, channels=["flow"])
    feats = series(100, 16)
    chans = [0, 1] * 50
    bank = LearnerBank([spec], CHANNELS)
    got = feed(bank, ["a"] * 100, chans, feats)
    assert np.isnan(got[0::2]).all()
    assert same(got[1::2], reference(spec, take(feats, slice(1, None, 2))))
    assert len(bank) == 1


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    twins=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=120),
    cut=st.integers(0, 120),
)
def test_any_batching_gives_the_same_outputs(kind: str, twins: list[str], cut: int) -> None:
    spec = spec_for(kind)
    feats = series(len(twins), 17)
    chans = [i % 2 for i in range(len(twins))]
    whole = feed(LearnerBank([spec], CHANNELS), twins, chans, feats)
    bank = LearnerBank([spec], CHANNELS)
    c = min(cut, len(twins))
    parts = [
        feed(bank, twins[:c], chans[:c], take(feats, slice(0, c))),
        feed(bank, twins[c:], chans[c:], take(feats, slice(c, None))),
    ]
    assert same(np.concatenate(parts), whole)


# -- behaviour per role ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["half_space_trees", "gaussian_score"])
def test_anomaly_scorers_rank_spikes_above_ordinary_readings(kind: str) -> None:
    rng = np.random.default_rng(21)
    n = 1200
    value = 20.0 + rng.normal(0, 1, n)
    spikes = np.arange(400, 1200, 100)
    value[spikes] += 7.0
    innovation = value - 20.0 + rng.normal(0, 0.3, n)
    feats = {"value": value, "innovation": innovation, "delta": np.r_[np.nan, np.diff(value)]}
    spec = LearnerSpec(name="learner", kind=kind)  # type: ignore[arg-type]
    out = LearnerBank([spec], ["temp"]).update(
        np.full(n, "p1"), np.zeros(n, dtype=np.intp), np.arange(n), feats
    )
    score = out.columns["learner"]
    assert same(out.anomaly, score)
    ordinary = np.delete(score, np.r_[spikes, spikes + 1])[400:]
    assert np.isfinite(ordinary).all()
    assert ((score[400:] >= 0) & (score[400:] <= 1)).all()
    assert score[spikes].min() > np.quantile(ordinary, 0.99)
    assert not out.drift.any()


@pytest.mark.parametrize("kind", ["adwin", "page_hinkley"])
def test_drift_detectors_fire_after_a_level_shift_only(kind: str) -> None:
    spec = LearnerSpec(name="learner", kind=kind, features=["value"])  # type: ignore[arg-type]
    rng = np.random.default_rng(22)
    stationary = {"value": rng.normal(5, 2, 3000)}
    quiet = LearnerBank([spec], ["temp"]).update(
        np.full(3000, "p1"), np.zeros(3000, dtype=np.intp), np.arange(3000), stationary
    )
    assert not quiet.drift.any()
    shifted = {"value": np.r_[rng.normal(5, 2, 500), rng.normal(11, 2, 300)]}
    out = LearnerBank([spec], ["temp"]).update(
        np.full(800, "p1"), np.zeros(800, dtype=np.intp), np.arange(800), shifted
    )
    fired = np.flatnonzero(out.drift)
    assert fired.size
    assert 500 <= fired[0] < 540
    assert np.isnan(out.anomaly).all()
    assert set(np.unique(out.columns["learner"])) <= {0.0, 1.0}


@pytest.mark.parametrize("kind", ["holt_winters", "snarimax"])
@pytest.mark.parametrize("horizon", [1, 5])
def test_forecasters_track_a_ramp(kind: str, horizon: int) -> None:
    spec = LearnerSpec(name="learner", kind=kind, horizon=horizon)  # type: ignore[arg-type]
    rng = np.random.default_rng(23)
    t = np.arange(800.0)
    value = 3.0 + 0.5 * t + rng.normal(0, 0.2, t.size)
    out = LearnerBank([spec], ["temp"]).update(
        np.full(t.size, "p1"), np.zeros(t.size, dtype=np.intp), np.arange(t.size), {"value": value}
    )
    forecast = out.columns["learner"]
    # the forecast made before reading i looks horizon readings ahead of reading i - 1
    target = 3.0 + 0.5 * (t - 1 + horizon)
    error = np.abs(forecast[400:] - target[400:])
    assert error.mean() < 0.3
    naive = np.abs(value[399:-1] - target[400:]).mean()  # last value as the forecast
    assert error.mean() < naive
    assert np.isnan(out.anomaly).all()
    assert not out.drift.any()


def test_several_learners_fill_their_columns_and_the_combined_outputs() -> None:
    specs = [
        LearnerSpec(name="hst", kind="half_space_trees", params={"window_size": 20}),
        LearnerSpec(name="gauss", kind="gaussian_score", params={"grace_period": 20}),
        LearnerSpec(name="ph", kind="page_hinkley", features=["value"], params={"threshold": 5.0}),
        LearnerSpec(name="hw", kind="holt_winters", channels=["flow"]),
    ]
    bank = LearnerBank(specs, CHANNELS)
    assert bank.columns() == ["hst", "gauss", "ph", "hw"]
    assert bank.required_features() == ["value", "innovation", "delta"]
    feats = series(400, 24, shift_at=300)
    out = bank.update(np.full(400, "p1"), np.asarray([0, 1] * 200, dtype=np.intp), np.arange(400), feats)
    assert set(out.columns) == {"hst", "gauss", "ph", "hw"}
    assert same(out.anomaly, np.fmax(out.columns["hst"], out.columns["gauss"]))
    assert (out.drift == (out.columns["ph"] == 1.0)).all()
    assert out.drift[300:].any()
    assert np.isnan(out.columns["hw"][0::2]).all()
    assert len(bank) == 2 + 2 + 2 + 1
    empty = bank.update(
        np.array([], dtype=np.str_), np.array([], dtype=np.intp), np.array([], dtype=np.int64), feats
    )
    assert empty.anomaly.shape == (0,)
    assert empty.columns["hw"].shape == (0,)


def test_missing_features_and_unknown_channels_are_refused() -> None:
    bank = LearnerBank([LearnerSpec(name="hst", kind="half_space_trees")], CHANNELS)
    with pytest.raises(
        ValueError, match=r"learners need features \['innovation', 'delta'\]; given: \['value'\]"
    ):
        bank.update(np.array(["a"]), np.array([0]), np.array([0]), {"value": np.array([1.0])})
    with pytest.raises(ValueError, match="unknown channel 'pressure'; the twin type has: temp, flow"):
        LearnerBank([LearnerSpec(name="hst", kind="half_space_trees", channels=["pressure"])], CHANNELS)
    with pytest.raises(ValueError, match="names must be unique"):
        LearnerBank(
            [LearnerSpec(name="a", kind="adwin"), LearnerSpec(name="a", kind="page_hinkley")], CHANNELS
        )


def test_a_snapshot_of_another_format_is_refused() -> None:
    import pickle

    with pytest.raises(ValueError, match="learner snapshot format 99"):
        LearnerBank.restore([], CHANNELS, pickle.dumps({"format": 99}))


def test_per_twin_snapshots_stay_small() -> None:
    """The point of the small defaults: per (twin, channel) cell, a few kB at most."""
    feats = series(400, 25)
    for kind, limit in [
        ("half_space_trees", 6000),
        ("gaussian_score", 800),
        ("adwin", 2500),
        ("page_hinkley", 800),
    ]:
        spec = LearnerSpec(name="learner", kind=kind, features=None)  # type: ignore[arg-type]
        twins = [f"t{i}" for i in range(20)] * 20
        bank = LearnerBank([spec], CHANNELS)
        feed(bank, twins, [0] * 400, feats)
        empty = len(LearnerBank([spec], CHANNELS).snapshot())
        assert (len(bank.snapshot()) - empty) / 20 < limit, kind


# -- the spec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "features"),
    [
        ("half_space_trees", ["value", "innovation", "delta"]),
        ("gaussian_score", ["innovation"]),
        ("adwin", ["innovation"]),
        ("page_hinkley", ["innovation"]),
        ("holt_winters", ["value"]),
        ("snarimax", ["value"]),
    ],
)
def test_default_features_per_kind(kind: str, features: list[str]) -> None:
    assert LearnerSpec(name="x", kind=kind).features == features  # type: ignore[arg-type]


def test_unknown_parameter_names_the_allowed_ones() -> None:
    with pytest.raises(ValidationError) as err:
        LearnerSpec(name="x", kind="half_space_trees", params={"trees": 3})
    text = str(err.value)
    assert "unknown parameter 'trees' for half_space_trees (river.anomaly.HalfSpaceTrees)" in text
    assert "allowed: height, n_trees, seed, window_size" in text  # limits is not a scalar
    with pytest.raises(
        ValidationError, match=r"unknown parameter 'regressor'.*allowed: d, m, p, q, sd, sp, sq"
    ):
        LearnerSpec(name="x", kind="snarimax", params={"regressor": "linear"})


def test_invalid_parameter_values_and_shapes_are_refused() -> None:
    with pytest.raises(ValidationError, match="invalid params for page_hinkley: Invalid 'mode'"):
        LearnerSpec(name="x", kind="page_hinkley", params={"mode": "sideways"})
    with pytest.raises(ValidationError, match="takes exactly one feature"):
        LearnerSpec(name="x", kind="adwin", features=["value", "nis"])
    with pytest.raises(ValidationError, match="features repeat a name"):
        LearnerSpec(name="x", kind="half_space_trees", features=["value", "value"])
    with pytest.raises(ValidationError, match="horizon applies to forecasters only"):
        LearnerSpec(name="x", kind="gaussian_score", horizon=3)
    with pytest.raises(ValidationError, match="Input should be 'value', 'innovation'"):
        LearnerSpec(name="x", kind="adwin", features=["speed"])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="unknown field 'window'"):
        LearnerSpec(name="x", kind="adwin", window=3)  # type: ignore[call-arg]


def test_params_override_the_small_defaults() -> None:
    spec = LearnerSpec(name="x", kind="half_space_trees", params={"n_trees": 10})
    assert spec.model_params() == {"n_trees": 10, "height": 4, "window_size": 150, "seed": 42}
    assert (
        LearnerSpec(name="x", kind="holt_winters", params={"seasonality": 24, "gamma": 0.1}).role
        == "forecast"
    )


def test_check_channels() -> None:
    assert LearnerSpec(name="x", kind="adwin").check_channels(["a"]) is None
    spec = LearnerSpec(name="x", kind="adwin", channels=["a", "b"])
    assert spec.check_channels(["a", "b", "c"]) is None
    assert spec.check_channels(["a"]) == "learner 'x': unknown channel 'b'; the twin type has: a"
