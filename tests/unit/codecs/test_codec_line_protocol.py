"""The line_protocol codec: escaping, field types, twin/unit tags, precision, per-line errors."""

from __future__ import annotations

import pytest
from codec_helpers import RECEIVED_NS, context, decode_checked, reasons
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.codecs import LineProtocolCodec, get_codec, line_protocol
from dte_stream.errors import ConfigError
from dte_stream.readings import Reading, ReadingBatch

T0 = 1_767_323_045_000_000_000
codec = LineProtocolCodec()


def decode(
    payload: bytes | str, lp: LineProtocolCodec = codec, **ctx: object
) -> tuple[list[Reading], list[str]]:
    raw = payload.encode() if isinstance(payload, str) else payload
    result = decode_checked(lp, raw, context(**ctx))
    return result.readings.to_readings(), reasons(result)


def simple(rs: list[Reading]) -> list[tuple[str, str, int, float, str]]:
    return [(r.twin_id, r.channel, r.time_ns, r.value, r.unit) for r in rs]


def test_each_numeric_field_is_one_reading() -> None:
    rs, errors = decode(
        f"plant,twin_id=pump-1,unit=Cel,site=x temp=21.5,rpm=1500i,count=7u,on=t,off=FALSE {T0}"
    )
    assert errors == []
    assert simple(rs) == [
        ("pump-1", "temp", T0, 21.5, "Cel"),
        ("pump-1", "rpm", T0, 1500.0, "Cel"),
        ("pump-1", "count", T0, 7.0, "Cel"),
        ("pump-1", "on", T0, 1.0, "Cel"),
        ("pump-1", "off", T0, 0.0, "Cel"),
    ]


def test_twin_falls_back_to_the_measurement_and_time_to_the_context() -> None:
    rs, errors = decode("pump\\ 1,site=x temp=1")
    assert simple(rs) == [("pump 1", "temp", RECEIVED_NS, 1.0, "")]
    assert errors == []


def test_custom_twin_and_unit_tags() -> None:
    lp = LineProtocolCodec(twin_tag="device", unit_tag=None)
    rs, _ = decode("m,device=d7,twin_id=ignored,unit=ignored v=1 5", lp)
    assert simple(rs) == [("d7", "v", 5, 1.0, "")]


@pytest.mark.parametrize(("precision", "factor"), [("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", 10**9)])
def test_precision_scales_timestamps(precision: str, factor: int) -> None:
    lp = get_codec("line_protocol", precision=precision)
    assert isinstance(lp, LineProtocolCodec)
    rs, _ = decode("m v=1 1767323045", lp)
    assert rs[0].time_ns == 1767323045 * factor
    batch = ReadingBatch.from_readings([Reading("a", "v", T0 + 123_456_789, 1.0)])
    assert lp.encode(batch).endswith(f" {(T0 + 123_456_789) // factor}\n".encode())


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="ns, us, ms, s"):
        LineProtocolCodec(precision="h")
    with pytest.raises(ConfigError, match="twin_tag is empty"):
        LineProtocolCodec(twin_tag="")
    with pytest.raises(ConfigError, match="comment"):
        LineProtocolCodec(measurement="#m")
    with pytest.raises(ConfigError, match="differ"):
        LineProtocolCodec(twin_tag="t", unit_tag="t")


def test_escapes_in_every_element() -> None:
    payload = (
        "my\\ meas\\,x=1,twin_id=pump\\ 1\\,a\\=b,unit=m\\ s "
        'field\\ key\\,\\=x=1.5,msg="a, b=c \\"q\\" \\\\" 9'
    )
    rs, errors = decode(payload)
    assert errors == []
    assert simple(rs) == [("pump 1,a=b", "field key,=x", 9, 1.5, "m s")]


def test_string_fields_are_skipped_when_the_line_has_a_number() -> None:
    rs, errors = decode('m,twin_id=a msg="hello world",v=2 1')
    assert [r.channel for r in rs] == ["v"]
    assert errors == []


def test_line_with_only_string_fields_is_a_dead_letter() -> None:
    rs, errors = decode('m,twin_id=a msg="hello",state="on" 1')
    assert rs == []
    assert errors == ["line 1: no numeric field (string fields are not readings)"]


