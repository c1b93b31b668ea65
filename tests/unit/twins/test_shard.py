"""The twin shard on its own: the input-progress clock of live runs, snapshots, changed twins,
the gauge of alerts by state."""

from __future__ import annotations

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from dte_stream.metrics import METRICS, exposition
from dte_stream.readings import ReadingBatch
from dte_stream.spec import parse_spec
from dte_stream.twins import flags as fl
from dte_stream.twins.routing import Router
from dte_stream.twins.shard import InputClock, TwinShard

S = 10**9
DAY_AGO = 1_767_225_600 * S  # the backlog's first reading
WALL = DAY_AGO + 86_400 * S  # the wall clock while it is caught up

SPEC = parse_spec(
    {
        "name": "backlog",
        "sources": [{"kind": "simulator", "twin_type": "gauge"}],
        "twin_types": [{"name": "gauge", "channels": {"level": {"quality": {"stale_after": 3}}}}],
        "sinks": [{"kind": "local_store"}],
        "engine": {"shards": 1},  # clock: wall (the default)
    }
)


class FakeWall:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _batch(twins: list[str], t: int) -> ReadingBatch:
    return ReadingBatch.from_columns(twins, ["level"] * len(twins), [t] * len(twins), [1.0] * len(twins))


def test_a_backlog_is_judged_by_its_own_time_and_silence_by_the_wall_clock() -> None:
    wall = FakeWall(WALL)
    clock = InputClock(wall)
    router = Router(SPEC)
    shard = TwinShard(SPEC, "shard-0000", clock=clock, wall=wall)
    stale_rows = 0
    for k in range(120):  # two minutes of backlog, one reading per twin per second, fed fast
        readings = _batch(["a", "b"] if k < 60 else ["a"], DAY_AGO + k * S)  # b stops after 60 s
        clock.advance(int(readings.time_ns.max()))
        [(_, part)] = router.route(readings, "test", "gauge").routed
        shard.on_batch([part])
        wall.now += S // 100  # the backlog goes by at 100 readings per wall second
        update = shard.on_timer()
        stale_rows += sum(len(b) for b in update.estimates)
        for b in update.estimates:
            assert (b.flag_column() & fl.STALE).all()
            assert b.twin_id.tolist() == ["b"]  # only the sensor that stopped, by the backlog's time
            assert int(b.time_ns[0]) < DAY_AGO + 120 * S
    assert stale_rows == 1
    assert shard.now() < WALL  # the twin clock is the backlog's, not the wall clock
    # The input falls silent: the clock runs on with the wall clock and "a" goes stale too.
    wall.now += 10 * S
    update = shard.on_timer()
    assert [b.twin_id.tolist() for b in update.estimates] == [["a"]]


def test_a_shard_fed_by_another_process_judges_a_backlog_by_its_own_batches() -> None:
    """In a cluster the process that reads the source may not hold the shard: this process's
    input clock never moves, and the backlog's time still comes from the shard's batches."""
    wall = FakeWall(WALL)
    shard = TwinShard(SPEC, "shard-0000", clock=InputClock(wall), wall=wall)  # a clock nobody advances
    router = Router(SPEC)
    for k in range(30):
        [(_, part)] = router.route(_batch(["a", "b"], DAY_AGO + k * S), "test", "gauge").routed
        shard.on_batch([part])
        wall.now += S // 100
        assert shard.on_timer().estimates == []  # not stale by the wall clock, a day later
    assert shard.now() == DAY_AGO + 29 * S + S // 100
    wall.now += 10 * S  # silence: the wall clock runs on from the last batch
    update = shard.on_timer()
    assert sorted(t for b in update.estimates for t in b.twin_id.tolist()) == ["a", "b"]


def test_the_end_of_a_backfill_flags_the_sensors_its_own_times_make_stale() -> None:
    """No timer ran while the backlog was read (it went fast); at its end, the last look is by the
    backlog's final time, not the wall clock a day later nor the time the reading took."""
    wall = FakeWall(WALL)
    clock = InputClock(wall)
    router = Router(SPEC)
    shard = TwinShard(SPEC, "shard-0000", clock=clock, wall=wall)
    for k in range(60):  # "b" stops after 10 s of a minute: stale by the backlog's own time
        readings = _batch(["a", "b"] if k < 10 else ["a"], DAY_AGO + k * S)
        clock.advance(int(readings.time_ns.max()))
        [(_, part)] = router.route(readings, "test", "gauge").routed
        shard.on_batch([part])
    wall.now += 30 * S  # the end of the topic is noticed late: no silence, the input ended
    update = shard.on_eof()
    assert [b.twin_id.tolist() for b in update.estimates] == [["b"]]
    assert all((b.flag_column() & fl.STALE).all() for b in update.estimates)
    assert shard.on_eof().estimates == []  # each stale episode once


