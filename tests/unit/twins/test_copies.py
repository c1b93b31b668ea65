"""Copies of a reading (same twin, channel and event time) are applied once: the first copy wins.

The rest are dead letters naming twin, channel and time, counted in
``dte_duplicate_readings_total``; a copy with another value is a conflicting value. A run fed
copies gives every field of every output and the final twin state of the run fed each reading
once, on the rounds path and the per-reading path alike.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.metrics import METRICS
from dte_stream.readings import ReadingBatch
from dte_stream.replay import replay_frame
from dte_stream.spec import parse_spec
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins.bank import BankUpdate, TwinBank
from dte_stream.twins.routing import Router, TypedBatch
from dte_stream.twins.shard import TwinShard

S = 10**9
T0 = 1_767_225_600 * S

SPEC = TwinTypeSpec.model_validate(
    {
        "name": "pump",
        "channels": {
            "temp": {"quality": {"spike_sigma": 3.0, "stuck_after": 3}},
            "flow": {"filter": {"model": "local_linear_trend", "measurement_noise": 0.5}},
            "level": {"filter": {"model": "damped_oscillator", "period": 120, "measurement_noise": 0.2}},
        },
        "kalman": {"horizons": [60], "lateness": "10m", "adaptive_noise": True},
        "anomaly": {"method": "contextual", "context_bins": 4, "context_after": 0, "quiet": 3},
        "learners": [{"name": "drift", "kind": "page_hinkley"}],
        "outputs": {"states": True},
    }
)

Item = tuple[int, int, int, float]  # twin, channel, time (ns), value


def _batch(items: list[Item]) -> TypedBatch:
    names = np.array(SPEC.channel_names())
    channels = [c for _, c, _, _ in items]
    rb = ReadingBatch.from_columns(
        [f"p{t}" for t, *_ in items], names[channels], [t for *_, t, _ in items], [v for *_, v in items]
    )
    return TypedBatch(SPEC.name, rb, np.asarray(channels, dtype=np.intp))


def _equal(a: Any, b: Any, what: str) -> None:
    """Exactly equal (NaN equals NaN), arrays and nested snapshots alike."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _equal(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, what
        assert a.shape == b.shape, what
        same = np.array_equal(a, b, equal_nan=True) if a.dtype.kind in "fc" else np.array_equal(a, b)
        assert same, what
    else:
        assert a == b, what


def _same_outputs(a: BankUpdate, b: BankUpdate) -> None:
    ea, eb = a.estimates, b.estimates
    for name in ea.__slots__:
        _equal(getattr(ea, name), getattr(eb, name), name)


def _state(bank: TwinBank) -> dict[str, Any]:
    snap = bank.snapshot()
    snap.pop("counters", None)
    return snap


def _readings(seed: int, twins: int = 4, seconds: int = 40) -> list[Item]:
    rng = np.random.default_rng(seed)
    items = [
        (t, c, T0 + k * S + c * 1000, float(np.round(rng.normal(20 + c, 1), 3)))
        for k in range(seconds)
        for t in range(twins)
        for c in range(3)
    ]
    return items


def test_a_copy_within_a_batch_is_not_applied_and_is_a_dead_letter() -> None:
    once, twice = TwinBank(SPEC), TwinBank(SPEC)
    items = _readings(1)
    a = once.update(_batch(items), now_ns=T0)
    doubled = [x for item in items for x in (item, item)]
    b = twice.update(_batch(doubled), now_ns=T0)
    _same_outputs(a, b)
    _equal(_state(once), _state(twice), "state")
    assert b.copies == len(items)
    assert b.conflicts == 0
    assert a.copies == 0
    assert len(b.rejected) == len(items)
    first = b.rejected[0]
    assert first.source == "twin_bank:pump"
    assert first.reason == (
        "duplicate reading: twin 'p0' channel 'temp' at 2026-01-01T00:00:00.000000000Z "
        "was already applied; the first copy wins"
    )
    assert b'"twin_id":"p0"' in first.raw
    assert twice.counters["duplicate_readings"] == len(items)


@pytest.mark.parametrize("way", ["rounds", "reading"])
def test_a_copy_of_the_latest_reading_in_a_later_batch_is_not_applied(way: str) -> None:
    once, twice = TwinBank(SPEC), TwinBank(SPEC)
    once.way = twice.way = way  # type: ignore[assignment]
    items = _readings(2)
    half = len(items) // 2
    first, second = items[:half], items[half:]
    latest = first[-6:]  # the latest reading of each of the last two twins' cells
    _same_outputs(once.update(_batch(first), T0), twice.update(_batch(first), T0))
    a = once.update(_batch(second), T0)
    b = twice.update(_batch(latest + second + latest), T0)
    _same_outputs(a, b)
    _equal(_state(once), _state(twice), "state")
    assert b.copies == 12
    assert b.conflicts == 0


def test_copies_are_recognised_across_a_snapshot_and_restore() -> None:
    bank = TwinBank(SPEC)
    items = _readings(3, seconds=10)
    bank.update(_batch(items), T0)
    again = TwinBank.restore(SPEC, pickle.loads(pickle.dumps(bank.snapshot())))
    latest = items[-12:]  # every cell's latest reading
    out = again.update(_batch(latest), T0)
    assert len(out.estimates) == 0
    assert out.copies == 12
    assert all(d.reason.startswith("duplicate reading: twin 'p") for d in out.rejected)
    _equal(_state(bank), _state(again), "state")


