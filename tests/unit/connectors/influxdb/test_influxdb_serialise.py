"""EstimateSerialiser: exact escaping (property tests), NaN handling, dead letters, unit modes.

Every written line is read back twice: by the codecs' own line-protocol decoder (twin id, unit,
values, time) and by an independent reader in influxdb_helpers (every tag and field). Nothing
may be invented: one line per written row, and every refused row is a dead letter.
"""

from __future__ import annotations

import math
import re

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influxdb_helpers import FIELD_NAMES, T0, estimates, parse_line, same_float

from dte_stream.batches import EstimateBatch
from dte_stream.codecs import DecodeContext, get_codec
from dte_stream.connectors.influxdb import EstimateSerialiser
from dte_stream.readings import id_problem

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Hostile text: the characters line protocol escapes, quotes, backslashes, unicode.
NASTY = " ,=\"'\\#{}*+/:;.é€漢😀\u00a0\u200b"
hostile_text = st.text(
    alphabet=st.sampled_from(NASTY) | st.characters(codec="utf-8"), min_size=1, max_size=24
)
AMBIGUOUS = re.compile(r"\\(?=[,= \\]|\Z)")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _decoded(text: str) -> list[tuple[str, str, int, float, str]]:
    payload = text.encode("utf-8")
    result = get_codec("line_protocol").decode(payload, DecodeContext("test", max_payload_bytes=len(payload)))
    assert not result.errors, [e.reason for e in result.errors]
    return [(r.twin_id, r.channel, r.time_ns, r.value, r.unit) for r in result.readings]


def _writable(text: str, escaping: str) -> bool:
    return bool(text) and not CONTROL.search(text) and (escaping == "spec" or not AMBIGUOUS.search(text))


@PROPERTY
@given(
    twin_ids=st.lists(hostile_text, min_size=1, max_size=8),
    channel=hostile_text,
    twin_type=hostile_text,
    unit=st.text(alphabet=st.sampled_from(NASTY + "abc"), max_size=6),
    escaping=st.sampled_from(["portable", "spec"]),
)
def test_hostile_ids_round_trip_or_become_dead_letters(
    twin_ids: list[str], channel: str, twin_type: str, unit: str, escaping: str
) -> None:
    n = len(twin_ids)
    batch = estimates(twin_ids, [channel] * n, twin_type=twin_type, units=[unit] * n)
    # numpy text arrays drop trailing NULs: expect what the batch holds
    twin_ids, channel, unit = batch.twin_id.tolist(), str(batch.channel[0]), str(batch.unit[0])
    out = EstimateSerialiser("dte readings,x", escaping=escaping).serialise(batch)  # type: ignore[arg-type]

    expected = [
        i
        for i, twin in enumerate(twin_ids)
        if all(_writable(t, escaping) for t in (twin, channel, twin_type))
        and (not unit or _writable(unit, escaping))
    ]
    assert len(out) == len(expected)
    assert len(out.dead_letters) == n - len(expected)
    assert out.skipped == 0
    lines = out.lines.to_list()
    for line, i in zip(lines, expected, strict=True):
        assert "\n" not in line
        measurement, tags, fields, time_ns = parse_line(line)
        assert measurement == "dte readings,x"
        want_tags = {"channel": channel, "twin_id": twin_ids[i], "twin_type": twin_type}
        if unit:
            want_tags["unit"] = unit
        assert tags == want_tags
        assert list(tags) == sorted(tags)  # sorted keys, as InfluxDB stores them
        assert fields == {**{name: float(getattr(batch, name)[i]) for name in FIELD_NAMES}, "flags": 0}
        assert time_ns == int(batch.time_ns[i])
    # the codecs' decoder agrees on the twin id and unit, when it accepts them as ids
    if (
        lines
        and all(id_problem("x", twin_ids[i]) is None for i in expected)
        and id_problem("u", unit) is None
    ):
        decoded = _decoded(out.text())
        assert [(d[0], d[1], d[4]) for d in decoded[:: len(FIELD_NAMES) + 1]] == [
            (twin_ids[i], "value", unit) for i in expected
        ]
    for letter in out.dead_letters:
        row = orjson.loads(letter.raw)
        assert row["twin_type"] == twin_type
        assert letter.source == "influxdb:influxdb"


