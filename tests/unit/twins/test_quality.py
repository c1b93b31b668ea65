"""Data-quality flags on constructed series, the stale timer, snapshots, growth and vectorisation."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dte_stream.spec.quality import QualitySpec
from dte_stream.twins.flags import CLOCK_SKEW, OUT_OF_RANGE, SPIKE, STUCK
from dte_stream.twins.quality import QualityBank, QualityOutput, StaleCells

S = 10**9


def _one(
    bank: QualityBank, t_ns: int, value: float, *, row: int = 0, ch: int = 0, now_ns: int | None = None
) -> int:
    """Feed one reading to one cell; return its flags."""
    out = bank.update(
        np.array([row]),
        np.array([ch]),
        np.array([t_ns]),
        np.array([value]),
        t_ns if now_ns is None else now_ns,
    )
    return int(out.flags[0])


def _series(bank: QualityBank, values: list[float] | np.ndarray, *, step_s: float = 1.0) -> list[int]:
    """Feed ``values`` one per ``step_s`` to cell (0, 0), the engine clock at each reading's time."""
    return [_one(bank, round(i * step_s * S), float(v)) for i, v in enumerate(values)]


def _hits(flags: list[int], bit: int) -> list[int]:
    return [i for i, f in enumerate(flags) if f & bit]


# -- the spec -----------------------------------------------------------------------------------