def test_bad_lines_are_dead_letters_with_their_line_number_and_bytes() -> None:
    payload = (
        b"m,twin_id=a v=1 1\n# comment\n\nm,twin_id=a v=abc 2\r\n"
        b"m,twin_id=a v=3 3\n  \nm,twin_id=\xff v=4 4\n"
    )
    result = decode_checked(codec, payload)
    assert [(r.value, r.time_ns) for r in result.readings] == [(1.0, 1), (3.0, 3)]
    assert reasons(result) == [
        "line 4: field 'v': value 'abc' is not a number, boolean or string",
        "line 7: invalid UTF-8 at offset 10",
    ]
    assert result.errors[0].raw == b"m,twin_id=a v=abc 2\r"
    assert result.errors[1].raw == b"m,twin_id=\xff v=4 4"


def test_a_line_is_all_or_nothing() -> None:
    rs, errors = decode("m,twin_id=a good=1,bad=1e999 5")
    assert rs == []
    assert errors == ["line 1: field 'bad': value inf is not finite"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("m", "no field set"),
        ("m,twin_id=a", "no field set"),
        ("m v", "malformed line protocol"),
        ("m v=", "malformed line protocol"),
        ("m =1", "malformed line protocol"),
        ("m,t v=1", "malformed line protocol"),
        ("m v=1 12x", "malformed line protocol"),
        ("m v=1 1 2", "malformed line protocol"),
        ('m v="unterminated', "malformed line protocol"),
        ("m v=1i2", "field 'v': value '1i2' is not a number, boolean or string"),
        ("m v=9223372036854775808i", "field 'v': integer 9223372036854775808i is outside int64"),
        ("m v=18446744073709551616u", "field 'v': unsigned integer 18446744073709551616u is outside uint64"),
        ("m v=-1u", "field 'v': value '-1u' is not a number, boolean or string"),
        ("m v=nan", "field 'v': value 'nan' is not a number, boolean or string"),
        ("m v=1 -5", "field 'v': time -5 ns is outside 1970..2262"),
        ("m v=1 " + "9" * 30, "timestamp 999999999999999999999999... is out of range"),
        ("m,twin_id=a\\\x01b v=1 5", "field 'v': twin id 'a\\\\\\x01b' contains a control character"),
    ],
)
def test_malformed_lines(line: str, reason: str) -> None:
    rs, [got] = decode(line)
    assert rs == []
    assert got.startswith(f"line 1: {reason}"), got


def test_integer_fields_at_the_int64_edges() -> None:
    rs, errors = decode("m v=9223372036854775807i,w=-9223372036854775808i,u=18446744073709551615u 1")
    assert errors == []
    assert [r.value for r in rs] == [9223372036854775807.0, -9223372036854775808.0, 18446744073709551615.0]


def test_encode_is_exactly_escaped_one_line_per_reading() -> None:
    batch = ReadingBatch.from_readings(
        [
            Reading('pump 1,a=b"\\', "temp, =x\\y", 7, 21.5, "Cel sius"),
            Reading("plain", "v", 8, -0.0),
        ]
    )
    assert codec.encode(batch) == (
        b'reading,twin_id=pump\\ 1\\,a\\=b"\\\\,unit=Cel\\ sius temp\\,\\ \\=x\\y=21.5 7\n'
        b"reading,twin_id=plain v=-0.0 8\n"
    )
    rs, errors = decode(codec.encode(batch))
    assert errors == []
    assert simple(rs) == simple(batch.to_readings())


def test_encode_with_a_custom_measurement_and_tag() -> None:
    lp = LineProtocolCodec(measurement="twin data", twin_tag="twin id", unit_tag=None)
    batch = ReadingBatch.from_readings([Reading("a", "v", 1, 2.0, "Cel")])
    assert lp.encode(batch) == b"twin\\ data,twin\\ id=a v=2.0 1\n"


plain_line = st.lists(
    st.sampled_from(
        ["m", "twin_id", "a", "=", ",", " ", "  ", "1", "1.5", "-3", "7i", "t", "é", "\t", "x=1"]
    ),
    min_size=1,
    max_size=25,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(line=plain_line)
def test_fast_path_agrees_with_the_escape_aware_path(line: str) -> None:
    fast = line_protocol._split_plain(line)
    if fast is not None:
        assert fast == line_protocol._split_escaped(line)


def test_non_ascii_digits_are_not_numbers() -> None:
    rs, errors = decode("m v=١٢٣ 5\nm v=1 ١٢٣")
    assert rs == []
    assert len(errors) == 2
