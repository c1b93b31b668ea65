"""The twin bank: filters against the per-reading reference, quality, anomalies, timers, snapshots."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.readings import ReadingBatch
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins import flags as fl
from dte_stream.twins.bank import TwinBank, rounds_of
from dte_stream.twins.checkpoint import SnapshotMismatchError
from dte_stream.twins.filters import build_groups
from dte_stream.twins.presets import local_linear_trend, random_walk
from dte_stream.twins.routing import TypedBatch
from dte_stream.twins.statespace_reference import ReferenceFilter

S = 10**9
#: Quality checks that never change a reading's trust, so the filters can be compared exactly.
QUIET = {"spike_sigma": 0, "stuck_after": 0, "max_clock_skew": None}

SPEC = TwinTypeSpec.model_validate(
    {
        "name": "pump",
        "channels": {
            "temperature": {"filter": {"process_noise": 0.01, "measurement_noise": 0.5}, "quality": QUIET},
            "pressure": {"filter": {"process_noise": 0.0001, "measurement_noise": 0.01}, "quality": QUIET},
            "flow_a": {"quality": QUIET},
            "flow_b": {"quality": QUIET},
        },
        "models": [
            {
                "name": "flow",
                "preset": {
                    "model": "local_linear_trend",
                    "level_noise": 0.1,
                    "measurement_noise": [0.5, 2.0],
                },
                "observes": ["flow_a", "flow_b"],
            }
        ],
        "kalman": {"lateness": "30m", "horizons": [60]},
    }
)


def _batch(
    twins: list[str], channels: list[int], times: list[int], values: list[float], spec: TwinTypeSpec = SPEC
) -> TypedBatch:
    names = np.array(spec.channel_names())[channels]
    rb = ReadingBatch.from_columns(twins, names, times, values)
    return TypedBatch(spec.name, rb, np.asarray(channels, dtype=np.intp))


def _references() -> tuple[ReferenceFilter, ReferenceFilter, ReferenceFilter]:
    lateness = 30 * 60 * S
    return (
        ReferenceFilter(random_walk(0.01, [0.5]), lateness_ns=lateness, horizons_s=[60.0]),
        ReferenceFilter(random_walk(0.0001, [0.01]), lateness_ns=lateness, horizons_s=[60.0]),
        ReferenceFilter(local_linear_trend(0.1, 1e-6, [0.5, 2.0]), lateness_ns=lateness, horizons_s=[60.0]),
    )


readings = st.lists(
    st.tuples(
        st.integers(0, 5),  # twin
        st.integers(0, 3),  # channel
        st.integers(0, 2 * 3_600).map(lambda s: s * S),  # gaps, duplicates, late and too late
        st.floats(-100, 100, allow_nan=False),
    ),
    min_size=1,
    max_size=50,
)


def _close(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=150, deadline=None)
@given(st.lists(readings, min_size=1, max_size=4))
def test_bank_matches_per_reading_reference(batches: list[list[tuple[int, int, int, float]]]) -> None:
    """Per-channel filters (cells) and a shared two-channel model, against one reading at a time.

    Copies (same twin, channel and time as a reading applied before: in the batch, or the cell's
    latest of earlier batches) are not applied: the first copy wins.
    """
    bank = TwinBank(SPEC, capacity=2)  # small capacity: growth happens during the test
    temp, pressure, flow = _references()
    latest: dict[tuple[int, int], int] = {}
    for items in batches:
        twins = [f"t{t}" for t, _, _, _ in items]
        out = bank.update(
            _batch(twins, [c for _, c, _, _ in items], [t for _, _, t, _ in items], [v for *_, v in items]),
            now_ns=0,
        )
        seen: set[tuple[int, int, int]] = set()
        copies = set()
        for i, (twin_no, c, t, _) in enumerate(items):
            if (twin_no, c, t) in seen or latest.get((twin_no, c)) == t:
                copies.add(i)
            seen.add((twin_no, c, t))
        for twin_no, c, t, _ in items:
            latest[twin_no, c] = max(t, latest.get((twin_no, c), t))
        # The bank applies each state row's readings in time order (ties in arrival order).
        expected = {}
        for i in sorted(set(range(len(items))) - copies, key=lambda i: (items[i][2], i)):
            twin, c, t, v = twins[i], items[i][1], items[i][2], items[i][3]
            if c == 0:
                expected[i] = temp.update(f"{twin}/0", 0, t, v)
            elif c == 1:
                expected[i] = pressure.update(f"{twin}/1", 0, t, v)
            else:
                expected[i] = flow.update(twin, c - 2, t, v)
        kept = [i for i in range(len(items)) if i not in copies and not expected[i].rejected]
        assert len(out.rejected) == len(items) - len(kept)
        assert out.copies == len(copies)
        for reason in (d.reason for d in out.rejected[len(copies) :]):
            assert "lateness bound is 1800 s" in reason
        for reason in (d.reason for d in out.rejected[: len(copies)]):
            assert reason.startswith(("duplicate reading: ", "conflicting value: "))
        est = out.estimates
        assert len(est) == len(kept)
        for row, i in enumerate(kept):
            want = expected[i]
            assert _close(est.estimate[row], want.channel_estimate)
            assert _close(est.std[row], want.channel_std)
            assert _close(est.innovation[row], want.innovation)
            assert _close(est.nis[row], want.nis)
            assert _close(est.extra["forecast_1m"][row], want.forecast[0])
            assert bool(est.flags[row] & fl.GATED) == want.gated
            assert bool(est.flags[row] & fl.LATE) == want.late
            if items[i][1] >= 2:
                assert _close(est.extra["flow_level"][row], want.estimate[0])
                assert _close(est.extra["flow_slope_std"][row], want.std[1])
            else:
                assert math.isnan(est.extra["flow_level"][row])


def test_rounds_apply_each_cell_once_per_round_in_time_order() -> None:
    cells = np.array([5, 5, 2, 5, 2, 9])
    times = np.array([30, 10, 7, 20, 3, 1])
    rounds = rounds_of(cells, times)
    assert [sorted(cells[r].tolist()) for r in rounds] == [[2, 5, 9], [2, 5], [5]]
    seen: dict[int, int] = {}
    for r in rounds:
        assert len(set(cells[r].tolist())) == len(r)
        for i in r.tolist():
            assert times[i] >= seen.get(int(cells[i]), -1)
            seen[int(cells[i])] = int(times[i])


def test_identical_channel_filters_share_one_group_and_shared_models_have_their_own() -> None:
    spec = TwinTypeSpec.model_validate({"name": "p", "channels": {"a": {}, "b": {}, "c": {}}})
    assert [(g.name, g.channels) for g in TwinBank(spec).groups] == [("random_walk", [0, 1, 2])]
    assert [(g.name, g.channels, g.per_cell) for g in build_groups(SPEC, 4, fuse=False)] == [
        ("flow", [2, 3], False),
        ("random_walk", [0], True),
        ("random_walk_2", [1], True),
    ]


def test_channel_filters_that_differ_only_in_noise_share_one_kernel_as_variants() -> None:
    groups = TwinBank(SPEC).groups
    assert [(g.name, g.channels, g.per_cell, g.fused) for g in groups] == [
        ("flow", [2, 3], False, False),
        ("random_walk", [0, 1], True, True),
    ]
    walks = groups[1]
    assert [walks.filter_of(c)[0] for c in (0, 1)] == ["random_walk", "random_walk_2"]
    assert [float(walks.filter_of(c)[1].Q[0, 0]) for c in (0, 1)] == [0.01, 0.0001]
    assert walks.kernel.variants == [walks.filter_of(0)[1], walks.filter_of(1)[1]]
    # a model that is not written out in closed form keeps one group per setting
    oscillators = TwinTypeSpec.model_validate(
        {"name": "p", "channels": {
            "a": {"filter": {"model": "damped_oscillator", "period": 2.0}},
            "b": {"filter": {"model": "damped_oscillator", "period": 2.0, "accel_noise": 0.5}},
        }}
    )  # fmt: skip
    assert [(g.channels, g.fused) for g in TwinBank(oscillators).groups] == [([0], False), ([1], False)]


def test_unknown_twins_are_added_and_rows_are_stable() -> None:
    bank = TwinBank(SPEC, capacity=1)
    bank.update(_batch(["a", "b"], [0, 0], [0, 0], [1.0, 2.0]), now_ns=0)
    bank.update(_batch(["c", "a"], [1, 1], [0, 0], [3.0, 4.0]), now_ns=0)
    assert bank.twin_ids == ["a", "b", "c"]
    assert bank.capacity >= 3


def test_changed_twins_are_taken_a_limited_number_at_a_time_round_the_bank() -> None:
    bank = TwinBank(SPEC)
    ids = [f"p{i}" for i in range(10)]
    bank.update(_batch(ids, [0] * 10, [0] * 10, [1.0] * 10), now_ns=0)
    assert bank.take_changed(4)[0].tolist() == [0, 1, 2, 3]
    assert bank.take_changed(4)[0].tolist() == [4, 5, 6, 7]
    bank.update(_batch(["p0"], [0], [S], [2.0]), now_ns=S)  # p0 changes again before 8 and 9 went
    assert bank.has_changed()
    assert bank.take_changed(2)[0].tolist() == [8, 9]  # the rest first: nobody waits forever
    assert bank.take_changed(2)[0].tolist() == [0]
    assert not bank.has_changed()
    assert bank.take_changed(2)[0].tolist() == []
    bank.update(_batch(ids[:3], [0] * 3, [2 * S] * 3, [3.0] * 3), now_ns=2 * S)
    assert bank.take_changed()[0].tolist() == [0, 1, 2]  # no limit: all of them


def _noisy_batch(rng: np.random.Generator, twins: int, n: int, t0: int) -> TypedBatch:
    ids = [f"pump-{i}" for i in rng.integers(0, twins, n)]
    return _batch(
        ids,
        rng.integers(0, 4, n).tolist(),
        (t0 + np.sort(rng.integers(0, 60, n)) * S).tolist(),
        (20 + rng.normal(size=n)).tolist(),
    )


LEARNING = TwinTypeSpec.model_validate(
    {
        **SPEC.model_dump(exclude={"learners"}),
        "learners": [{"name": "drift", "kind": "page_hinkley"}, {"name": "hst", "kind": "half_space_trees"}],
    }
)


def test_snapshot_restores_identical_outputs_and_is_compact() -> None:
    bank = TwinBank(LEARNING)
    rng = np.random.default_rng(1)
    for k in range(5):
        bank.update(_noisy_batch(rng, 50, 1000, k * 60 * S), now_ns=k * 60 * S)
    snap = bank.snapshot()
    blob = pickle.dumps(snap)
    restored = TwinBank.restore(LEARNING, pickle.loads(blob))
    for k in range(5, 8):
        more = _noisy_batch(rng, 60, 500, k * 60 * S)  # some new twins too
        a, b = (
            bank.update(more, now_ns=k * 60 * S).estimates,
            restored.update(more, now_ns=k * 60 * S).estimates,
        )
        for name in ("estimate", "std", "innovation", "nis", "anomaly_score", "flags"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        for name in a.extra:
            np.testing.assert_array_equal(a.extra[name], b.extra[name])


def test_a_snapshot_of_views_pickles_to_the_same_state_as_a_copy() -> None:
    bank = TwinBank(LEARNING)
    rng = np.random.default_rng(2)
    for k in range(3):
        bank.update(_noisy_batch(rng, 40, 600, k * 60 * S), now_ns=k * 60 * S)
    views = pickle.loads(pickle.dumps(bank.snapshot(copy=False)))  # as SnapshotLog writes a base
    copies = bank.snapshot()

    def same(a: object, b: object) -> bool:
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, np.ndarray):
            return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
        return bool(a == b)

    assert same(views, copies)
    assert np.shares_memory(bank.snapshot(copy=False)["last_value"], bank.last_value)  # no second copy
    assert not np.shares_memory(copies["last_value"], bank.last_value)


def test_restore_refuses_another_layout_and_accepts_tuning() -> None:
    bank = TwinBank(SPEC)
    bank.update(_batch(["a"], [0], [0], [1.0]), now_ns=0)
    snap = bank.snapshot()
    fewer = TwinTypeSpec.model_validate(
        {**SPEC.model_dump(), "channels": dict(list(SPEC.model_dump()["channels"].items())[1:]), "models": []}
    )
    with pytest.raises(SnapshotMismatchError, match="another spec"):
        TwinBank.restore(fewer, snap)
    other_model = SPEC.model_dump()
    other_model["channels"]["temperature"]["filter"] = {"model": "local_linear_trend"}
    with pytest.raises(SnapshotMismatchError, match="version 1"):
        TwinBank.restore(TwinTypeSpec.model_validate(other_model), snap)
    tuned = SPEC.model_dump()
    tuned["channels"]["temperature"]["filter"]["process_noise"] = 0.5
    tuned["channels"]["temperature"]["quality"]["max"] = 1000.0
    tuned["kalman"]["gate"] = 20.0
    assert len(TwinBank.restore(TwinTypeSpec.model_validate(tuned), snap)) == 1


def test_readings_beyond_the_lateness_bound_are_dead_letters() -> None:
    bank = TwinBank(SPEC)
    bank.update(_batch(["a"], [0], [3600 * S], [1.0]), now_ns=0)
    out = bank.update(_batch(["a", "a"], [0, 0], [3000 * S, 1000 * S], [1.1, 1.2]), now_ns=0)
    assert len(out.estimates) == 1
    assert out.estimates.flags[0] & fl.LATE
    (letter,) = out.rejected
    assert "2600 s older than twin 'a'" in letter.reason
    assert bank.counters["rejected_readings"] == 1


def test_out_of_range_readings_are_flagged_and_barely_move_the_estimate() -> None:
    spec = TwinTypeSpec.model_validate(
        {"name": "p", "channels": {"t": {"quality": {"min": 0, "max": 100}}}, "kalman": {"gate": None}}
    )
    bank = TwinBank(spec)
    values = [50.0] * 20 + [150.0]
    out = bank.update(_batch(["a"] * 21, [0] * 21, [i * S for i in range(21)], values, spec), now_ns=20 * S)
    est = out.estimates
    assert est.flags[-1] & fl.OUT_OF_RANGE
    assert not est.flags[:-1].any() & fl.OUT_OF_RANGE
    assert abs(est.estimate[-1] - 50.0) < 1.0  # trusted 100x less than a normal reading


def test_a_spike_scores_high_and_noise_low() -> None:
    spec = TwinTypeSpec.model_validate({"name": "p", "channels": {"t": {}}})
    bank = TwinBank(spec)
    rng = np.random.default_rng(3)
    values = (20 + 0.5 * rng.normal(size=300)).tolist()
    values[250] = 40.0
    out = bank.update(_batch(["a"] * 300, [0] * 300, [i * S for i in range(300)], values, spec), now_ns=0)
    score = out.estimates.anomaly_score
    assert score[250] >= spec.anomaly.level
    assert out.estimates.flags[250] & fl.ANOMALY
    assert np.nanmedian(score[50:250]) < 0.2


def test_stale_sensors_are_reported_once_by_the_timer() -> None:
    spec = TwinTypeSpec.model_validate({"name": "p", "channels": {"t": {}, "u": {}}})
    bank = TwinBank(spec)
    times = [i * S for i in range(10)]
    bank.update(_batch(["a"] * 10 + ["b"] * 10, [0] * 20, times + times, [1.0] * 20, spec), now_ns=9 * S)
    bank.update(
        _batch(["b"] * 10, [0] * 10, [(10 + i) * S for i in range(10)], [1.0] * 10, spec), now_ns=19 * S
    )
    assert bank.due(12 * S) is None
    due = bank.next_due_ns()
    assert due is not None
    assert 13 * S <= due <= 16 * S
    stale = bank.due(20 * S)
    assert stale is not None
    assert stale.twin_id.tolist() == ["a"]
    assert stale.channel.tolist() == ["t"]
    assert stale.flags.tolist() == [fl.STALE]
    assert math.isnan(stale.value[0])
    later = bank.due(30 * S)  # 'b' went quiet at 19 s; 'a' is not reported again
    assert later is not None
    assert later.twin_id.tolist() == ["b"]
    assert bank.due(40 * S) is None


def test_idle_twins_are_evicted_and_the_others_keep_their_state() -> None:
    spec = TwinTypeSpec.model_validate(
        {"name": "p", "channels": {"t": {}}, "ttl": "1h", "learners": [{"name": "drift", "kind": "adwin"}]}
    )
    bank, control = TwinBank(spec), TwinBank(spec)
    first = _batch(["old", "keep"] * 5, [0] * 10, [i * S for i in range(10)], [1.0, 2.0] * 5, spec)
    for b in (bank, control):
        b.update(first, now_ns=10 * S)
    later = _batch(["keep"] * 3, [0] * 3, [(3600 + i) * S for i in range(3)], [2.5, 2.4, 2.6], spec)
    bank.update(later, now_ns=3600 * S)
    control.update(later, now_ns=3600 * S)
    assert bank.evict_idle(3700 * S) == ["old"]
    assert bank.twin_ids == ["keep"]
    assert bank.counters["evicted_twins"] == 1
    probe = _batch(["keep"], [0], [3700 * S], [2.7], spec)
    a, b = bank.update(probe, now_ns=3700 * S).estimates, control.update(probe, now_ns=3700 * S).estimates
    assert a.estimate[0] == b.estimate[0]
    assert a.nis[0] == b.nis[0]
    assert a.extra == {} or a.extra["drift"][0] == b.extra["drift"][0]
    back = bank.update(_batch(["old"], [0], [3800 * S], [9.0], spec), now_ns=3800 * S).estimates
    assert math.isnan(back.innovation[0])  # starts afresh
