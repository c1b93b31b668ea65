"""The twin shard on its own: the input-progress clock of live runs, snapshots, changed twins."""

from __future__ import annotations

import numpy as np

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
