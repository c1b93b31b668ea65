"""Router.route against a per-reading reference: types, shards, channels, aliases, dead letters."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.readings import ReadingBatch
from dte_stream.spec import parse_spec
from dte_stream.twins.routing import Router, shard_key, shard_of

MANY = {f"c{i}": {} for i in range(40)}  # more channel names than are compared one by one


def _spec(shards: int) -> Any:
    return parse_spec(
        {
            "name": "x",
            "sources": [{"kind": "simulator", "twin_type": "pump"}],
            "twin_types": [
                {"name": "pump", "match": "p-.*", "channels": {"t": {"aliases": ["temp"]}, "q": {}}},
                {"name": "valve", "match": "v-.*", "channels": {"pos": {}, "t": {}}},
                {"name": "big", "match": "b-.*", "channels": MANY},
            ],
            "sinks": [{"kind": "local_store"}],
            "engine": {"shards": shards},
        }
    )


def _reference(spec: Any, twins: list[str], channels: list[str], forced: str | None) -> tuple[Any, Any]:
    """Per reading: the (shard key, twin type) of each group with its rows and channel indexes,
    and the dead-letter reasons in the router's order."""
    types = [t.name for t in spec.twin_types]
    names = [
        {n: i for i, (c, ch) in enumerate(t.channels.items()) for n in [c, *ch.aliases]}
        for t in spec.twin_types
    ]
    shards = spec.engine.shards
    groups: dict[int, list[tuple[int, int]]] = {}
    unmatched: dict[str, int] = {}
    bad: dict[tuple[int, str], int] = {}
    for row, (twin, channel) in enumerate(zip(twins, channels, strict=True)):
        t = (
            types.index(forced)
            if forced
            else next((i for i, tt in enumerate(spec.twin_types) if re.fullmatch(tt.match, twin)), -1)
        )
        if t < 0:
            unmatched[twin] = unmatched.get(twin, 0) + 1
            continue
        c = names[t].get(channel, -1)
        if c < 0:
            bad[(t, channel)] = bad.get((t, channel), 0) + 1
            continue
        groups.setdefault(t * shards + shard_of(twin, shards), []).append((row, c))
    routed = [
        (shard_key(k % shards), types[k // shards], [r for r, _ in rows], [c for _, c in rows])
        for k, rows in sorted(groups.items())
    ]
    reasons = [
        f"twin id {tid!r} matches no twin type" for tid in sorted(unmatched) for _ in range(unmatched[tid])
    ]
    reasons += [
        f"twin type {types[t]!r} has no channel {c!r}" for (t, c) in sorted(bad) for _ in range(bad[(t, c)])
    ]
    return routed, reasons


@settings(max_examples=120, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["p-1", "p-2", "p-é", "v-1", "v-22", "b-1", "x-1", "q-9"]),
            st.sampled_from(["t", "temp", "q", "pos", "c3", "c39", "nope", "té"]),
        ),
        min_size=1,
        max_size=40,
    ),
    shards=st.integers(min_value=1, max_value=5),
    forced=st.sampled_from([None, None, "pump", "big"]),
)
def test_route_matches_a_per_reading_reference(
    rows: list[tuple[str, str]], shards: int, forced: str | None
) -> None:
    spec = _spec(shards)
    twins = [t for t, _ in rows]
    channels = [c for _, c in rows]
    batch = ReadingBatch.from_columns(
        twins, channels, list(range(len(rows))), [float(i) for i in range(len(rows))]
    )
    result = Router(spec).route(batch, "test", forced)
    expected, reasons = _reference(spec, twins, channels, forced)
    got = [
        (key, b.twin_type, b.readings.time_ns.tolist(), b.channel_index.tolist()) for key, b in result.routed
    ]
    assert got == expected
    assert [e.reason.split(" (")[0] for e in result.errors] == reasons
    assert all(e.source == "test" for e in result.errors)
    routed_rows = sum(len(b) for _, b in result.routed)
    assert routed_rows + len(result.errors) == len(rows)


def test_an_unknown_channel_is_a_dead_letter_naming_the_channels() -> None:
    batch = ReadingBatch.from_columns(["p-1", "p-1"], ["temp", "rpm"], [1, 2], [1.0, 2.0])
    result = Router(_spec(2)).route(batch, "test")
    assert [len(b) for _, b in result.routed] == [1]
    assert result.routed[0][1].channel_index.tolist() == [0]
    assert [e.reason for e in result.errors] == ["twin type 'pump' has no channel 'rpm' (channels: t, q)"]
    assert np.array_equal(result.routed[0][1].readings.time_ns, [1])
