"""The twin bank against the per-reading reference, rounds, growth and snapshots."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.readings import ReadingBatch
from dte_stream.spec.model import TwinTypeSpec
from dte_stream.twins.bank import TwinBank, rounds_of
from dte_stream.twins.batches import TypedBatch
from dte_stream.twins.reference import PerReadingFilter

SPEC = TwinTypeSpec(
    name="pump",
    channels={
        "temperature": {"filter": {"process_noise": 0.01, "measurement_noise": 0.5}},
        "pressure": {"filter": {"process_noise": 0.0001, "measurement_noise": 0.01}},
        "flow": {"filter": {"process_noise": 2.0, "measurement_noise": 9.0}},
    },
)


def _batch(twins: list[str], channels: list[int], times: list[int], values: list[float]) -> TypedBatch:
    names = np.array(SPEC.channel_names())[channels]
    rb = ReadingBatch.from_columns(twins, names, times, values)
    return TypedBatch("pump", rb, np.asarray(channels, dtype=np.intp))


readings = st.lists(
    st.tuples(
        st.integers(0, 7),  # twin
        st.integers(0, 2),  # channel
        st.integers(0, 3_600 * 10**9),  # time: gaps, duplicates and out-of-order all occur
        st.floats(-1e4, 1e4, allow_nan=False),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(readings, min_size=1, max_size=5))
def test_bank_matches_per_reading_reference(
    batches: list[list[tuple[int, int, int, float]]],
) -> None:
    bank = TwinBank(SPEC, capacity=2)  # small capacity: growth happens during the test
    ref = PerReadingFilter(SPEC)
    for items in batches:
        twins = [f"t{t}" for t, _, _, _ in items]
        out = bank.update(
            _batch(
                twins,
                [c for _, c, _, _ in items],
                [t for _, _, t, _ in items],
                [v for *_, v in items],
            )
        )
        # The reference applies the readings of each cell in time order, as the bank does.
        order = sorted(range(len(items)), key=lambda i: (twins[i], items[i][1], items[i][2], i))
        for i in order:
            _, c, t, v = items[i]
            est, std, innov, nis = ref.update(twins[i], c, t, v)
            for got, want in (
                (out.estimate[i], est),
                (out.std[i], std),
                (out.innovation[i], innov),
                (out.nis[i], nis),
            ):
                if math.isnan(want):
                    assert math.isnan(got)
                else:
                    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


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


def test_unknown_twins_are_added_and_rows_are_stable() -> None:
    bank = TwinBank(SPEC, capacity=1)
    bank.update(_batch(["a", "b"], [0, 0], [0, 0], [1.0, 2.0]))
    bank.update(_batch(["c", "a"], [1, 1], [0, 0], [3.0, 4.0]))
    assert bank.twin_ids == ["a", "b", "c"]
    assert bank.row_of == {"a": 0, "b": 1, "c": 2}
    assert bank.state.x[0, 0] == 1.0
    assert bank.state.x[0, 1] == 4.0


def test_snapshot_restores_identical_state_and_is_compact() -> None:
    bank = TwinBank(SPEC)
    rng = np.random.default_rng(1)
    twins = [f"pump-{i}" for i in rng.integers(0, 500, 3000)]
    bank.update(
        _batch(
            twins,
            rng.integers(0, 3, 3000).tolist(),
            (np.arange(3000) * 10**8).tolist(),
            rng.normal(size=3000).tolist(),
        )
    )
    snap = bank.snapshot()
    blob = pickle.dumps(snap)
    assert len(blob) < 500 * 3 * 8 * 3 + 500 * 40 + 2000  # arrays plus ids, nothing per-object
    restored = TwinBank.restore(SPEC, pickle.loads(blob))
    more = _batch(["pump-1", "pump-2"], [0, 2], [10**12, 10**12], [0.5, 0.7])
    a, b = bank.update(more), restored.update(more)
    np.testing.assert_array_equal(a.estimate, b.estimate)
    np.testing.assert_array_equal(a.std, b.std)


def test_restore_refuses_other_channels() -> None:
    bank = TwinBank(SPEC)
    bank.update(_batch(["a"], [0], [0], [1.0]))
    other = TwinTypeSpec(name="pump", channels={"temperature": {}})
    with pytest.raises(ValueError, match="channels"):
        TwinBank.restore(other, bank.snapshot())


def test_first_reading_initialises_and_late_reading_is_counted() -> None:
    bank = TwinBank(SPEC)
    out = bank.update(_batch(["a"], [0], [10**9], [20.0]))
    assert out.estimate[0] == 20.0
    assert math.isnan(out.innovation[0])
    bank.update(_batch(["a"], [0], [5], [21.0]))
    assert bank.late_readings == 1
