"""Every registered codec through the same checks: a new codec is tested without new test code."""

from __future__ import annotations

import doctest
import importlib
import math

import pytest
from codec_helpers import (
    RECEIVED_NS,
    batches,
    context,
    decode_checked,
    reading_key,
    reasons,
)
from hypothesis import HealthCheck, given, settings

from dte_stream.codecs import CODEC_NAMES, Codec, DecodeResult, EncodeError, get_codec
from dte_stream.errors import ConfigError
from dte_stream.readings import Reading, ReadingBatch
from dte_stream.times import MIN_TIME_NS

GARBAGE = [
    b"\xff\xfe\x00garbage\x80\x81",
    b"this is not a payload",
    b"{{{{",
    b"[[[[[[[[[[[[",
    b'{"value": NaN}',
    b"\x00" * 64,
    b"[" * 5000,
    b"\xef\xbb\xbf\xed\xa0\x80",
]


def _readings_equal(codec: Codec, original: ReadingBatch, decoded: ReadingBatch) -> None:
    unit = getattr(codec, "carries_unit", True)
    quality = getattr(codec, "carries_quality", True)
    want = sorted(reading_key(r, unit=unit, quality=quality) for r in original)
    got = sorted(reading_key(r, unit=unit, quality=quality) for r in decoded)
    assert got == want


@pytest.fixture(params=CODEC_NAMES)
def codec(request: pytest.FixtureRequest) -> Codec:
    return get_codec(request.param)


def test_registry_builds_every_codec_by_its_name() -> None:
    for name in CODEC_NAMES:
        codec = get_codec(name)
        assert isinstance(codec, Codec)
        assert codec.name == name


def test_unknown_codec_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as info:
        get_codec("xml")
    for name in CODEC_NAMES:
        assert name in str(info.value)


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="json"):
        get_codec("json", precision="ms")


@pytest.mark.parametrize("name", CODEC_NAMES)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=batches(min_time_ns=2**28 * 1_000_000_000))
def test_round_trip_gives_back_the_readings(name: str, data: ReadingBatch) -> None:
    codec = get_codec(name)
    result = decode_checked(codec, codec.encode(data))
    assert result.errors == []
    _readings_equal(codec, data, result.readings)


@pytest.mark.parametrize("name", CODEC_NAMES)
@settings(max_examples=40, deadline=None)
@given(data=batches(max_size=4))
def test_round_trip_from_the_earliest_encodable_time(name: str, data: ReadingBatch) -> None:
    codec = get_codec(name)
    earliest = getattr(codec, "min_encodable_time_ns", MIN_TIME_NS)
    if int(data.time_ns.min()) < earliest:
        with pytest.raises(EncodeError):
            codec.encode(data)
        return
    result = decode_checked(codec, codec.encode(data))
    assert result.errors == []
    _readings_equal(codec, data, result.readings)


@pytest.mark.parametrize(
    "value", [0.0, -0.0, 5e-324, -5e-324, 1.7976931348623157e308, 0.1, 1 / 3, 2.0**53 + 2, -123456.789e-300]
)
def test_float_values_round_trip_bit_for_bit(codec: Codec, value: float) -> None:
    batch = ReadingBatch.from_readings([Reading("twin", "chan", RECEIVED_NS + 123_456_789, value)])
    decoded = decode_checked(codec, codec.encode(batch)).readings
    assert float(decoded.value[0]).hex() == value.hex()
    assert int(decoded.time_ns[0]) == RECEIVED_NS + 123_456_789


@pytest.mark.parametrize("payload", [b"", b" ", b"\n\r\n\t "])
def test_empty_payload_is_one_dead_letter(codec: Codec, payload: bytes) -> None:
    result = decode_checked(codec, payload)
    assert len(result.readings) == 0
    assert reasons(result) == ["empty payload"]
    assert result.errors[0].raw == payload


