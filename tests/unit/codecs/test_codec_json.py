"""The json codec: batch forms, field aliases, time rules, context fallbacks, record errors."""

from __future__ import annotations

import math

import orjson
import pytest
from codec_helpers import RECEIVED_NS, context, decode_checked, reasons

from dte_stream.codecs import JsonCodec
from dte_stream.readings import Reading, ReadingBatch
from dte_stream.times import NS_PER_S

T0 = 1_767_323_045 * NS_PER_S  # 2026-01-02T03:04:05Z
codec = JsonCodec()


def decode(payload: bytes | str, **ctx: object) -> tuple[list[Reading], list[str]]:
    raw = payload.encode() if isinstance(payload, str) else payload
    result = decode_checked(codec, raw, context(**ctx))
    return result.readings.to_readings(), reasons(result)


def test_single_object() -> None:
    [r], errors = decode('{"twin_id": "pump-1", "channel": "temp", "value": 21.5, "time_ns": 5}')
    assert (r.twin_id, r.channel, r.value, r.time_ns, r.unit) == ("pump-1", "temp", 21.5, 5, "")
    assert math.isnan(r.quality)
    assert errors == []


def test_array_of_objects() -> None:
    rs, errors = decode(
        '[{"twin": "a", "channel": "x", "value": 1}, {"twin_id": "b", "channel": "y", "value": 2}]'
    )
    assert [(r.twin_id, r.channel, r.value) for r in rs] == [("a", "x", 1.0), ("b", "y", 2.0)]
    assert errors == []


def test_envelope_with_readings_array_gives_defaults_to_its_records() -> None:
    payload = (
        '{"twin_id": "pump-1", "readings": '
        '[{"channel": "temp", "value": 1}, {"twin": "other", "channel": "rpm", "value": 2}]}'
    )
    rs, errors = decode(payload, twin_id="ctx")
    assert [(r.twin_id, r.channel) for r in rs] == [("pump-1", "temp"), ("other", "rpm")]
    assert errors == []


def test_envelope_readings_must_be_an_array() -> None:
    rs, errors = decode('{"readings": {"value": 1}}')
    assert rs == []
    assert errors == ['"readings" must be an array, got an object']


def test_bare_number_takes_twin_channel_and_time_from_the_context() -> None:
    [r], errors = decode("21.5", twin_id="pump-1", channel="temp")
    assert (r.twin_id, r.channel, r.time_ns, r.value) == ("pump-1", "temp", RECEIVED_NS, 21.5)
    assert errors == []


def test_bare_number_without_context_ids_is_a_dead_letter() -> None:
    rs, [reason] = decode("21.5", twin_id="pump-1")
    assert rs == []
    assert "bare number" in reason
    assert "channel None" in reason


def test_context_fallbacks_and_payload_ids_win() -> None:
    rs, _ = decode(
        '[{"value": 1}, {"twin_id": "own", "channel": "mine", "value": 2}]', twin_id="t", channel="c"
    )
    assert [(r.twin_id, r.channel) for r in rs] == [("t", "c"), ("own", "mine")]


def test_missing_ids_without_context_name_the_field_and_index() -> None:
    rs, errors = decode('[{"channel": "x", "value": 1}, {"twin_id": "a", "value": 1}]')
    assert rs == []
    assert errors == [
        "record 0: no twin_id and no twin id from the context",
        "record 1: no channel and no channel from the context",
    ]


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        ('"time": "2026-01-02T03:04:05Z"', T0),
        ('"time": "2026-01-02T04:04:05.123456789+01:00"', T0 + 123_456_789),
        ('"time": 1767323045', T0),
        ('"time": 1767323045.5', T0 + NS_PER_S // 2),
        ('"time_ns": 1767323045000000001', T0 + 1),
        ('"time_ns": 7, "time": "2026-01-02T03:04:05Z"', 7),
        ('"time": null', RECEIVED_NS),
        ('"other": 1', RECEIVED_NS),
    ],
)
def test_time_forms(time: str, expected: int) -> None:
    [r], errors = decode(f'{{"twin_id": "a", "channel": "b", "value": 1, {time}}}')
    assert r.time_ns == expected
    assert errors == []