def test_spec_defaults_and_durations() -> None:
    q = QualitySpec()
    assert (q.min, q.max, q.stale_after, q.stale_min, q.stuck_after) == (None, None, 5.0, None, 30)
    assert (q.spike_sigma, q.max_clock_skew, q.distrust, q.stuck_tolerance) == (8.0, 300.0, 100.0, 0.0)
    assert QualitySpec(stale_min="2m", max_clock_skew="250ms").model_dump(
        include={"stale_min", "max_clock_skew"}
    ) == {
        "stale_min": 120.0,
        "max_clock_skew": 0.25,
    }


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"min": 5, "max": 1}, "min (5.0) must be below max (1.0)"),
        ({"min": 1, "max": 1}, "min (1.0) must be below max (1.0)"),
        ({"stale_after": 1}, "greater than 1"),
        ({"stuck_after": -1}, "greater than or equal to 0"),
        ({"distrust": 0.5}, "greater than or equal to 1"),
        ({"min": float("nan")}, "finite"),
        ({"thresholds": 3}, "unknown field 'thresholds'"),
    ],
)
def test_spec_refuses(fields: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        QualitySpec.model_validate(fields)


# -- one flag at a time -------------------------------------------------------------------------


def test_out_of_range_limits_inclusive_and_non_finite() -> None:
    bank = QualityBank([QualitySpec(min=0.0, max=10.0)])
    flags = _series(bank, [0.0, 10.0, 5.0, -0.1, 10.1, math.nan, math.inf, -math.inf, 5.0])
    assert _hits(flags, OUT_OF_RANGE) == [3, 4, 5, 6, 7]
    # Without limits only non-finite values are out of range.
    flags = _series(QualityBank([QualitySpec()]), [1e300, -1e300, math.nan, 3.0])
    assert _hits(flags, OUT_OF_RANGE) == [2]


def test_clock_skew() -> None:
    bank = QualityBank([QualitySpec(max_clock_skew=10.0), QualitySpec(max_clock_skew=None)])
    now = 1_000 * S
    out = bank.update(
        np.array([0, 1, 2, 3]),
        np.array([0, 0, 0, 1]),
        np.array([now + 10 * S, now + 10 * S + 1, now - 3_600 * S, now + 10**6 * S]),
        np.array([1.0, 1.0, 1.0, 1.0]),
        now,
    )
    assert (out.flags & CLOCK_SKEW).astype(bool).tolist() == [False, True, False, False]


def test_stuck_after_n_unchanged_readings_and_cleared_by_a_change() -> None:
    bank = QualityBank([QualitySpec(stuck_after=3)])
    flags = _series(bank, [1.0, 2.0, 5.0, 5.0, 5.0, 5.0, 5.0, 6.0, 6.0])
    # 5.0 at 2 starts the flat run; the 3rd reading without a change (index 5) is the first flagged.
    assert _hits(flags, STUCK) == [5, 6]
    assert all(f == STUCK for f in flags[5:7])


def test_stuck_tolerance_and_disabled() -> None:
    flags = _series(
        QualityBank([QualitySpec(stuck_after=2, stuck_tolerance=0.1)]), [5.0, 5.05, 4.95, 5.2, 5.3]
    )
    assert _hits(flags, STUCK) == [2]  # 5.05 and 4.95 are within 0.1 of 5.0; 5.2 starts a new run
    flags = _series(QualityBank([QualitySpec(stuck_after=0)]), [7.0] * 100)
    assert _hits(flags, STUCK) == []


def _noise(n: int, seed: int = 1) -> np.ndarray:
    return 20.0 + np.random.default_rng(seed).normal(0.0, 1.0, n)


def test_spike_on_one_jump_only() -> None:
    values = _noise(400)
    values[300] += 40.0
    flags = _series(QualityBank([QualitySpec()]), values)
    assert _hits(flags, SPIKE) == [300]  # the return to normal at 301 is not a spike


def test_no_spike_on_noise_or_a_steady_ramp() -> None:
    for seed in range(5):
        assert _hits(_series(QualityBank([QualitySpec()]), _noise(1_000, seed)), SPIKE) == []
    ramp = 0.25 * np.arange(500)
    assert _hits(_series(QualityBank([QualitySpec()]), ramp), SPIKE) == []
    ramp[400] += 10.0  # 40 usual steps
    assert _hits(_series(QualityBank([QualitySpec()]), ramp), SPIKE) == [400]
    # A quantised sensor that rarely changes, by one quantum: changes are its usual size, not spikes.
    quantised = np.repeat(np.arange(40) * 0.1, 20)
    assert _hits(_series(QualityBank([QualitySpec()]), quantised), SPIKE) == []


def test_level_shift_flags_only_its_first_reading() -> None:
    values = _noise(300)
    values[200:] += 50.0
    flags = _series(QualityBank([QualitySpec()]), values)
    assert _hits(flags, SPIKE) == [200]


def test_spike_disabled_and_warm_up() -> None:
    values = _noise(100)
    values[80] += 100.0
    assert _hits(_series(QualityBank([QualitySpec(spike_sigma=0)]), values), SPIKE) == []
    # Fewer than 5 changes seen: no judgement yet.
    assert _hits(_series(QualityBank([QualitySpec()]), [1.0, 1.1, 1.0, 1.1, 500.0]), SPIKE) == []


def test_r_scale_is_the_channel_distrust_on_suspect_readings() -> None:
    bank = QualityBank([QualitySpec(min=0, max=10, distrust=50.0), QualitySpec(stuck_after=1, distrust=7.0)])
    out = bank.update(
        np.array([0, 1, 0]), np.array([0, 0, 1]), np.array([0, 0, 0]), np.array([11.0, 5.0, 3.0]), 0
    )
    assert out.r_scale.tolist() == [50.0, 1.0, 1.0]
    out = bank.update(np.array([0, 0]), np.array([1, 0]), np.array([S, S]), np.array([3.0, 4.0]), S)
    assert out.flags.tolist() == [STUCK, 0]
    assert out.r_scale.tolist() == [7.0, 1.0]
    assert out.flags.dtype == np.uint16


# -- the stale timer ----------------------------------------------------------------------------


def test_stale_via_due_reported_once_and_cleared_by_a_reading() -> None:
    bank = QualityBank([QualitySpec(stale_after=5.0)])
    for t in range(5):  # readings at 0..4 s: usual interval 1 s
        _one(bank, t * S, float(t))
    assert bank.next_due_ns() == 9 * S
    reported: list[StaleCells] = []
    for now in range(4, 30):  # nothing arrives; the clock advances
        stale = bank.due(now * S)
        if len(stale):
            reported.append(stale)
            assert now == 9
    assert len(reported) == 1
    (stale,) = reported
    assert stale.rows.tolist() == [0]
    assert stale.ch.tolist() == [0]
    assert stale.last_ns.tolist() == [4 * S]
    assert stale.interval_ns.tolist() == [S]
    assert bank.next_due_ns() is None  # the only cell is already stale
    # A reading ends the episode; the next silence is a new episode, reported again.
    assert _one(bank, 30 * S, 5.0) == 0
    assert bank.due(31 * S).rows.size == 0
    due = bank.next_due_ns()
    assert due is not None
    assert due > 35 * S  # the outage gap nudged the interval up, clipped at 4 x
    assert len(bank.due(due - 1)) == 0
    assert len(bank.due(due)) == 1


def test_stale_needs_three_readings_and_respects_stale_min() -> None:
    bank = QualityBank([QualitySpec(), QualitySpec(stale_min=60.0)], capacity=2)
    for t in range(2):
        _one(bank, t * S, 1.0, row=0)
    assert bank.next_due_ns() is None
    assert len(bank.due(10**6 * S)) == 0
    for t in range(3):
        _one(bank, t * S, 1.0, row=1, ch=1)
    assert bank.next_due_ns() == 62 * S  # the floor, not 5 x 1 s
    assert len(bank.due(61 * S)) == 0
    assert bank.due(62 * S).ch.tolist() == [1]


def test_late_and_duplicate_readings_leave_the_interval_alone() -> None:
    bank = QualityBank([QualitySpec()])
    for t in (0, 10, 20, 30):
        _one(bank, t * S, 1.0)
    before = bank.snapshot(1)
    _one(bank, 15 * S, 2.0, now_ns=31 * S)  # late: negative gap
    _one(bank, 30 * S, 3.0, now_ns=31 * S)  # duplicate time: zero gap
    after = bank.snapshot(1)
    for name in ("interval_ns", "gaps", "last_ns"):
        np.testing.assert_array_equal(after[name], before[name])
    assert bank.next_due_ns() == 80 * S


def test_a_skewed_clock_does_not_postpone_staleness() -> None:
    bank = QualityBank([QualitySpec(max_clock_skew=60.0)])
    for t in range(5):
        _one(bank, t * S, 1.0)
    assert _one(bank, 10**6 * S, 1.5, now_ns=5 * S) == CLOCK_SKEW
    assert bank.next_due_ns() == 10 * S  # counted at the engine clock (5 s), interval unchanged


# -- hostile values -----------------------------------------------------------------------------


def test_non_finite_values_do_not_poison_the_statistics() -> None:
    """Policy: NaN/inf readings are flagged out_of_range and skipped by the value statistics."""
    values = _noise(200)
    values[150] += 40.0
    clean = QualityBank([QualitySpec(stuck_after=3)])
    dirty = QualityBank([QualitySpec(stuck_after=3)])
    clean_flags, dirty_flags = [], []
    for i, v in enumerate(values):
        clean_flags.append(_one(clean, 2 * i * S, float(v)))
        dirty_flags.append(_one(dirty, 2 * i * S, float(v)))
        if i % 7 == 3:
            bad = (math.nan, math.inf, -math.inf)[i % 3]
            assert _one(dirty, (2 * i + 1) * S, bad) == OUT_OF_RANGE
    assert dirty_flags == clean_flags
    assert _hits(clean_flags, SPIKE) == [150]
    c, d = clean.snapshot(1), dirty.snapshot(1)
    for name in ("ref", "prev", "change", "changes", "anchor", "run"):
        np.testing.assert_array_equal(d[name], c[name])
    assert np.isfinite(d["change"]).all()


def test_update_refuses_bad_shapes_and_cells() -> None:
    bank = QualityBank([QualitySpec()], capacity=4)
    one = np.array([0])
    with pytest.raises(ValueError, match="differ in length"):
        bank.update(one, one, np.array([0, 1]), np.array([1.0]), 0)
    with pytest.raises(IndexError, match="grow"):
        bank.update(np.array([4]), one, one, np.array([1.0]), 0)
    with pytest.raises(IndexError):
        bank.update(np.array([-1]), one, one, np.array([1.0]), 0)
    with pytest.raises(IndexError):
        bank.update(one, np.array([1]), one, np.array([1.0]), 0)
    empty = bank.update(
        np.array([], dtype=np.intp),
        np.array([], dtype=np.intp),
        np.array([], dtype=np.int64),
        np.array([]),
        0,
    )
    assert empty.flags.shape == (0,)
    with pytest.raises(ValueError, match="at least one channel"):
        QualityBank([])


# -- state: snapshot, growth, compaction --------------------------------------------------------

SPECS = [QualitySpec(min=-50, max=50, stuck_after=3), QualitySpec(spike_sigma=5.0, max_clock_skew=5.0)]


def _random_round(rng: np.random.Generator, rows: int, t_s: int) -> tuple[np.ndarray, ...]:
    r = np.repeat(np.arange(rows), 2)
    c = np.tile(np.arange(2), rows)
    keep = rng.random(r.size) < 0.8
    r, c = r[keep], c[keep]
    t = (t_s * S + rng.integers(-S // 2, S // 2, r.size)).astype(np.int64)
    v = np.round(rng.normal(0, 3, r.size), 1)
    v[rng.random(r.size) < 0.05] = 90.0
    return r.astype(np.intp), c.astype(np.intp), t, v


def _drive(banks: list[QualityBank], rounds: range, rows: int, seed: int) -> list[list[tuple[object, ...]]]:
    """Feed every bank the same random rounds (with silences); return each bank's outputs."""
    rng = np.random.default_rng(seed)
    results: list[list[tuple[object, ...]]] = [[] for _ in banks]
    for k in rounds:
        r, c, t, v = _random_round(rng, rows, 2 * k + (40 if k > rounds.start + 20 else 0))
        now = int(t.max()) if k % 3 else int(t.max()) - 10 * S
        for bank, out in zip(banks, results, strict=True):
            q = bank.update(r, c, t, v, now)
            d = bank.due(now + 7 * S)
            out.append(
                (q.flags.tolist(), q.r_scale.tolist(), d.rows.tolist(), d.ch.tolist(), d.last_ns.tolist())
            )
            out.append((bank.next_due_ns(),))
    return results


def test_snapshot_restore_round_trip_gives_identical_outputs() -> None:
    bank = QualityBank(SPECS, capacity=16)
    _drive([bank], range(0, 30), rows=10, seed=3)
    snap = pickle.loads(pickle.dumps(bank.snapshot(10)))
    assert snap["last_ns"].shape == (10, 2)
    restored = QualityBank.restore(SPECS, snap)
    a, b = _drive([bank, restored], range(30, 80), rows=10, seed=4)
    assert a == b
    assert any(f for rnd in a[::2] for f in rnd[0])  # flags were raised along the way
    assert any(rnd[2] for rnd in a[::2])  # and cells went stale


def test_restore_refuses_other_layouts() -> None:
    snap = QualityBank(SPECS).snapshot(0)
    with pytest.raises(ValueError, match="2 channels, the specs 1"):
        QualityBank.restore(SPECS[:1], snap)
    with pytest.raises(ValueError, match="format"):
        QualityBank.restore(SPECS, {**snap, "format": 99})


def test_grow_and_take_keep_cells() -> None:
    bank = QualityBank(SPECS, capacity=4)
    _drive([bank], range(0, 25), rows=4, seed=5)
    before = bank.snapshot(4)
    bank.grow(64)
    assert bank.capacity == 64
    grown = bank.snapshot(4)
    for name, a in before.items():
        np.testing.assert_array_equal(grown[name], a)
    with pytest.raises(ValueError, match="cannot grow"):
        bank.grow(8)
    bank.take(np.array([3, 1]))
    assert bank.capacity == 64
    taken = bank.snapshot(3)
    for name in ("last_ns", "ref", "change", "run", "stale"):
        np.testing.assert_array_equal(taken[name][:2], before[name][[3, 1]])
    assert (taken["last_ns"][2] == np.iinfo(np.int64).min).all()  # the freed row is empty again
    with pytest.raises(IndexError):
        bank.take(np.array([64]))


# -- vectorisation does not mix cells -----------------------------------------------------------

cell_series = st.lists(
    st.tuples(
        st.integers(-3 * S, 20 * S),  # gap to the previous reading: late and duplicate readings occur
        st.one_of(
            st.sampled_from([0.0, 1.0, 1.0, 1.0, 100.0, math.nan, math.inf]),
            st.floats(-20, 20, allow_nan=False),
        ),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(cell_series, min_size=1, max_size=6),
    st.lists(st.integers(-10 * S, 10 * S), min_size=25, max_size=25),
)
def test_one_reading_per_call_equals_many_cells_per_call(
    series: list[list[tuple[int, float]]], clock_offsets: list[int]
) -> None:
    specs = [QualitySpec(min=-15, max=15, stuck_after=2, spike_sigma=3.0, max_clock_skew=2.0), QualitySpec()]
    cells = [(i // 2, i % 2) for i in range(len(series))]
    times = [np.cumsum([g for g, _ in s]) + 10**12 for s in series]
    together = QualityBank(specs, capacity=4)
    alone = QualityBank(specs, capacity=4)
    for j in range(max(len(s) for s in series)):
        live = [i for i, s in enumerate(series) if j < len(s)]
        r = np.array([cells[i][0] for i in live], dtype=np.intp)
        c = np.array([cells[i][1] for i in live], dtype=np.intp)
        t = np.array([times[i][j] for i in live], dtype=np.int64)
        v = np.array([series[i][j][1] for i in live])
        now = int(t.max()) + clock_offsets[j]
        batched = together.update(r, c, t, v, now)
        single = [
            alone.update(r[k : k + 1], c[k : k + 1], t[k : k + 1], v[k : k + 1], now)
            for k in range(len(live))
        ]
        assert batched.flags.tolist() == [int(o.flags[0]) for o in single]
        assert batched.r_scale.tolist() == [float(o.r_scale[0]) for o in single]
        assert together.next_due_ns() == alone.next_due_ns()
        d1, d2 = together.due(now + 5 * S), alone.due(now + 5 * S)
        assert (d1.rows.tolist(), d1.ch.tolist(), d1.interval_ns.tolist()) == (
            d2.rows.tolist(),
            d2.ch.tolist(),
            d2.interval_ns.tolist(),
        )
    s1, s2 = together.snapshot(3), alone.snapshot(3)
    for name, a in s1.items():
        np.testing.assert_array_equal(s2[name], a)


def test_output_types() -> None:
    out = QualityBank([QualitySpec()]).update(np.array([0]), np.array([0]), np.array([0]), np.array([1.0]), 0)
    assert isinstance(out, QualityOutput)
    assert out.flags.dtype == np.uint16
    assert out.r_scale.dtype == np.float64