@PROPERTY
@given(
    values=st.lists(
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True), min_size=5, max_size=5
    ),
    time_ns=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_fields_are_exact_and_non_finite_ones_are_left_out(values: list[float], time_ns: int) -> None:
    batch = estimates(
        ["pump-1"], start=time_ns, fields={n: [v] for n, v in zip(FIELD_NAMES, values, strict=True)}
    )
    out = EstimateSerialiser().serialise(batch)
    finite = {n: v for n, v in zip(FIELD_NAMES, values, strict=True) if math.isfinite(v)}
    if not finite:
        assert len(out) == 0
        assert out.skipped == 1
        assert out.dead_letters == []
        return
    (line,) = out.lines.to_list()
    _, _, fields, stamp = parse_line(line)
    assert stamp == time_ns
    assert list(fields) == [*finite, "flags"]
    assert fields["flags"] == 0
    for name, value in finite.items():
        assert same_float(float(fields[name]), value), (name, value, line)
    assert "nan" not in line.lower().split(" ", 1)[1]
    assert "inf" not in line.lower().split(" ", 1)[1]


def test_a_known_line() -> None:
    batch = estimates(["pump 1"], ["temp"], units=["°C"], fields={"nis": [math.nan]})
    (line,) = EstimateSerialiser().serialise(batch).lines.to_list()
    assert line == (
        f"dte_readings,channel=temp,twin_id=pump\\ 1,twin_type=pump,unit=°C "
        f"value=0.5,estimate=1.5,std=2.5,innovation=3.5,flags=0i {T0}"
    )


def test_nan_rows_are_skipped_and_counted_per_row() -> None:
    nan = math.nan
    batch = estimates(
        ["a", "b", "c"],
        fields={
            "value": [1.0, nan, nan],
            "estimate": [nan, nan, 2.0],
            "std": [nan, nan, nan],
            "innovation": [nan, math.inf, nan],
            "nis": [nan, -math.inf, nan],
        },
    )
    out = EstimateSerialiser().serialise(batch)
    assert out.skipped == 1
    parsed = [parse_line(line) for line in out.lines.to_list()]
    assert [(p[1]["twin_id"], p[2]) for p in parsed] == [
        ("a", {"value": 1.0, "flags": 0}),
        ("c", {"estimate": 2.0, "flags": 0}),
    ]


def test_flags_scores_and_extra_outputs_are_fields() -> None:
    """A flagged row without any finite value is still a point (a stale sensor); extras are fields."""
    batch = estimates(["a", "b"], fields={"value": [1.0, math.nan], "estimate": [2.0, math.nan]})
    nan = math.nan
    batch = EstimateBatch(
        *(getattr(batch, f) for f in ("twin_type", "twin_id", "channel", "time_ns", "value", "unit")),
        batch.estimate, np.full(2, nan), np.full(2, nan), np.full(2, nan),
        np.array([0, 1], dtype=np.uint16), np.array([0.25, nan]),
        {"forecast_1h": np.array([3.0, nan]), "hst score": np.array([nan, nan])},
    )  # fmt: skip
    out = EstimateSerialiser(unit="omit").serialise(batch)
    assert out.skipped == 0
    fields = [parse_line(line)[2] for line in out.lines.to_list()]
    assert fields == [
        {"value": 1.0, "estimate": 2.0, "anomaly_score": 0.25, "forecast_1h": 3.0, "flags": 0},
        {"flags": 1},
    ]


@pytest.mark.parametrize(
    ("twin_id", "reason"),
    [
        ("", "twin_id '' is empty"),
        ("a\nb", "control character"),
        ("a\rb", "control character"),
        ("tab\tbed", "control character"),
        ("lone\ud800", "not valid Unicode"),
        ("ends\\", "backslash"),
        ("a\\,b", "backslash"),
        ("a\\\\b", "backslash"),
    ],
)
def test_unwritable_ids_are_dead_letters_never_points(twin_id: str, reason: str) -> None:
    batch = estimates(["good-1", twin_id, "good-2"])
    out = EstimateSerialiser().serialise(batch)
    assert [parse_line(line)[1]["twin_id"] for line in out.lines.to_list()] == ["good-1", "good-2"]
    (letter,) = out.dead_letters
    assert reason in letter.reason
    row = orjson.loads(letter.raw)
    assert row["time_ns"] == T0 + 1_000_000
    assert row["value"] == 1.5
    assert row["twin_type"] == "pump"


def test_spec_escaping_writes_backslashes_the_reference_way() -> None:
    ids = ["ends\\", "a\\,b", "a\\\\b", "a\\b"]
    out = EstimateSerialiser(escaping="spec").serialise(estimates(ids))
    assert out.dead_letters == []
    lines = out.lines.to_list()
    assert [parse_line(line)[1]["twin_id"] for line in lines] == ids
    assert "twin_id=ends\\\\," in lines[0]
    assert "twin_id=a\\b," in lines[3]  # a backslash before an ordinary character stays single


def test_bad_twin_type_dead_letters_the_whole_batch() -> None:
    out = EstimateSerialiser().serialise(estimates(["a", "b"], twin_type=""))
    assert len(out) == 0
    assert [letter.reason.split(" ", 1)[0] for letter in out.dead_letters] == ["twin_type", "twin_type"]