@pytest.mark.parametrize("payload", GARBAGE)
def test_garbage_becomes_dead_letters_with_source_and_raw(codec: Codec, payload: bytes) -> None:
    ctx = context(source="mqtt://broker/sensors/x")
    result = decode_checked(codec, payload, ctx)
    assert len(result.readings) == 0
    assert result.errors
    for dead in result.errors:
        assert dead.source == "mqtt://broker/sensors/x"
        assert dead.raw
        assert dead.received_ns == RECEIVED_NS


def test_oversize_payload_is_dead_lettered_unread(codec: Codec) -> None:
    batch = ReadingBatch.from_readings([Reading("twin", "chan", RECEIVED_NS, float(i)) for i in range(50)])
    payload = codec.encode(batch)
    limit = len(payload) - 1
    result = decode_checked(codec, payload, context(max_payload_bytes=limit))
    assert len(result.readings) == 0
    [reason] = reasons(result)
    assert str(len(payload)) in reason
    assert str(limit) in reason
    assert decode_checked(codec, payload, context(max_payload_bytes=len(payload))).errors == []


def test_decode_result_types_and_dtypes(codec: Codec) -> None:
    batch = ReadingBatch.from_readings(
        [Reading("pump-1", "temp", RECEIVED_NS, 20.5, "Cel"), Reading("pump-2", "rpm", RECEIVED_NS + 1, 3.0)]
    )
    result = decode_checked(codec, codec.encode(batch))
    assert isinstance(result, DecodeResult)
    assert len(result.readings) == 2
    empty = decode_checked(codec, b"\xff")
    assert len(empty.readings) == 0


def test_non_bytes_payload_is_a_dead_letter(codec: Codec) -> None:
    result = codec.decode("not bytes", context())  # type: ignore[arg-type]
    assert len(result.readings) == 0
    assert "bytes" in reasons(result)[0]


def test_bytearray_and_memoryview_payloads_are_accepted(codec: Codec) -> None:
    batch = ReadingBatch.from_readings([Reading("pump-1", "temp", RECEIVED_NS, 1.5)])
    payload = codec.encode(batch)
    for form in (bytearray(payload), memoryview(payload)):
        assert len(codec.decode(form, context()).readings) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        Reading("twin", "chan", RECEIVED_NS, math.nan),
        Reading("twin", "chan", RECEIVED_NS, math.inf),
        Reading("twin\nx,twin_id=evil", "chan", RECEIVED_NS, 1.0),
        Reading("twin", "chan\r", RECEIVED_NS, 1.0),
        Reading("", "chan", RECEIVED_NS, 1.0),
        Reading("twin", "chan", -1, 1.0),
    ],
)
def test_encode_refuses_readings_that_are_not_valid(codec: Codec, bad: Reading) -> None:
    with pytest.raises(EncodeError):
        codec.encode(ReadingBatch.from_readings([bad]))


def test_encoding_nothing_decodes_to_nothing(codec: Codec) -> None:
    payload = codec.encode(ReadingBatch.empty())
    result = codec.decode(payload, context())
    assert len(result.readings) == 0
    assert reasons(result) in ([], ["empty payload"])


def test_payload_ids_win_over_the_context(codec: Codec) -> None:
    batch = ReadingBatch.from_readings([Reading("pump-1", "temp", RECEIVED_NS, 1.0)])
    result = decode_checked(codec, codec.encode(batch), context(twin_id="other", channel="other"))
    assert result.readings.to_readings()[0].twin_id == "pump-1"
    assert result.readings.to_readings()[0].channel == "temp"


@pytest.mark.parametrize(
    "module",
    sorted(
        {"dte_stream.codecs", "dte_stream.codecs.escaping"}
        | {type(get_codec(n)).__module__ for n in CODEC_NAMES}
    ),
)
def test_docstring_examples_run(module: str) -> None:
    failed, attempted = doctest.testmod(importlib.import_module(module))
    assert attempted > 0
    assert failed == 0