def test_changed_twins_are_reported_once_and_snapshots_restore() -> None:
    router = Router(SPEC)
    shard = TwinShard(SPEC, "shard-0000", wall=FakeWall(WALL))
    [(_, part)] = router.route(_batch(["a", "b", "c"], WALL - S), "test", "gauge").routed
    shard.on_batch([part])
    [states] = shard.take_changed()
    assert sorted(states.twin_id.tolist()) == ["a", "b", "c"]
    assert np.isfinite(states.estimate).all()
    assert states.filters["level"].mean.shape == (3, 1)
    assert shard.take_changed() == []
    [(_, part)] = router.route(_batch(["b"], WALL), "test", "gauge").routed
    shard.on_batch([part])
    [states] = shard.take_changed()
    assert states.twin_id.tolist() == ["b"]
    again = TwinShard.restore(SPEC, "shard-0000", shard.snapshot(), wall=FakeWall(WALL))
    assert again.twins() == 3
    assert again.banks["gauge"].twin_ids == shard.banks["gauge"].twin_ids


ALERTING = parse_spec(
    {
        "name": "alerting",
        "sources": [{"kind": "simulator", "twin_type": "gauge"}],
        "twin_types": [
            {
                "name": "gauge",
                "channels": {"level": {}},
                "alerts": {
                    "rules": [
                        {"kind": "threshold", "name": "hot", "channels": ["level"], "above": 90},
                        {
                            "kind": "threshold",
                            "name": "warm",
                            "channels": ["level"],
                            "above": 80,
                            "holds_for": 600,
                        },
                    ]
                },
            }
        ],
        "sinks": [{"kind": "local_store"}],
        "engine": {"shards": 1},
    }
)


class Acks:
    """Acknowledgements as ``dte-stream alerts ack`` records them, handed out once."""

    def __init__(self) -> None:
        self.waiting: list[dict[str, str]] = []

    def new_for(self, twin_type: str, reader: object = None) -> list[dict[str, str]]:
        out, self.waiting = self.waiting, []
        return out


def _alert_gauge(shard: str) -> dict[str, float]:
    """``dte_alerts_active`` of one shard as /metrics serves it, by state."""
    text = exposition(METRICS).decode()
    samples = [
        s for f in text_string_to_metric_families(text) if f.name == "dte_alerts_active" for s in f.samples
    ]
    return {
        s.labels["state"]: s.value
        for s in samples
        if s.labels["shard"] == shard and s.labels["twin_type"] == "gauge"
    }


def test_alerts_by_state_are_a_gauge_worked_out_from_the_engine_also_after_a_restore() -> None:
    key, wall, acks = "shard-alerts", FakeWall(WALL), Acks()
    router = Router(ALERTING)
    shard = TwinShard(ALERTING, key, wall=wall, acks=acks)

    def feed(values: dict[str, float]) -> None:
        readings = ReadingBatch.from_columns(
            list(values), ["level"] * len(values), [wall.now] * len(values), list(values.values())
        )
        shard.on_batch([b for _, b in router.route(readings, "test", "gauge").routed])

    feed({"a": 95.0, "b": 95.0, "c": 50.0})  # a, b: hot fires, warm waits its 10 minutes
    assert _alert_gauge(key) == {"pending": 2, "firing": 2, "acknowledged": 0}
    acks.waiting = [{"alert_id": "a/hot", "by": "ops"}]
    wall.now += 2 * S
    feed({"c": 50.0})
    assert _alert_gauge(key) == {"pending": 2, "firing": 1, "acknowledged": 1}

    for state in ("pending", "firing", "acknowledged"):  # a restart: the process' metrics are empty
        METRICS.drop_gauge(f'alerts_active{{state="{state}"}}', f"gauge/{key}")
    assert _alert_gauge(key) == {}
    shard = TwinShard.restore(ALERTING, key, shard.snapshot(), wall=wall, acks=acks)
    assert _alert_gauge(key) == {"pending": 2, "firing": 1, "acknowledged": 1}

    wall.now += 700 * S  # warm's hold runs out on the timer: it fires for a and b
    shard.on_timer()
    assert _alert_gauge(key) == {"pending": 0, "firing": 3, "acknowledged": 1}
    feed({"a": 50.0, "b": 50.0})  # everything resolves
    assert _alert_gauge(key) == {"pending": 0, "firing": 0, "acknowledged": 0}