def test_empty_channel_and_unit() -> None:
    out = EstimateSerialiser().serialise(estimates(["a", "b"], ["", "temp"], units=["", ""]))
    assert len(out) == 1
    assert "channel '' is empty" in out.dead_letters[0].reason
    assert ",unit=" not in out.lines[0]  # an empty unit is no tag, not an invalid one


@pytest.mark.parametrize("mode", ["tag", "field", "omit"])
def test_unit_modes(mode: str) -> None:
    batch = estimates(["a", "b"], units=['deg "C"', ""])
    lines = EstimateSerialiser(unit=mode).serialise(batch).lines.to_list()  # type: ignore[arg-type]
    (_, tags_a, fields_a, _), (_, tags_b, fields_b, _) = (parse_line(line) for line in lines)
    assert "unit" not in tags_b
    assert "unit" not in fields_b
    if mode == "tag":
        assert tags_a["unit"] == 'deg "C"'
        assert "unit" not in fields_a
    elif mode == "field":
        assert fields_a["unit"] == 'deg "C"'
        assert 'unit="deg \\"C\\""' in lines[0]
        assert "unit" not in tags_a
    else:
        assert "unit" not in tags_a
        assert "unit" not in fields_a


def test_same_batch_gives_the_same_lines() -> None:
    """Idempotence starts here: a reading always becomes the same series key and timestamp."""
    batch = estimates([f"pump {i}" for i in range(50)], units=["bar"] * 50)
    first = EstimateSerialiser().serialise(batch).lines.to_list()
    serialiser = EstimateSerialiser()
    serialiser.serialise(estimates(["other"]))
    assert serialiser.serialise(batch).lines.to_list() == first  # the escape cache changes nothing


def test_more_distinct_values_than_the_plain_cache_holds_give_the_same_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``_PLAIN_LIMIT`` distinct ids the id column is searched whole and no id is kept; the
    lines and dead letters equal a fresh serialiser's, and the channel column keeps its set."""
    from dte_stream.connectors.influxdb import serialise

    monkeypatch.setattr(serialise, "_PLAIN_LIMIT", 8)
    batches = [
        estimates([f"pump-{k}-{i}" for i in range(6)] + ["pump 1", "a,b", "ends\\"], ["temp"] * 9)
        for k in range(4)
    ]
    serialiser = EstimateSerialiser()
    for k, batch in enumerate(batches):
        out = serialiser.serialise(batch)
        fresh = EstimateSerialiser().serialise(batch)
        assert out.lines.to_list() == fresh.lines.to_list(), k
        assert [d.reason for d in out.dead_letters] == [d.reason for d in fresh.dead_letters], k
        assert [parse_line(line)[1]["twin_id"] for line in out.lines.to_list()][-2:] == ["pump 1", "a,b"]
        assert "twin_id=pump\\ 1," in out.lines[6]
        (letter,) = out.dead_letters
        assert "backslash" in letter.reason
    assert serialiser._plain["twin_id"] is None  # 6 ids a batch: past 8 by the second
    assert serialiser._plain["channel"] == {"temp"}


def test_empty_batch() -> None:
    out = EstimateSerialiser().serialise(estimates([]))
    assert len(out) == 0
    assert out.text() == ""


def test_large_batch_in_bulk() -> None:
    n = 20_000
    rng = np.random.default_rng(7)
    twins = [f"pump-{i % 997}" for i in range(n)]
    batch = estimates(
        twins, [("temp", "flow")[i % 2] for i in range(n)], fields={"value": rng.standard_normal(n)}
    )
    text = EstimateSerialiser().serialise(batch).text()
    lines = text.split("\n")
    assert len(lines) == n
    decoded = _decoded(text)
    assert len(decoded) == n * (len(FIELD_NAMES) + 1)  # + flags
    values = [d[3] for d in decoded if d[1] == "value"]
    assert values == batch.value.tolist()


def test_fields_and_tags_limit_what_is_written() -> None:
    """Only the chosen fields and tags; a row left with no chosen finite field is skipped."""
    batch = estimates(
        ["pump 1", "b"], units=["°C", "°C"], fields={"value": [0.5, math.nan], "std": [2.5, math.nan]}
    )
    serialiser = EstimateSerialiser(fields=["value", "std"], tags=["channel", "twin_id"])
    out = serialiser.serialise(batch)
    assert out.lines.to_list() == [f"dte_readings,channel=temp,twin_id=pump\\ 1 value=0.5,std=2.5 {T0}"]
    assert out.skipped == 1
    with_flags = EstimateSerialiser(fields=["estimate", "flags"], tags=["channel", "twin_id", "twin_type"])
    assert with_flags.serialise(batch).lines.to_list()[0] == (
        f"dte_readings,channel=temp,twin_id=pump\\ 1,twin_type=pump estimate=1.5,flags=0i {T0}"
    )
