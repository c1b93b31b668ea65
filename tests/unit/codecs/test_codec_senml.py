"""The senml codec: RFC 8428 base fields, carry-forward, relative time, names to twin/channel."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from codec_helpers import RECEIVED_NS, context, decode_checked, reasons

from dte_stream.codecs import EncodeError, SenMLCodec
from dte_stream.readings import Reading, ReadingBatch
from dte_stream.times import NS_PER_S

T0 = 1_767_323_045  # seconds, 2026-01-02T03:04:05Z
codec = SenMLCodec()


def decode(pack: Any, **ctx: object) -> tuple[list[Reading], list[str]]:
    payload = pack if isinstance(pack, bytes) else orjson.dumps(pack)
    result = decode_checked(codec, payload, context(**ctx))
    return result.readings.to_readings(), reasons(result)


def simple(rs: list[Reading]) -> list[tuple[str, str, int, float, str]]:
    return [(r.twin_id, r.channel, r.time_ns, r.value, r.unit) for r in rs]


def test_rfc_8428_multiple_datapoints_example() -> None:
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e9, "bu": "%RH", "v": 20, "n": "humidity"},
        {"u": "lon", "v": 24.30621, "n": "lon"},
        {"t": 60, "v": 20.3, "n": "humidity"},
    ]
    rs, errors = decode(pack)
    assert errors == []
    assert simple(rs) == [
        ("urn:dev:ow:10e2073a01080063", "humidity", 1_320_067_464 * NS_PER_S, 20.0, "%RH"),
        ("urn:dev:ow:10e2073a01080063", "lon", 1_320_067_464 * NS_PER_S, 24.30621, "lon"),
        ("urn:dev:ow:10e2073a01080063", "humidity", 1_320_067_524 * NS_PER_S, 20.3, "%RH"),
    ]


def test_base_fields_carry_forward_until_replaced() -> None:
    pack = [
        {"bn": "pump-1/", "bt": T0, "bu": "Cel", "bv": 100, "n": "temp", "v": 1},
        {"n": "temp", "t": 1, "v": 2},
        {"bn": "pump-2.", "n": "temp", "t": 2, "v": 3, "u": "K"},
        {"bu": "F", "bt": T0 + 10, "bv": 0, "n": "temp", "v": 4},
    ]
    rs, errors = decode(pack)
    assert errors == []
    assert simple(rs) == [
        ("pump-1", "temp", T0 * NS_PER_S, 101.0, "Cel"),
        ("pump-1", "temp", (T0 + 1) * NS_PER_S, 102.0, "Cel"),
        ("pump-2", "temp", (T0 + 2) * NS_PER_S, 103.0, "K"),
        ("pump-2", "temp", (T0 + 10) * NS_PER_S, 4.0, "F"),
    ]


def test_times_below_2_28_seconds_are_relative_to_now() -> None:
    pack = [
        {"bn": "a:", "n": "x", "v": 1},  # no time at all: now
        {"n": "x", "t": -5, "v": 2},  # five seconds ago
        {"bt": 100, "n": "x", "t": 0.5, "v": 3},  # bt + t = 100.5 s: still relative
        {"bt": 2**28, "n": "x", "v": 4},  # exactly 2**28: absolute
    ]
    rs, errors = decode(pack)
    assert errors == []
    assert [r.time_ns for r in rs] == [
        RECEIVED_NS,
        RECEIVED_NS - 5 * NS_PER_S,
        RECEIVED_NS + 100_500_000_000,
        2**28 * NS_PER_S,
    ]


def test_integer_base_time_and_fractional_offset_keep_nanoseconds() -> None:
    rs, _ = decode([{"bn": "a:", "bt": T0, "n": "x", "t": 0.123456789, "v": 1}])
    assert rs[0].time_ns == T0 * NS_PER_S + 123_456_789


@pytest.mark.parametrize(
    ("name", "twin", "channel"),
    [
        ("pump-1:temp", "pump-1", "temp"),
        ("site/pump-1/temp", "site/pump-1", "temp"),
        ("a/b:c", "a/b", "c"),
        ("a:b/c", "a:b", "c"),
        ("urn:dev:ow:10e2073a01080063", "urn:dev:ow", "10e2073a01080063"),
        ("temp", "ctx-twin", "temp"),
    ],
)
def test_names_without_base_name_split_at_the_last_separator(name: str, twin: str, channel: str) -> None:
    [r], errors = decode([{"n": name, "v": 1}], twin_id="ctx-twin")
    assert (r.twin_id, r.channel) == (twin, channel)
    assert errors == []


def test_name_without_separator_and_no_context_twin_is_a_dead_letter() -> None:
    rs, errors = decode([{"n": "temp", "v": 1}])
    assert rs == []
    assert errors == [
        "record 0: name 'temp' has no twin id part (before ':' or '/') and the context gives none"
    ]


@pytest.mark.parametrize(
    ("bn", "twin"),
    [("pump:", "pump"), ("pump/", "pump"), ("pump.", "pump"), ("pump::", "pump:"), ("pump", "pump")],
)
def test_base_name_loses_one_trailing_separator(bn: str, twin: str) -> None:
    [r], _ = decode([{"bn": bn, "n": "temp", "v": 1}])
    assert (r.twin_id, r.channel) == (twin, "temp")


def test_base_name_without_n_takes_the_channel_from_the_context() -> None:
    [r], _ = decode([{"bn": "urn:dev:ow:10e2073a01080063", "v": 1}], channel="temp")
    assert (r.twin_id, r.channel) == ("urn:dev:ow:10e2073a01080063", "temp")
    rs, errors = decode([{"bn": "pump:", "v": 1}])
    assert rs == []
    assert errors == ["record 0: name 'pump:' has no channel: give n, or a channel in the context"]


def test_supported_version_is_read_and_newer_refuses_the_whole_pack() -> None:
    rs, errors = decode([{"bver": 10, "bn": "a:", "n": "x", "v": 1}])
    assert len(rs) == 1
    assert errors == []
    rs, errors = decode([{"bn": "a:", "n": "x", "v": 1}, {"bver": 11, "n": "x", "v": 2}])
    assert rs == []
    assert errors == ["record 1: SenML version (bver) 11 is not supported (at most 10); pack not read"]
    rs, errors = decode([{"bver": "10", "n": "a:x", "v": 1}])
    assert rs == []
    assert errors == ["record 0: bver '10' is not a positive integer"]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"n": "a:x", "s": 5}, "sum (s) is not supported; only numeric values (v) become readings"),
        (
            {"n": "a:x", "vs": "on"},
            "string value (vs) is not supported; only numeric values (v) become readings",
        ),
        (
            {"n": "a:x", "vb": True},
            "boolean value (vb) is not supported; only numeric values (v) become readings",
        ),
        (
            {"n": "a:x", "vd": "AAE"},
            "data value (vd) is not supported; only numeric values (v) become readings",
        ),
        ({"n": "a:x", "v": 1, "vs": "x"}, "more than one value field (v and string value (vs))"),
        ({"n": "a:x"}, "no value (v)"),
        ({"n": "a:x", "v": "1"}, "v '1' is not a number"),
        ({"n": "a:x", "v": True}, "v true is not a number"),
        ({"n": 5, "v": 1}, "n 5 is not a string"),
        ({"n": "a:x", "v": 1, "t": "now"}, "t 'now' is not a number"),
        ({"n": "a:x", "v": 1, "u": 3}, "u 3 is not a string"),
        ({"n": "a:x", "v": 1, "ext_": 1}, "field 'ext_' must be understood and is not supported"),
        ({"v": 1}, "no name: neither n nor a base name bn"),
        ({"n": ":x", "v": 1}, "twin id is empty"),
        ({"n": "a:", "v": 1}, "channel is empty"),
        ({"n": "a:x", "v": 1e308, "bv": 1e308}, "value inf is not finite"),
        ({"n": "a:x", "v": 1, "t": 1e300}, "t: time 1e+300 s is outside 1970..2262"),
    ],
)
def test_record_errors(record: dict[str, Any], reason: str) -> None:
    rs, errors = decode([{"bn": "", "n": "ok:x", "v": 0}, record])
    assert len(rs) == 1
    assert errors == [f"record 1: {reason}"]


def test_update_time_and_unknown_fields_are_ignored() -> None:
    rs, errors = decode([{"n": "a:x", "v": 1, "ut": 60, "l": "link", "foo": [1]}])
    assert len(rs) == 1
    assert errors == []


def test_sum_next_to_a_value_is_ignored() -> None:
    [r], errors = decode([{"n": "a:x", "v": 1, "s": 100}])
    assert r.value == 1.0
    assert errors == []


def test_malformed_base_field_drops_the_rest_of_the_pack() -> None:
    pack = [
        {"bn": "a:", "n": "x", "v": 1},
        {"n": "x", "v": 2},
        {"bt": "soon", "n": "x", "v": 3},
        {"n": "x", "v": 4},
    ]
    result = decode_checked(codec, orjson.dumps(pack))
    assert [r.value for r in result.readings] == [1.0, 2.0]
    assert reasons(result) == [
        "record 2: bt 'soon' is not a number; "
        "records 2..3 not read because their base fields cannot be resolved"
    ]
    assert result.errors[0].raw == orjson.dumps(pack)


def test_record_level_dead_letters_carry_the_record() -> None:
    result = decode_checked(codec, orjson.dumps([{"n": "a:x", "v": 1}, {"n": "a:x", "vs": "on"}]))
    assert orjson.loads(result.errors[0].raw) == {"n": "a:x", "vs": "on"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[]", None),
        (b'{"n": "a:x", "v": 1}', "a SenML pack must be a JSON array of records, got an object"),
        (b"5", "a SenML pack must be a JSON array of records, got 5"),
        (b"[1, ", "invalid JSON"),
    ],
)
def test_pack_level_forms(payload: bytes, reason: str | None) -> None:
    rs, errors = decode(payload)
    assert rs == []
    if reason is None:
        assert errors == []
    else:
        assert errors[0].startswith(reason)


def test_encode_groups_by_twin_with_base_name_base_time_and_relative_offsets() -> None:
    t0 = T0 * NS_PER_S + 250_000_000
    batch = ReadingBatch.from_readings(
        [
            Reading("pump-1", "temp", t0, 20.5, "Cel"),
            Reading("pump-2", "temp", t0 + 1, 19.0),
            Reading("pump-1", "rpm", t0 + 2 * NS_PER_S, 1500.0),
        ]
    )
    pack = orjson.loads(codec.encode(batch))
    assert pack == [
        {"bn": "pump-1:", "bt": T0, "n": "temp", "u": "Cel", "t": 0.25, "v": 20.5},
        {"n": "rpm", "t": 2.25, "v": 1500.0},
        {"bn": "pump-2:", "n": "temp", "t": 0.250000001, "v": 19.0},
    ]
    rs, _ = decode(pack)
    assert sorted(simple(rs)) == sorted(simple(batch.to_readings()))


def test_encode_starts_a_new_base_time_for_far_away_readings() -> None:
    far = (T0 + 10 * 86400) * NS_PER_S
    batch = ReadingBatch.from_readings(
        [Reading("a", "x", T0 * NS_PER_S, 1.0), Reading("a", "x", far + 7, 2.0)]
    )
    pack = orjson.loads(codec.encode(batch))
    assert [record.get("bt") for record in pack] == [T0, far // NS_PER_S]
    rs, _ = decode(pack)
    assert [r.time_ns for r in rs] == [T0 * NS_PER_S, far + 7]


def test_encode_refuses_times_that_would_read_as_relative() -> None:
    with pytest.raises(EncodeError, match="2\\*\\*28"):
        codec.encode(ReadingBatch.from_readings([Reading("a", "x", 2**28 * NS_PER_S - 1, 1.0)]))
