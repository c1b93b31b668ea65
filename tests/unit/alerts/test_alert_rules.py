"""Alert rules: every kind fires and resolves on constructed batches; specs and expressions validate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from dte_stream.alerts.rules import AlertEngine
from dte_stream.batches import EstimateBatch
from dte_stream.errors import ConfigError
from dte_stream.spec.alerts import AlertingSpec, parse_expression
from dte_stream.twins.flags import SPIKE, STALE, STUCK

S = 10**9
CHANNELS = ["temperature", "flow", "pump"]


def rows_batch(rows: list[dict[str, Any]]) -> EstimateBatch:
    """A batch from dicts with twin, channel, t (seconds), value and optional other columns."""
    n = len(rows)

    def col(name: str, default: float) -> np.ndarray:
        return np.array([float(r.get(name, default)) for r in rows])

    values = col("value", math.nan)
    est = np.array([float(r.get("estimate", r.get("value", math.nan))) for r in rows])
    return EstimateBatch(
        "pump",
        np.array([r.get("twin", "p1") for r in rows], dtype=str),
        np.array([r.get("channel", "temperature") for r in rows], dtype=str),
        np.array([round(r["t"] * S) for r in rows], dtype=np.int64),
        values,
        np.array([""] * n),
        est,
        col("std", 1.0),
        np.zeros(n),
        col("nis", 0.0),
        np.array([int(r.get("flags", 0)) for r in rows], dtype=np.uint16),
        col("score", math.nan),
    )


def series(values: list[float], *, channel: str = "temperature", twin: str = "p1", t0: float = 0.0,
           key: str = "value", **extra: Any) -> EstimateBatch:  # fmt: skip
    return rows_batch(
        [{"twin": twin, "channel": channel, "t": t0 + i, key: v, **extra} for i, v in enumerate(values)]
    )


def engine(*rules: dict[str, Any], **settings: Any) -> AlertEngine:
    return AlertEngine("pump", CHANNELS, AlertingSpec.model_validate({"rules": list(rules), **settings}))


def states(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.twin_id, e.state) for e in events]


# -- each kind ------------------------------------------------------------------------------------


def test_threshold_above_fires_then_resolves_with_messages_and_values() -> None:
    eng = engine({"kind": "threshold", "name": "hot", "channels": ["temperature"], "above": 90, "clear": 85,
                  "severity": "critical", "labels": {"site": "north"},
                  "message": "{twin_id} {channel} {value:.1f} over {level:g} ({rule}, {severity})"},
                 )  # fmt: skip
    events = eng.update(series([80, 95.5, 96, 84]), now_ns=0)
    assert [(e.state, e.time_ns, e.value) for e in events] == [
        ("firing", 1 * S, 95.5),
        ("resolved", 3 * S, 84.0),
    ]
    fired, resolved = events
    assert fired.message == "p1 temperature 95.5 over 90 (hot, critical)"
    assert (fired.alert_id, fired.severity, fired.channel) == ("p1/hot", "critical", "temperature")
    assert fired.all_labels()["site"] == "north"
    assert (resolved.starts_ns, resolved.ends_ns) == (1 * S, 3 * S)
    assert resolved.message == fired.message
    assert [fired.sequence, resolved.sequence] == [1, 2]


def test_threshold_below_on_estimate_ignores_other_channels_and_raw_values() -> None:
    eng = engine({"kind": "threshold", "name": "low_flow", "channels": ["flow"], "signal": "estimate",
                  "below": 10, "clear": 12})  # fmt: skip
    batch = rows_batch([
        {"channel": "temperature", "t": 0, "value": 1.0},  # not watched
        {"channel": "flow", "t": 1, "value": 2.0, "estimate": 15.0},  # raw value low, estimate fine
        {"channel": "flow", "t": 2, "value": 8.0, "estimate": 9.0},
        {"channel": "flow", "t": 3, "value": 11.0, "estimate": 11.0},  # between below and clear: still firing
        {"channel": "flow", "t": 4, "value": 13.0, "estimate": 12.5},
    ])  # fmt: skip
    events = eng.update(batch, now_ns=0)
    assert [(e.state, e.time_ns, e.value) for e in events] == [
        ("firing", 2 * S, 9.0),
        ("resolved", 4 * S, 12.5),
    ]
    assert events[0].message == "flow estimate 9 below 10"


def test_rate_of_change_uses_estimate_slope_across_batches() -> None:
    eng = engine({"kind": "rate_of_change", "name": "surge", "channels": ["temperature"], "above": 2.0,
                  "direction": "up"})  # fmt: skip
    assert eng.update(series([10, 11, 12], key="estimate", value=0.0), now_ns=0) == []
    # the first row of the next batch is compared with the last of the previous one (12 at t=2)
    events = eng.update(series([17, 18, 18.5], key="estimate", value=0.0, t0=3.0), now_ns=0)
    assert [(e.state, e.value) for e in events] == [("firing", 5.0), ("resolved", 1.0)]
    # a fall is not an "up" change
    assert eng.update(series([0.0], key="estimate", value=0.0, t0=6.0), now_ns=0) == []


def test_anomaly_score_fires_at_level_and_resolves_under_clear() -> None:
    eng = engine({"kind": "anomaly_score", "name": "odd", "level": 0.9, "clear": 0.5})
    events = eng.update(series([0.1, 0.95, 0.7, math.nan, 0.6, 0.4], key="score", value=1.0), now_ns=0)
    assert [(e.state, e.time_ns) for e in events] == [("firing", 1 * S), ("resolved", 5 * S)]


def test_nis_needs_consecutive_readings_even_across_batches() -> None:
    eng = engine({"kind": "nis", "name": "surprise", "level": 9.0, "readings": 3})
    assert eng.update(series([10, 10, 1, 10, 10], key="nis", value=1.0), now_ns=0) == []  # runs of 2
    events = eng.update(series([12, 1, 1, 1], key="nis", value=1.0, t0=5), now_ns=0)
    # the run 10, 10 (end of batch 1) + 12 reaches 3 at t=5; three low readings resolve it at t=8
    assert [(e.state, e.time_ns) for e in events] == [("firing", 5 * S), ("resolved", 8 * S)]


def test_stale_rule_fires_on_stale_timer_rows_and_resolves_at_next_reading() -> None:
    eng = engine({"kind": "stale", "name": "sensor_stale"})
    batch = rows_batch([
        {"channel": "flow", "t": 0, "value": 3.0},
        {"channel": "flow", "t": 60, "value": math.nan, "flags": STALE},
        {"channel": "temperature", "t": 61, "value": 50.0},  # another channel does not resolve it
    ])  # fmt: skip
    events = eng.update(batch, now_ns=0)
    assert [(e.state, e.channel, e.message) for e in events] == [("firing", "flow", "flow is stale")]
    events = eng.update(rows_batch([{"channel": "flow", "t": 70, "value": 4.0}]), now_ns=0)
    assert [(e.state, e.time_ns) for e in events] == [("resolved", 70 * S)]


def test_quality_rule_matches_listed_flags_only() -> None:
    eng = engine({"kind": "quality", "name": "bad_data", "flags": ["stuck", "spike"]})
    batch = rows_batch([
        {"t": 0, "value": 1.0, "flags": STALE},  # not listed
        {"t": 1, "value": 1.0, "flags": STUCK},
        {"t": 2, "value": 1.0, "flags": SPIKE},
        {"t": 3, "value": 1.0},
    ])  # fmt: skip
    assert [(e.state, e.time_ns) for e in eng.update(batch, now_ns=0)] == [
        ("firing", 1 * S),
        ("resolved", 3 * S),
    ]


def test_multi_channel_rule_is_one_alert_per_twin_until_every_channel_clears() -> None:
    eng = engine({"kind": "threshold", "name": "high", "channels": ["temperature", "flow"], "above": 100})
    batch = rows_batch([
        {"channel": "temperature", "t": 0, "value": 120.0},
        {"channel": "flow", "t": 1, "value": 130.0},
        {"channel": "temperature", "t": 2, "value": 20.0},  # flow still high: still firing
        {"channel": "flow", "t": 3, "value": 30.0},
    ])  # fmt: skip
    events = eng.update(batch, now_ns=0)
    assert [(e.state, e.time_ns, e.channel) for e in events] == [
        ("firing", 0, "temperature"), ("resolved", 3 * S, "temperature")
    ]  # fmt: skip
    # the resolved event keeps the firing event's channel: receivers match them by labels
    assert events[1].value == 30.0


def test_twins_are_independent_in_one_unsorted_batch() -> None:
    eng = engine({"kind": "threshold", "name": "hot", "above": 90})
    batch = rows_batch([
        {"twin": "b", "t": 2, "value": 50.0},
        {"twin": "a", "t": 1, "value": 95.0},
        {"twin": "b", "t": 1, "value": 99.0},
        {"twin": "c", "t": 1, "value": 10.0},
    ])  # fmt: skip
    events = eng.update(batch, now_ns=0)
    assert sorted((e.twin_id, e.state, e.time_ns) for e in events) == [
        ("a", "firing", 1 * S), ("b", "firing", 1 * S), ("b", "resolved", 2 * S)
    ]  # fmt: skip


def test_expression_rule_over_latest_values_of_several_channels() -> None:
    text = "temperature.estimate > 90 and flow.value < 10 and abs(-pump) >= 1"
    eng = engine({"kind": "expression", "name": "dry_run", "expression": text})
    batch = rows_batch([
        {"channel": "temperature", "t": 0, "value": 95.0},  # flow and pump unknown yet: not evaluated
        {"channel": "flow", "t": 1, "value": 5.0},
        {"channel": "pump", "t": 2, "value": 1.0},  # now all true
        {"channel": "temperature", "t": 3, "value": 96.0, "estimate": 80.0},  # estimate drops: false
    ])  # fmt: skip
    events = eng.update(batch, now_ns=0)
    assert [(e.state, e.time_ns) for e in events] == [("firing", 2 * S), ("resolved", 3 * S)]
    assert events[0].message == "dry_run: temperature.estimate > 90 and flow.value < 10 and abs(-pump) >= 1"
    # latest values are carried to the next batch: only temperature arrives and makes it true again
    events = eng.update(rows_batch([{"channel": "temperature", "t": 4, "value": 91.0}]), now_ns=0)
    assert [(e.state, e.time_ns) for e in events] == [("firing", 4 * S)]


def test_expression_arithmetic_and_chained_comparison() -> None:
    eng = engine({"kind": "expression", "name": "gap", "expression": "0 < (temperature - flow) / 2 <= 5"})
    batch = rows_batch([
        {"channel": "flow", "t": 0, "value": 10.0},
        {"channel": "temperature", "t": 1, "value": 30.0},  # (30-10)/2 = 10: false
        {"channel": "temperature", "t": 2, "value": 18.0},  # 4: true
        {"channel": "flow", "t": 3, "value": 18.0},  # 0: false
    ])  # fmt: skip
    assert [(e.state, e.time_ns) for e in eng.update(batch, now_ns=0)] == [
        ("firing", 2 * S),
        ("resolved", 3 * S),
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("__import__('os')", "calling __import__() is not allowed"),
        ("temperature.__class__", "the attribute .__class__ is not allowed"),
        ("max(temperature, 1) > 2", "calling max() is not allowed"),
        ("temperature.value.real > 1", ".real is not allowed"),
        ("open('/etc/passwd')", "calling open() is not allowed"),
        ("temperature ** 2 > 1", "the operator Pow is not allowed"),
        ("'a' < temperature", "the constant 'a' is not allowed"),
        ("[t for t in flow]", "ListComp is not allowed"),
        ("temperature if flow else pump", "IfExp is not allowed"),
        ("_secret > 1", "not a channel name"),
        ("lambda: 1", "Lambda is not allowed"),
        ("temperature in flow", "the comparison In is not allowed"),
        ("abs > 1", "abs must be called"),
        ("(temperature > ", "not valid syntax"),
        ("flow.value.__class__.__mro__", "is not allowed"),
    ],
)
def test_refused_expressions_name_what_is_refused(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match="expression: ") as err:
        parse_expression(text)
    assert needle in str(err.value)
    with pytest.raises(ValidationError, match="expression"):
        AlertingSpec.model_validate({"rules": [{"kind": "expression", "name": "x", "expression": text}]})


# -- spec validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        (
            {"kind": "threshold", "name": "t", "above": 90, "clear": 95},
            "clear (95) must be at or below above",
        ),
        ({"kind": "threshold", "name": "t", "below": 10, "clear": 5}, "clear (5) must be at or above below"),
        ({"kind": "threshold", "name": "t", "above": 1, "below": 0}, "exactly one of above or below"),
        ({"kind": "threshold", "name": "t"}, "exactly one of above or below"),
        ({"kind": "threshold", "name": "t", "above": 1, "message": "{foo}"}, "unknown field {foo}"),
        ({"kind": "threshold", "name": "t", "above": 1, "message": "{}"}, "unknown field {}"),
        ({"kind": "threshold", "name": "t", "above": 1, "message": "{value.real}"}, "unknown field"),
        ({"kind": "threshold", "name": "t", "above": 1, "message": "{twin_id:.2f}"}, "message:"),
        ({"kind": "threshold", "name": "t", "above": 1, "message": "oops {"}, "message:"),
        ({"kind": "threshold", "name": "Bad-Name", "above": 1}, "name"),
        ({"kind": "threshold", "name": "t", "above": 1, "holds_for": "soon"}, "not a duration"),
        (
            {"kind": "anomaly_score", "name": "a", "level": 0.5, "clear": 0.8},
            "clear (0.8) must be at or below",
        ),
        ({"kind": "anomaly_score", "name": "a", "level": 1.5}, "less than or equal to 1"),
        ({"kind": "rate_of_change", "name": "r", "above": 1, "clear": 2}, "clear (2) must be at or below"),
        ({"kind": "nis", "name": "n", "level": 9, "readings": 0}, "greater than or equal to 1"),
        ({"kind": "quality", "name": "q", "flags": ["wobbly"]}, "unknown flag 'wobbly'"),
        ({"kind": "silent_twin", "name": "s"}, "after"),
        ({"kind": "expression", "name": "e", "expression": "a > 1", "channels": ["a"]}, "taken from the"),
        ({"kind": "siren", "name": "x"}, "kind"),
        ({"kind": "threshold", "name": "t", "above": 1, "colour": "red"}, "unknown field 'colour'"),
        ({"kind": "threshold", "name": "t", "above": 1, "severity": "fatal"}, "severity"),
    ],
)
def test_spec_validation_errors_are_clear(rule: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        AlertingSpec.model_validate({"rules": [rule]})
    assert needle in str(err.value)


def test_spec_defaults_durations_and_unique_names() -> None:
    spec = AlertingSpec.model_validate(
        {
            "rules": [{"kind": "silent_twin", "name": "quiet", "after": "5m", "holds_for": "30s"}],
            "flapping": {"window": "2m"},
        }
    )
    assert (spec.renotify_every, spec.flapping.window, spec.flapping.max_changes) == (4 * 3600, 120, 4)
    assert (spec.rules[0].holds_for, spec.rules[0].level()) == (30, 300)
    with pytest.raises(ValidationError, match="rule names must be unique: a"):
        AlertingSpec.model_validate(
            {"rules": [{"kind": "stale", "name": "a"}, {"kind": "stale", "name": "a"}]}
        )


def test_check_rules_and_engine_refuse_unknown_channels() -> None:
    spec = AlertingSpec.model_validate({"rules": [
        {"kind": "threshold", "name": "t", "above": 1, "channels": ["temprature"]},
        {"kind": "expression", "name": "e", "expression": "flow.std > 2 and presure > 1"},
    ]})  # fmt: skip
    assert spec.check_rules(CHANNELS) == [
        "rule 't': unknown channel 'temprature' (channels: temperature, flow, pump)",
        "rule 'e': unknown channel 'presure' (channels: temperature, flow, pump)",
    ]
    with pytest.raises(ConfigError, match="temprature"):
        AlertEngine("pump", CHANNELS, spec)


def test_default_messages_per_kind() -> None:
    eng = engine(
        {"kind": "threshold", "name": "hot", "above": 90},
        {"kind": "anomaly_score", "name": "odd", "level": 0.5},
    )
    events = eng.update(rows_batch([{"t": 0, "value": 97.25, "score": 0.75}]), now_ns=0)
    assert [e.message for e in events] == [
        "temperature 97.25 above 90",
        "temperature anomalous (score 0.75 >= 0.50)",
    ]
