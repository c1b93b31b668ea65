"""The hand-over of a reload to a running shard: the next readings are judged by the new spec, the
twins carry on as if nothing happened (compared with shards that never reloaded), and a refused
change leaves the shard as it was."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from dte_stream.readings import ReadingBatch
from dte_stream.reload import LiveSpec
from dte_stream.spec import DataflowSpec, parse_spec
from dte_stream.twins.routing import Router, TypedBatch
from dte_stream.twins.shard import TwinShard

S = 10**9
DOC: dict[str, Any] = {
    "name": "plant",
    "sources": [{"kind": "simulator", "twin_type": "pump"}],
    "twin_types": [
        {
            "name": "pump",
            "channels": {"temperature": {}, "pressure": {}},
            "alerts": {
                "rules": [{"kind": "threshold", "name": "hot", "channels": ["temperature"], "above": 90}]
            },
        }
    ],
    "sinks": [{"kind": "local_store"}],
    "engine": {"shards": 1, "clock": "event"},
}


def edited(**changes: Any) -> DataflowSpec:
    doc = copy.deepcopy(DOC)
    pump = doc["twin_types"][0]
    if "above" in changes:
        pump["alerts"]["rules"][0]["above"] = changes["above"]
    if "noise" in changes:
        pump["channels"]["temperature"] = {"filter": {"process_noise": changes["noise"]}}
    if "channel" in changes:
        pump["channels"][changes["channel"]] = {}
    doc["version"] = changes.get("version", 2)
    return parse_spec(doc)


def batches(spec: DataflowSpec, start: int, n: int) -> list[list[TypedBatch]]:
    """``n`` batches of readings of three pumps, temperature around 60, pressure around 3."""
    rng = np.random.default_rng(start)
    router = Router(spec)
    out = []
    for k in range(start, start + n):
        twins = ["p1", "p1", "p2", "p2", "p3", "p3"]
        channels = ["temperature", "pressure"] * 3
        values = [60 + rng.normal(), 3 + 0.1 * rng.normal()] * 3
        readings = ReadingBatch.from_columns(twins, channels, [k * S] * 6, values)
        out.append([b for _, b in router.route(readings, "test", "pump").routed])
    return out


def estimates(shard: TwinShard, feed: list[list[TypedBatch]]) -> tuple[np.ndarray, list[str]]:
    values, events = [], []
    for parts in feed:
        update = shard.on_batch(parts)
        values += [b.estimate for b in update.estimates]
        events += [f"{e.twin_id}:{e.state}" for e in update.alerts]
    return np.concatenate(values), events


def test_a_new_threshold_applies_to_the_next_readings_and_the_twins_carry_on() -> None:
    old = parse_spec(DOC)
    live = LiveSpec(old)
    reloaded = TwinShard(old, "shard-0000", live=live)
    steady = TwinShard(old, "shard-0000")  # never reloaded
    first, second = batches(old, 0, 20), batches(old, 20, 20)
    a1, events1 = estimates(reloaded, first)
    b1, _ = estimates(steady, first)
    assert events1 == []  # 60 is not above 90
    result = live.offer(edited(above=50))
    assert result.applied
    assert result.changed == ["twin_types.pump.alerts", "version"]
    a2, events2 = estimates(reloaded, second)
    b2, _ = estimates(steady, second)
    assert sorted(events2) == ["p1:firing", "p2:firing", "p3:firing"]  # the new level, at once
    np.testing.assert_array_equal(np.concatenate([a1, a2]), np.concatenate([b1, b2]))  # nothing reset
    assert reloaded.spec.version == 2
    assert reloaded.snapshot()["spec"] == {"name": "plant", "version": 2}


def test_new_noise_settings_continue_from_the_state_as_a_restart_would() -> None:
    old = parse_spec(DOC)
    live = LiveSpec(old)
    reloaded = TwinShard(old, "shard-0000", live=live)
    restarted = TwinShard(old, "shard-0000")
    first, second = batches(old, 0, 15), batches(old, 15, 15)
    estimates(reloaded, first)
    estimates(restarted, first)
    new = edited(noise=2.0)
    assert live.offer(new).applied
    restarted = TwinShard.restore(new, "shard-0000", restarted.snapshot())
    a, _ = estimates(reloaded, second)
    b, _ = estimates(restarted, second)
    np.testing.assert_array_equal(a, b)
    assert reloaded.banks["pump"].twin_ids == ["p1", "p2", "p3"]
    # the higher process noise shows: the estimates follow the readings more closely than before
    steady = TwinShard(old, "shard-0000")
    estimates(steady, first)
    c, _ = estimates(steady, second)
    assert not np.array_equal(a, c)


def test_a_refused_change_leaves_the_shard_on_the_old_spec() -> None:
    old = parse_spec(DOC)
    live = LiveSpec(old)
    shard = TwinShard(old, "shard-0000", live=live)
    estimates(shard, batches(old, 0, 5))
    result = live.offer(edited(above=50, channel="flow"))
    assert not result.applied
    assert result.problems == [
        "twin type 'pump': channels added: flow (the saved state has no place for them)"
    ]
    assert result.line(1).startswith("spec reload refused, still running version 1: twin type 'pump'")
    _, events = estimates(shard, batches(old, 5, 5))
    assert events == []
    assert shard.spec is old
    assert live.generation == 0


def test_a_firing_alert_resolves_under_a_raised_threshold_and_keeps_its_identity() -> None:
    low = edited(above=50, version=1)
    live = LiveSpec(low)
    shard = TwinShard(low, "shard-0000", live=live)
    _, events = estimates(shard, batches(low, 0, 5))
    assert sorted(events) == ["p1:firing", "p2:firing", "p3:firing"]
    assert live.offer(edited(above=90)).applied
    update = shard.on_batch(batches(low, 5, 1)[0])
    assert sorted(f"{e.alert_id}:{e.state}" for e in update.alerts) == [
        "p1/hot:resolved",
        "p2/hot:resolved",
        "p3/hot:resolved",
    ]
