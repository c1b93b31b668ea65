"""Alert lifecycle: hysteresis, holds, flapping, re-notification, deadman, acknowledgement, restore."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.alerts.rules import AlertEngine
from dte_stream.batches import AlertEvent, EstimateBatch
from dte_stream.spec.alerts import AlertingSpec

S = 10**9
CHANNELS = ["temperature", "flow"]


def batch(values: list[float] | np.ndarray, *, t0: float = 0.0, dt: float = 1.0, twin: str = "p1",
          channel: str = "temperature") -> EstimateBatch:  # fmt: skip
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    return EstimateBatch(
        "pump", np.array([twin] * n), np.array([channel] * n),
        np.round((t0 + dt * np.arange(n)) * S).astype(np.int64), v, np.array([""] * n), v.copy(),
        np.ones(n), np.zeros(n), np.zeros(n),
    )  # fmt: skip


def engine(rule: dict[str, Any], **settings_: Any) -> AlertEngine:
    spec = AlertingSpec.model_validate({"rules": [rule], **settings_})
    return AlertEngine("pump", CHANNELS, spec)


HOT = {"kind": "threshold", "name": "hot", "above": 90, "clear": 85}


def brief(events: list[AlertEvent]) -> list[tuple[str, int, bool, int]]:
    return [(e.state, e.time_ns // S, e.renotify, e.sequence) for e in events]


def test_noisy_signal_around_threshold_fires_once_and_resolves_once() -> None:
    rng = np.random.default_rng(7)
    signal = np.concatenate([np.full(50, 80.0), np.full(400, 90.0), np.full(50, 80.0)]) + rng.normal(
        0, 1.5, 500
    )
    crossings = int(np.sum((signal[1:] > 90) != (signal[:-1] > 90)))
    assert crossings > 100  # without hysteresis this would be a storm
    eng = engine(HOT)
    events = [e for i in range(0, 500, 37) for e in eng.update(batch(signal[i : i + 37], t0=i), now_ns=0)]
    assert [e.state for e in events] == ["firing", "resolved"]
    assert events[1].sequence == 2
    no_hysteresis = engine(
        {"kind": "threshold", "name": "hot", "above": 90}, flapping={"max_changes": 10_000}
    )
    assert len(no_hysteresis.update(batch(signal), now_ns=0)) > 100
    # ... and flapping suppression holds such a storm to a few events
    flap_limited = engine({"kind": "threshold", "name": "hot", "above": 90})
    assert len(flap_limited.update(batch(signal), now_ns=0)) == 4


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.sampled_from([80.0, 87.0, 92.0, math.nan]), min_size=1, max_size=60),
    cuts=st.lists(st.integers(1, 59), max_size=6),
    hold=st.sampled_from([0, 3]),
)
def test_events_do_not_depend_on_how_readings_are_batched(
    values: list[float], cuts: list[int], hold: int
) -> None:
    rule = {**HOT, "holds_for": hold}
    whole = engine(rule).update(batch(values), now_ns=0)
    eng = engine(rule)
    bounds = sorted({0, len(values), *[c for c in cuts if c < len(values)]})
    parts = [e for a, b in itertools.pairwise(bounds) for e in eng.update(batch(values[a:b], t0=a), 0)]
    assert brief(parts) == brief(whole)
    states = [e.state for e in whole]
    assert all(a != b for a, b in itertools.pairwise(states))  # alternate, never repeat
    assert [e.sequence for e in whole] == list(range(1, len(whole) + 1))


def test_holds_for_delays_firing_and_a_short_blip_never_fires() -> None:
    eng = engine({**HOT, "holds_for": "10s"})
    # a blip of 5 s over the level, then back under clear: nothing at all
    assert eng.update(batch([95, 95, 95, 95, 95, 95, 80]), now_ns=0) == []
    assert eng.alerts("all") == []
    # over from t=10; a reading at t=20 is the first one 10 s later: firing dated t=20
    events = eng.update(batch([95] * 12, t0=10), now_ns=0)
    assert brief(events) == [("firing", 20, False, 1)]
    assert events[0].starts_ns == 10 * S


def test_holds_for_expires_through_due_without_new_readings() -> None:
    eng = engine({**HOT, "holds_for": "1m"})
    assert eng.update(batch([95], t0=100), now_ns=100 * S) == []
    assert eng.alerts("all")[0]["state"] == "pending"
    assert eng.next_due_ns() == 160 * S
    assert eng.due(159 * S) == []
    assert brief(eng.due(161 * S)) == [("firing", 160, False, 1)]
    assert eng.alerts("firing")[0]["starts_ns"] == 100 * S


def test_flapping_alert_is_silenced_until_stable_then_sends_its_state_once() -> None:
    eng = engine({"kind": "threshold", "name": "hot", "above": 90},
                 flapping={"window": "60s", "max_changes": 3}, renotify_every=None)  # fmt: skip
    events = eng.update(batch([95, 80, 95, 80, 95, 80, 95, 80, 95], dt=2.0), now_ns=0)
    # changes at t=0 (fire), 2 (resolve), 4 (fire): the 4th change (t=6) makes it flap
    assert brief(events) == [("firing", 0, False, 1), ("resolved", 2, False, 2), ("firing", 4, False, 3)]
    assert eng.alerts("all")[0]["flapping"] is True
    assert eng.next_due_ns() == (16 + 60) * S  # a window after the last change
    assert eng.due(70 * S) == []  # not yet stable
    # stable for a window, still firing: the last state sent was firing, so nothing to send
    assert eng.due(77 * S) == []
    assert eng.alerts("all")[0]["flapping"] is False
    # flap again, ending firing after a resolution was sent: once stable, the firing is sent
    events = eng.update(batch([80, 95, 80, 95, 80], t0=100, dt=2.0), now_ns=0)
    assert brief(events) == [
        ("resolved", 100, False, 4),
        ("firing", 102, False, 5),
        ("resolved", 104, False, 6),
    ]
    events = eng.update(batch([95, 80, 95], t0=110, dt=2.0), now_ns=0)
    assert events == []  # the change at t=110 is the 4th within the window
    assert eng.due(170 * S) == []
    assert brief(eng.due(200 * S)) == [("firing", 200, False, 7)]


def test_renotify_every_interval_while_firing_and_not_after_acknowledgement() -> None:
    eng = engine(HOT, renotify_every="1h")
    eng.update(batch([95], t0=0), now_ns=0)
    assert eng.next_due_ns() == 3600 * S
    assert eng.due(3599 * S) == []
    assert brief(eng.due(3600 * S)) == [("firing", 3600, True, 2)]
    assert brief(eng.due(7300 * S)) == [("firing", 7300, True, 3)]
    assert eng.due(7400 * S) == []
    ack = eng.acknowledge("p1/hot", "alice", 7500 * S)
    assert ack is not None
    assert (ack.state, ack.acked_by, ack.time_ns, ack.sequence) == ("acknowledged", "alice", 7500 * S, 4)
    assert eng.acknowledge("p1/hot", "bob", 7600 * S) is None  # already taken
    assert eng.due(20_000 * S) == []  # acknowledged alerts are not re-notified
    row = eng.alerts("firing")[0]
    assert (row["acked_by"], row["acked_ns"]) == ("alice", 7500 * S)
    resolved = eng.update(batch([80], t0=20_000), now_ns=0)
    assert brief(resolved) == [("resolved", 20_000, False, 5)]
    # a new episode starts unacknowledged
    refired = eng.update(batch([95], t0=30_000), now_ns=0)
    assert refired[0].acked_by is None
    assert eng.alerts("firing")[0]["acked_by"] is None


def test_acknowledge_unknown_or_resolved_alert_returns_none() -> None:
    eng = engine(HOT)
    assert eng.acknowledge("p1/hot", "alice", 0) is None
    eng.update(batch([95, 80]), now_ns=0)
    assert eng.acknowledge("p1/hot", "alice", 5 * S) is None
    assert eng.acknowledge("nobody/none", "alice", 5 * S) is None


def test_silent_twin_deadman_fires_from_due_and_resolves_at_next_reading() -> None:
    eng = engine({"kind": "silent_twin", "name": "quiet", "after": "5m", "severity": "critical"})
    assert eng.next_due_ns() is None  # no twin seen yet
    eng.update(batch([1.0, 2.0], t0=0, twin="a"), now_ns=0)
    eng.update(batch([1.0], t0=100, twin="b", channel="flow"), now_ns=0)
    assert eng.next_due_ns() == 301 * S  # a's last reading at t=1
    assert eng.due(300 * S) == []
    events = eng.due(302 * S)
    assert [(e.twin_id, e.state, e.time_ns, e.message) for e in events] == [
        ("a", "firing", 301 * S, "a silent for 301 s")
    ]  # fmt: skip
    assert eng.due(330 * S) == []  # still silent: not sent again
    assert eng.next_due_ns() == 400 * S  # only b is still being watched
    events = eng.update(batch([3.0], t0=350, twin="a"), now_ns=0)
    assert [(e.twin_id, e.state, e.time_ns) for e in events] == [("a", "resolved", 350 * S)]
    # NaN rows (stale timers) are not readings
    eng.update(batch([math.nan], t0=390, twin="b", channel="flow"), now_ns=0)
    assert [(e.twin_id, e.state) for e in eng.due(401 * S)] == [("b", "firing")]


def test_snapshot_restore_mid_firing_neither_forgets_nor_repeats() -> None:
    spec = AlertingSpec.model_validate({"rules": [
        HOT,
        {"kind": "nis", "name": "surprise", "level": 9, "readings": 3},
        {"kind": "silent_twin", "name": "quiet", "after": 60},
        {"kind": "expression", "name": "both", "expression": "temperature > 50 and flow < 5"},
    ]})  # fmt: skip
    eng = AlertEngine("pump", CHANNELS, spec)
    first = eng.update(batch([95, 96]), now_ns=0)
    assert [e.rule for e in first] == ["hot"]
    eng.update(batch([1.0], t0=2, channel="flow"), now_ns=0)  # the expression fires too
    snap = json.loads(json.dumps(eng.snapshot()))  # checkpoints go through JSON
    again = AlertEngine.restore("pump", CHANNELS, spec, snap)
    # still over the level after the restart: nothing new
    assert again.update(batch([97, 98], t0=3), now_ns=0) == []
    assert sorted(a["rule"] for a in again.alerts("firing")) == ["both", "hot"]
    # and the resolution still comes, with the next sequence
    events = again.update(batch([40], t0=5), now_ns=0)
    assert sorted((e.rule, e.state, e.sequence) for e in events) == [
        ("both", "resolved", 2),
        ("hot", "resolved", 2),
    ]
    # the deadman survived the restart: twin p1 was last heard at t=5
    assert again.next_due_ns() == 65 * S


def test_restore_drops_state_of_removed_or_changed_rules() -> None:
    eng = engine(HOT)
    eng.update(batch([95]), now_ns=0)
    snap = eng.snapshot()
    changed = AlertingSpec.model_validate({"rules": [{"kind": "anomaly_score", "name": "hot", "level": 0.9}]})
    again = AlertEngine.restore("pump", CHANNELS, changed, snap)
    assert again.alerts("all") == []


def test_alert_table_and_its_filters() -> None:
    eng = engine({"kind": "threshold", "name": "hot", "above": 90})
    eng.update(batch([95], twin="a"), now_ns=0)
    eng.update(batch([95, 80], twin="b"), now_ns=0)
    assert [(a["twin_id"], a["state"]) for a in eng.alerts("all")] == [("a", "firing"), ("b", "resolved")]
    assert [a["alert_id"] for a in eng.alerts("firing")] == ["a/hot"]
    row = eng.alerts("resolved")[0]
    assert (row["alert_id"], row["starts_ns"], row["ends_ns"], row["sequence"]) == ("b/hot", 0, 1 * S, 2)
    assert row["message"] == "temperature 95 above 90"


def test_forgotten_twins_get_no_deadman_and_lose_resolved_alerts() -> None:
    from dte_stream.alerts.rules import AlertEngine
    from dte_stream.spec.alerts import AlertingSpec

    spec = AlertingSpec.model_validate(
        {
            "rules": [
                {"kind": "silent_twin", "name": "quiet", "after": 10},
                {"kind": "threshold", "name": "hot", "above": 90, "clear": 85},
            ]
        }
    )
    engine = AlertEngine("pump", ["t"], spec)

    def batch(twin: str, t: int, value: float) -> EstimateBatch:
        one = np.array([value])
        return EstimateBatch(
            "pump", np.array([twin]), np.array(["t"]), np.array([t * S]), one, np.array([""]),
            one, one, one, one,
        )  # fmt: skip

    engine.update(batch("a", 0, 95.0), now_ns=0)
    engine.update(batch("a", 1, 80.0), now_ns=S)  # fired and resolved
    engine.update(batch("b", 1, 80.0), now_ns=S)
    engine.forget(["a"])
    events = engine.due(60 * S)
    assert [(e.twin_id, e.rule, e.state) for e in events] == [("b", "quiet", "firing")]
    assert [a["twin_id"] for a in engine.alerts("all")] == ["b"]
