"""Many rounds in one micro-batch against the same readings applied one round per batch: bit for bit.

The rounds path (:func:`dte_stream.twins.stages.by_rounds`) takes a batch's inputs in round-major
order once and works out what depends only on a cell's previous reading (change, time since)
for the whole batch; the kernel applies a group's rounds in one call. A batch whose rounds each
go in a batch of their own runs none of that across rounds, so both must give the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from twin_bank_checks import bank_state, output_columns

from dte_stream.readings import ReadingBatch
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins import bank as bank_module
from dte_stream.twins import flags as fl
from dte_stream.twins.bank import TwinBank
from dte_stream.twins.routing import TypedBatch
from dte_stream.twins.stages import Stages, by_rounds, rounds_of

S = 10**9

SPECS: dict[str, dict[str, Any]] = {
    "three random walks, the contextual scorer": {
        "channels": {
            "temperature": {"filter": {"process_noise": 0.001, "measurement_noise": 0.25}},
            "pressure": {"filter": {"process_noise": 0.00001, "measurement_noise": 0.0025}},
            "flow": {"filter": {"process_noise": 0.05, "measurement_noise": 4.0}},
        },
        "kalman": {"horizons": [60], "lateness": "10m"},
        "anomaly": {"context_bins": 4, "context_after": 0, "quiet": 5},
    },
    "shared and per-channel models, adaptive noise, states": {
        "channels": {
            "c0": {"filter": {"model": "local_linear_trend", "level_noise": 0.01, "measurement_noise": 1.0}},
            "c1": {"quality": {"min": -20.0, "max": 20.0, "spike_sigma": 3.0, "stuck_after": 2}},
            "c2": {},
            "c3": {"filter": {"model": "daily_seasonal", "measurement_noise": 0.3}},
        },
        "models": [
            {
                "name": "room",
                "preset": {"model": "thermal", "tau": 300, "measurement_noise": [0.5]},
                "observes": ["c1"],
                "controls": ["c2"],
            }
        ],
        "kalman": {"adaptive_noise": True, "gate": 6.0, "reset_after": 2, "lateness": "10m"},
        "anomaly": {"method": "innovation"},
        "outputs": {"states": True},
    },
}


def _readings(spec: TwinTypeSpec, start_s: int, stop_s: int, rng: np.random.Generator) -> TypedBatch:
    """Every cell of 6 twins once a second (jittered, shuffled), levels that wander, rare spikes."""
    width = len(spec.channel_names())
    twin, ch, sec = np.meshgrid(np.arange(6), np.arange(width), np.arange(start_s, stop_s), indexing="ij")
    twin, ch, sec = twin.ravel(), ch.ravel(), sec.ravel()
    time_ns = sec * S + (twin * 37_000_000 + ch * 5_000_000) + rng.integers(0, 1_000_000, twin.shape[0])
    value = 10.0 + np.sin(sec / 50.0 + twin) * 5.0 + rng.normal(0.0, 0.5, twin.shape[0])
    value[rng.random(twin.shape[0]) < 0.01] += 40.0
    value[rng.random(twin.shape[0]) < 0.002] = np.nan
    shuffle = rng.permutation(twin.shape[0])
    names = np.array(spec.channel_names())
    rb = ReadingBatch.from_columns(
        [f"w{t}" for t in twin[shuffle]], names[ch[shuffle]], time_ns[shuffle], value[shuffle]
    )
    return TypedBatch(spec.name, rb, ch[shuffle].astype(np.intp))


def _by_key(bank_outputs: list[Any]) -> dict[str, np.ndarray]:
    """Every output column, rows sorted by (twin, channel, time): one row per applied reading."""
    out = output_columns(bank_outputs)
    order = np.lexsort((out["time_ns"], out["channel"], out["twin_id"]))
    return {name: col[order] for name, col in out.items()}


def _state(bank: TwinBank) -> dict[str, np.ndarray]:
    return bank_state(bank, len(bank), ("last_value", "last_time", "last_estimate", "last_flags"))


@pytest.mark.parametrize("name", list(SPECS))
def test_many_rounds_in_one_batch_equal_one_round_per_batch(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes: dict[int, list[np.ndarray]] = {}  # per bank: (row, channel, time, delta, dt) of each reading

    def noted(bank: TwinBank, rows: Any, ch: Any, time_ns: Any, *args: Any) -> Stages:
        st = by_rounds(bank, rows, ch, time_ns, *args)
        changes.setdefault(id(bank), []).append(np.stack([rows, ch, time_ns, st.delta, st.dt]))
        return st

    monkeypatch.setattr(bank_module, "by_rounds", noted)
    spec = TwinTypeSpec.model_validate({"name": "t", **SPECS[name]})
    rng = np.random.default_rng(9)
    # Two batches of 230 readings per cell (the scorers' likelihood judges past 200), the second
    # starting 40 s before the first ends: its first readings of each cell are late (applied).
    batches = [_readings(spec, 0, 230, rng), _readings(spec, 190, 420, rng)]
    whole, one_by_one = TwinBank(spec, capacity=2), TwinBank(spec, capacity=2)
    whole.way = one_by_one.way = "rounds"
    out_whole, out_rounds = [], []
    for batch in batches:
        now = int(batch.readings.time_ns.max())
        update = whole.update(batch, now)
        assert not update.rejected
        out_whole.append(update.estimates)
        cells = one_by_one.rows_for(batch.readings.twin_id) * one_by_one.width + batch.channel_index
        rounds = rounds_of(cells, batch.readings.time_ns)
        assert len(rounds) == 230
        for idx in rounds:
            part = TypedBatch(batch.twin_type, batch.readings.take(idx), batch.channel_index[idx])
            out_rounds.append(one_by_one.update(part, now).estimates)
    a, b = _by_key(out_whole), _by_key(out_rounds)
    assert a.keys() == b.keys()
    for column in a:
        assert np.array_equal(a[column], b[column], equal_nan=a[column].dtype.kind == "f"), column
    assert (a["flags"] & fl.LATE).any()  # late readings (older than their cell's latest) were applied
    # The change and time since each cell's previous reading (the learners' inputs), worked out
    # for the whole batch at once, against one round at a time.
    ca, cb = (np.concatenate(changes[id(bank)], axis=1) for bank in (whole, one_by_one))
    ca, cb = (c[:, np.lexsort((c[2], c[1], c[0]))] for c in (ca, cb))
    assert np.array_equal(ca, cb, equal_nan=True)
    assert np.isfinite(ca[3]).sum() > 0.9 * ca.shape[1]
    sa, sb = _state(whole), _state(one_by_one)
    for key in sa:
        assert np.array_equal(sa[key], sb[key], equal_nan=sa[key].dtype.kind == "f"), key