@pytest.mark.parametrize(
    ("time", "reason"),
    [
        ('"time": "2026-01-02T03:04:05"', "record 0: time: timestamp '2026-01-02T03:04:05' has no timezone"),
        ('"time": "yesterday"', "record 0: time: 'yesterday' is not an ISO 8601 timestamp"),
        ('"time": true', "record 0: time true is neither an RFC 3339 string nor epoch seconds"),
        ('"time": 1e300', "record 0: time 1e+300 s is outside 1970..2262"),
        ('"time": -5', "record 0: time -5000000000 ns is outside 1970..2262"),
        ('"time_ns": 1.5e18', "record 0: time_ns 1.5e+18 is not an integer of nanoseconds"),
        ('"time_ns": 18446744073709551615', "record 0: time 18446744073709551615 ns is outside 1970..2262"),
        ('"time": "' + "9" * 100 + '"', "record 0: time '" + "9" * 40 + "'... is not an RFC 3339 timestamp"),
    ],
)
def test_bad_times_are_dead_letters(time: str, reason: str) -> None:
    rs, [got] = decode(f'{{"twin_id": "a", "channel": "b", "value": 1, {time}}}')
    assert rs == []
    assert got.startswith(reason), got


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"abc"', "value 'abc' is not a number"),
        ('"21.5"', "value '21.5' is not a number"),
        ("true", "value true is not a number"),
        ("null", "no value"),
        ("[1]", "value an array of 1 items is not a number"),
        ("1e308", None),
    ],
)
def test_value_must_be_a_json_number(value: str, reason: str | None) -> None:
    rs, errors = decode(f'{{"twin_id": "a", "channel": "b", "value": {value}}}')
    if reason is None:
        assert len(rs) == 1
    else:
        assert errors == [f"record 0: {reason}"]


def test_nan_infinity_and_overflow_literals_are_invalid_json() -> None:
    for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
        rs, [reason] = decode(f'{{"twin_id": "a", "channel": "b", "value": {literal}}}')
        assert rs == []
        assert reason.startswith("invalid JSON")


def test_record_errors_name_the_index_and_keep_good_records() -> None:
    payload = orjson.dumps(
        [
            {"twin_id": "a", "channel": "x", "value": 1},
            {"twin_id": "a", "channel": "x", "value": 2},
            {"twin_id": "a", "channel": "x", "value": 3},
            {"twin_id": "a", "channel": "x", "value": "abc", "junk": [1, 2]},
            5,
        ]
    )
    result = decode_checked(codec, payload, context(source="kafka://t/0@9"))
    assert [r.value for r in result.readings] == [1.0, 2.0, 3.0]
    assert reasons(result) == [
        "record 3: value 'abc' is not a number",
        "record 4: expected a reading object, got 5",
    ]
    bad = result.errors[0]
    assert orjson.loads(bad.raw) == {"twin_id": "a", "channel": "x", "value": "abc", "junk": [1, 2]}
    assert bad.source == "kafka://t/0@9"
    assert bad.received_ns == RECEIVED_NS


def test_payload_level_errors_carry_the_whole_payload() -> None:
    result = decode_checked(codec, b'"just a string"')
    [dead] = result.errors
    assert dead.raw == b'"just a string"'
    assert "got 'just a string'" in dead.reason


def test_unit_quality_and_unknown_fields() -> None:
    [r], errors = decode(
        '{"twin_id": "a", "channel": "b", "value": 1, "unit": "Cel", "quality": 0.25, "x": {"y": 1}}'
    )
    assert (r.unit, r.quality) == ("Cel", 0.25)
    assert errors == []


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ('"quality": 1.5', "record 0: quality 1.5 is outside 0..1"),
        ('"quality": "good"', "record 0: quality 'good' is not a number"),
        ('"unit": 5', "record 0: unit must be a string, got int"),
        ('"unit": " Cel"', "record 0: unit ' Cel' has leading or trailing whitespace"),
        ('"twin_id": ""', "record 0: twin id is empty"),
        ('"twin_id": "a\\nb"', "record 0: twin id 'a\\nb' contains a control character"),
        ('"channel": 3', "record 0: channel must be a string, got int"),
        ('"twin_id": "' + "x" * 300 + '"', "record 0: twin id is longer than 256 characters"),
    ],
)
def test_field_problems_are_named(field: str, reason: str) -> None:
    rs, errors = decode(f'{{"twin_id": "a", "channel": "b", "value": 1, {field}}}')
    assert rs == []
    assert errors == [reason]


def test_duplicate_keys_take_the_last() -> None:
    [r], _ = decode('{"twin_id": "a", "channel": "b", "value": 1, "value": 2}')
    assert r.value == 2.0


def test_deep_nesting_is_a_dead_letter() -> None:
    rs, [reason] = decode(b"[" * 2000 + b"]" * 2000)
    assert rs == []
    assert reason.startswith("invalid JSON")


def test_invalid_utf8_is_a_dead_letter() -> None:
    rs, [reason] = decode(b'{"twin_id": "\xff", "channel": "b", "value": 1}')
    assert rs == []
    assert reason.startswith("invalid JSON")


def test_encode_writes_unit_and_quality_only_when_set() -> None:
    batch = ReadingBatch.from_readings([Reading("a", "b", 5, 1.0), Reading("a", "b", 6, -0.0, "Cel", 0.5)])
    assert orjson.loads(codec.encode(batch)) == [
        {"twin_id": "a", "channel": "b", "time_ns": 5, "value": 1.0},
        {"twin_id": "a", "channel": "b", "time_ns": 6, "value": -0.0, "unit": "Cel", "quality": 0.5},
    ]