def test_a_copy_with_another_value_is_a_conflicting_value_and_the_first_wins() -> None:
    bank, reference = TwinBank(SPEC), TwinBank(SPEC)
    t = T0 + 5 * S
    out = bank.update(_batch([(0, 0, t, 21.0), (0, 0, t, 22.5), (0, 0, t, 21.0)]), T0)
    ref = reference.update(_batch([(0, 0, t, 21.0)]), T0)
    _same_outputs(ref, out)
    assert out.copies == 2
    assert out.conflicts == 1
    assert [d.reason for d in out.rejected] == [
        "conflicting value: twin 'p0' channel 'temp' at 2026-01-01T00:00:05.000000000Z has 22.5, "
        "the reading applied at that time has 21.0; the first copy wins",
        "duplicate reading: twin 'p0' channel 'temp' at 2026-01-01T00:00:05.000000000Z "
        "was already applied; the first copy wins",
    ]
    later = bank.update(_batch([(0, 0, t, 23.0), (0, 0, t + S, 21.5)]), T0)  # across batches
    assert later.conflicts == 1
    assert later.estimates.value.tolist() == [21.5]
    assert "has 23.0, the reading applied at that time has 21.0" in later.rejected[0].reason
    nan = bank.update(_batch([(1, 0, t, float("nan")), (1, 0, t, float("nan"))]), T0)
    assert nan.copies == 1
    assert nan.conflicts == 0
    assert bank.counters["conflicting_readings"] == 2


copy_plans = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6)), min_size=0, max_size=40)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 2**31),
    st.integers(1, 4),
    copy_plans,
    st.sampled_from(["auto", "rounds", "reading"]),
)
def test_a_run_with_copies_gives_every_output_and_the_state_of_the_run_without(
    seed: int, parts: int, plan: list[tuple[int, int]], way: str
) -> None:
    """Copies placed after their original in the same batch, or at the front of the next batch
    (copies of each cell's latest reading), change nothing but the dead letters."""
    rng = np.random.default_rng(seed)
    items = _readings(seed % 1000, twins=3, seconds=20)
    order = rng.permutation(len(items))  # out of order within the lateness bound, and ties
    items = [items[i] for i in order] if seed % 2 else items
    cuts = np.array_split(np.arange(len(items)), parts)
    batches = [[items[i] for i in cut.tolist()] for cut in cuts]
    noisy: list[list[Item]] = [list(b) for b in batches]
    for where, pick in plan:
        k = pick % len(batches)
        if where < 2 or k == 0:  # a copy later in the same batch
            item = batches[k][pick % len(batches[k])]
            at = noisy[k].index(item)  # the original (earlier insertions moved it)
            noisy[k].insert(at + 1 + (pick % (len(noisy[k]) - at)), item)
        else:  # a copy of a cell's latest reading so far, at the front of the next batch
            seen: dict[tuple[int, int], Item] = {}
            for item in (x for b in batches[:k] for x in b):
                cell = item[:2]
                if cell not in seen or item[2] > seen[cell][2]:
                    seen[cell] = item
            latest = list(seen.values())
            noisy[k].insert(0, latest[pick % len(latest)])
    clean, copied = TwinBank(SPEC, capacity=2), TwinBank(SPEC, capacity=2)
    clean.way = copied.way = way  # type: ignore[assignment]
    copies = 0
    for plain, extra in zip(batches, noisy, strict=True):
        now = max(t for *_, t, _ in plain)
        a = clean.update(_batch(plain), now)
        b = copied.update(_batch(extra), now)
        _same_outputs(a, b)
        copies += b.copies
    assert copies == len(plan)
    _equal(_state(clean), _state(copied), "state")


REPLAY = parse_spec(
    {
        "name": "copies",
        "sources": [{"kind": "simulator", "twin_type": "pump"}],
        "twin_types": [SPEC.model_dump(mode="json")],
        "sinks": [{"kind": "local_store"}],
        "engine": {"clock": "event", "shards": 2},
    }
)


def test_a_replay_of_every_reading_twice_equals_the_replay_of_each_once_and_counts_the_copies() -> None:
    items = _readings(4, twins=6, seconds=60)
    once = _batch(items).readings
    twice = ReadingBatch.concat([once, once]).take(
        np.argsort(np.tile(np.arange(len(once)), 2), kind="stable")
    )
    before = METRICS.get("duplicate_readings", kind="copy")
    a = replay_frame(REPLAY, once, "pump", batch_readings=300)
    b = replay_frame(REPLAY, twice, "pump", batch_readings=300)
    # Rows of equal event time come shard by shard within each batch: the doubled input cuts its
    # batches elsewhere, so compare in one order (every column, exactly).
    key = ["time_ns", "twin_id", "channel"]
    assert a.frame.sort(key).equals(b.frame.sort(key), null_equal=True)
    assert len(a.dead_letters) == 0
    assert len(b.dead_letters) == len(once)
    assert {d.reason.split(":")[0] for d in b.dead_letters} == {"duplicate reading"}
    assert METRICS.get("duplicate_readings", kind="copy") - before == len(once)


def test_a_shard_restored_from_its_snapshot_refuses_the_copies_it_applied() -> None:
    spec = REPLAY.model_copy(update={"engine": REPLAY.engine.model_copy(update={"shards": 1})})
    router = Router(spec)
    items = _readings(5, twins=5, seconds=4)
    [(key, part)] = router.route(_batch(items).readings, "test", "pump").routed
    shard = TwinShard(spec, key)
    shard.on_batch([part])
    again = TwinShard.restore(spec, key, pickle.loads(pickle.dumps(shard.snapshot())))
    [(_, latest)] = router.route(_batch(items[-15:]).readings, "test", "pump").routed  # each cell's latest
    update = again.on_batch([latest])
    assert update.readings() == 0
    assert len(update.rejected) == 15
    assert all(d.reason.startswith("duplicate reading: twin 'p") for d in update.rejected)
