"""The csv codec: header recognition, context fallbacks, time forms, row errors with numbers."""

from __future__ import annotations

import math

import pytest
from codec_helpers import RECEIVED_NS, context, decode_checked, reasons

from dte_stream.codecs import CsvCodec
from dte_stream.readings import Reading, ReadingBatch

T0 = 1_767_323_045_000_000_000
codec = CsvCodec()


def decode(payload: bytes | str, **ctx: object) -> tuple[list[Reading], list[str]]:
    raw = payload.encode() if isinstance(payload, str) else payload
    result = decode_checked(codec, raw, context(**ctx))
    return result.readings.to_readings(), reasons(result)


def simple(rs: list[Reading]) -> list[tuple[str, str, int, float, str]]:
    return [(r.twin_id, r.channel, r.time_ns, r.value, r.unit) for r in rs]


def test_columns_by_name_in_any_order_case_and_spacing() -> None:
    rs, errors = decode(
        " Value ,Channel,extra,TWIN,unit,Time\n21.5,temp,zz,pump-1,Cel,2026-01-02T03:04:05Z\n"
    )
    assert errors == []
    assert simple(rs) == [("pump-1", "temp", T0, 21.5, "Cel")]


def test_missing_columns_and_empty_cells_fall_back_to_the_context() -> None:
    rs, errors = decode("value,channel\n1,temp\n2,\n", twin_id="pump-1", channel="ctx")
    assert errors == []
    assert simple(rs) == [("pump-1", "temp", RECEIVED_NS, 1.0, ""), ("pump-1", "ctx", RECEIVED_NS, 2.0, "")]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("twin_id,channel,time", "CSV header 'twin_id,channel,time' has no 'value' column"),
        (
            "channel,value",
            "CSV header 'channel,value' has no 'twin_id' column and the context gives no twin id",
        ),
        ("twin,value", "CSV header 'twin,value' has no 'channel' column and the context gives no channel"),
        ("twin,twin_id,channel,value", "CSV header names column 'twin_id' twice"),
    ],
)
def test_header_problems_dead_letter_the_payload(header: str, reason: str) -> None:
    payload = f"{header}\n1,2,3,4\n".encode()
    result = decode_checked(codec, payload)
    assert len(result.readings) == 0
    assert reasons(result) == [reason]
    assert result.errors[0].raw == payload


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ("2026-01-02T03:04:05Z,", T0),
        ("1767323045,", T0),
        ("1767323045.123456789,", T0 + 123_456_789),
        ("1.767323045e9,", T0),
        (",1767323045000000007", T0 + 7),
        ("2020-01-01T00:00:00Z,1767323045000000007", T0 + 7),
        (",", RECEIVED_NS),
    ],
)
def test_time_forms(cells: str, expected: int) -> None:
    [r], errors = decode(f"time,time_ns,twin_id,channel,value\n{cells},a,b,1\n")
    assert errors == []
    assert r.time_ns == expected


def test_bad_rows_are_dead_letters_with_row_and_line_numbers() -> None:
    payload = (
        "twin_id,channel,value,time\n"
        "a,x,1,2026-01-02T03:04:05Z\n"
        "\n"
        "a,x,abc,2026-01-02T03:04:05Z\n"
        'a,"multi\nline",2,2026-01-02T03:04:05Z\n'
        "a,x,3\n"
        "a,x,4,2026-01-02T03:04:05\n"
        "a,x,5,1767323045\n"
    )
    result = decode_checked(codec, payload.encode())
    assert [r.value for r in result.readings] == [1.0, 5.0]
    assert reasons(result) == [
        "row 2 (line 4): value 'abc' is not a number",
        "row 3 (line 6): channel 'multi\\nline' contains a control character",
        "row 4 (line 7): 3 fields, the header has 4",
        "row 5 (line 8): time: timestamp '2026-01-02T03:04:05' has no timezone; add 'Z' or an offset",
    ]
    assert result.errors[0].raw == b"a,x,abc,2026-01-02T03:04:05Z\n"


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        ("a,x,nan,,", "value 'nan' is not a number"),
        ("a,x,inf,,", "value 'inf' is not a number"),
        ("a,x,1_000,,", "value '1_000' is not a number"),
        ("a,x,1e999,,", "value inf is not finite"),
        ("a,x,1,1.5,", "quality 1.5 is outside 0..1"),
        ("a,x,1,good,", "quality 'good' is not a number"),
        ("a,x,1,,12.5x", "time_ns '12.5x' is not an integer of nanoseconds"),
        ("a,x,1,,-1", "time -1 ns is outside 1970..2262"),
        (",x,1,,", "twin id is empty and the context gives none"),
    ],
)
def test_cell_problems(cells: str, reason: str) -> None:
    rs, errors = decode(f"twin_id,channel,value,quality,time_ns\n{cells}\n")
    assert rs == []
    assert errors == [f"row 1 (line 2): {reason}"]


def test_quoting_bom_crlf_and_quality() -> None:
    payload = '\ufefftwin_id,channel,value,quality,unit\r\n"pump, ""1""",temp,1.5,0.5,"m/s"\r\n'.encode()
    [r], errors = decode(payload)
    assert errors == []
    assert (r.twin_id, r.channel, r.value, r.quality, r.unit) == ('pump, "1"', "temp", 1.5, 0.5, "m/s")


def test_unreadable_csv_is_a_dead_letter_and_earlier_rows_stay() -> None:
    rs, errors = decode('twin_id,channel,value\na,x,1\na,"x"y,2\na,x,3\n')
    assert [r.value for r in rs] == [1.0, 3.0]
    assert len(errors) == 1
    assert errors[0].startswith("row 2 (line 3): ")


def test_invalid_utf8_and_header_only() -> None:
    rs, errors = decode(b"twin_id,channel,value\n\xffa,x,1\n")
    assert (rs, errors) == ([], ["invalid UTF-8 at offset 22"])
    assert decode("twin_id,channel,value\n") == ([], [])


def test_encode_header_and_rows() -> None:
    batch = ReadingBatch.from_readings(
        [Reading('p "1", x', "temp", 5, 0.1, "Cel"), Reading("p", "v", 6, -0.0)]
    )
    assert (
        codec.encode(batch)
        == b'time_ns,twin_id,channel,value,unit\n5,"p ""1"", x",temp,0.1,Cel\n6,p,v,-0.0,\n'
    )


def test_encode_adds_a_quality_column_only_when_a_reading_has_one() -> None:
    batch = ReadingBatch.from_readings([Reading("p", "v", 5, 1.0, quality=0.5), Reading("p", "v", 6, 2.0)])
    payload = codec.encode(batch)
    assert payload == b"time_ns,twin_id,channel,value,unit,quality\n5,p,v,1.0,,0.5\n6,p,v,2.0,,\n"
    rs, _ = decode(payload)
    assert rs[0].quality == 0.5
    assert math.isnan(rs[1].quality)
