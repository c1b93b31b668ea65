"""Hypothesis fuzzing of every decoder: arbitrary bytes and structure-aware mutations.

Whatever the input: no exception escapes, every reading is valid (codec_helpers.assert_sound),
and nothing is invented: readings never outnumber the records/lines/fields of the payload, and
their twin ids and channels come from the payload text (or the context).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from codec_helpers import batches, context, decode_checked, hostile_ids
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dte_stream.codecs import CODEC_NAMES, DecodeContext, DecodeResult, get_codec
from dte_stream.codecs.escaping import escape_field_key, escape_measurement, escape_tag

# Budgets keep the whole codec folder well under a minute on 2 busy cores; raise them locally
# (or run with --hypothesis-profile) when changing a decoder.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: For tests that first generate and encode whole batches (about 10x the cost per example).
FUZZ_BATCHES = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CTX_TWIN = "ctx-twin"
CTX_CHANNEL = "ctx-chan"

contexts = st.sampled_from(
    [
        context(),
        context(twin_id=CTX_TWIN),
        context(channel=CTX_CHANNEL),
        context(twin_id=CTX_TWIN, channel=CTX_CHANNEL),
    ]
)


# --- provenance: what a reading may be made of -------------------------------------------------


def _strings(document: Any) -> list[str]:
    """Every string (keys and values) in a parsed JSON document."""
    found: list[str] = []
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            found.extend(item)
            stack.extend(item.values())
    return found


def _assert_ids_from(result: DecodeResult, ctx: DecodeContext, texts: list[str], strip: str = "") -> None:
    """Every twin id and channel is the context's or a part of one of ``texts``."""
    table = str.maketrans("", "", strip)
    cleaned = [t.translate(table) for t in texts]
    for reading in result.readings:
        for found, fallback in ((reading.twin_id, ctx.twin_id), (reading.channel, ctx.channel)):
            if found == fallback:
                continue
            part = found.translate(table)
            assert any(part in text for text in cleaned), (found, texts[:5])


def _json_record_count(document: Any) -> int:
    if isinstance(document, list):
        return len(document)
    if isinstance(document, dict):
        inner = document.get("readings")
        return len(inner) if isinstance(inner, list) else 1
    return 0 if isinstance(document, str | bool) or document is None else 1


def _check_json_family(name: str, payload: bytes, ctx: DecodeContext) -> None:
    result = decode_checked(get_codec(name), payload, ctx)
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        assert len(result.readings) == 0
        return
    bound = (
        _json_record_count(document)
        if name == "json"
        else (len(document) if isinstance(document, list) else 0)
    )
    assert len(result.readings) <= bound
    _assert_ids_from(result, ctx, _strings(document))


def _check_line_protocol(payload: bytes, ctx: DecodeContext) -> None:
    result = decode_checked(get_codec("line_protocol"), payload, ctx)
    assert len(result.readings) <= payload.count(b"=")
    text = payload.decode("utf-8", "replace")
    _assert_ids_from(result, ctx, [text], strip="\\")


def _check_csv(payload: bytes, ctx: DecodeContext) -> None:
    result = decode_checked(get_codec("csv"), payload, ctx)
    assert len(result.readings) <= payload.count(b"\n") + payload.count(b"\r")
    if b"value" not in payload.lower():
        assert len(result.readings) == 0
    text = payload.decode("utf-8", "replace")
    _assert_ids_from(result, ctx, [text], strip='"')


CHECKS: dict[str, Callable[[bytes, DecodeContext], None]] = {
    "json": lambda payload, ctx: _check_json_family("json", payload, ctx),
    "senml": lambda payload, ctx: _check_json_family("senml", payload, ctx),
    "line_protocol": _check_line_protocol,
    "csv": _check_csv,
}


def _check(name: str, payload: bytes, ctx: DecodeContext) -> None:
    outcome = get_codec(name).decode(payload, ctx)  # labels for --hypothesis-show-statistics
    event(f"readings: {'some' if len(outcome.readings) else 'none'}")
    event(f"dead letters: {'some' if outcome.errors else 'none'}")
    check = CHECKS.get(name)
    if check is None:  # a codec without a dedicated oracle still gets the universal invariants
        decode_checked(get_codec(name), payload, ctx)
    else:
        check(payload, ctx)


# --- arbitrary bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CODEC_NAMES)
@FUZZ
@given(payload=st.binary(max_size=600), ctx=contexts)
def test_arbitrary_bytes(name: str, payload: bytes, ctx: DecodeContext) -> None:
    _check(name, payload, ctx)
    if name == "line_protocol" and b"=" not in payload:
        assert len(get_codec(name).decode(payload, ctx).readings) == 0


@pytest.mark.parametrize("name", CODEC_NAMES)
@FUZZ
@given(text=st.text(max_size=300), ctx=contexts)
def test_arbitrary_text(name: str, text: str, ctx: DecodeContext) -> None:
    _check(name, text.encode("utf-8", "surrogatepass"), ctx)


# --- mutations of valid payloads ---------------------------------------------------------------

edits = st.lists(
    st.tuples(
        st.sampled_from(["delete", "insert", "replace", "duplicate"]),
        st.floats(min_value=0, max_value=1),
        st.integers(min_value=1, max_value=8),
        st.binary(min_size=1, max_size=4)
        | st.sampled_from(
            [b"\\", b'"', b",", b"=", b" ", b"\n", b"\r", b"{", b"]", b":", b"#", b"\xff", b"i", b"e9"]
        ),
    ),
    min_size=1,
    max_size=6,
)


def _mutate(payload: bytes, changes: list[tuple[str, float, int, bytes]]) -> bytes:
    data = bytearray(payload)
    for op, where, length, chunk in changes:
        at = int(where * len(data))
        if op == "delete":
            del data[at : at + length]
        elif op == "insert":
            data[at:at] = chunk
        elif op == "replace":
            data[at : at + len(chunk)] = chunk
        else:
            data[at:at] = data[at : at + length]
    return bytes(data)


@pytest.mark.parametrize("name", CODEC_NAMES)
@FUZZ_BATCHES
@given(data=batches(min_time_ns=2**28 * 1_000_000_000, max_size=5), changes=edits, ctx=contexts)
def test_mutated_valid_payloads(
    name: str, data: Any, changes: list[tuple[str, float, int, bytes]], ctx: DecodeContext
) -> None:
    payload = _mutate(get_codec(name).encode(data), changes)
    _check(name, payload, ctx)


# --- random JSON documents for json and senml --------------------------------------------------

KEYS = [
    "twin_id", "twin", "channel", "value", "time", "time_ns", "unit", "quality", "readings",
    "bn", "bt", "bu", "bv", "bver", "bs", "n", "t", "u", "v", "s", "vs", "vb", "vd", "ut", "x_",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(10**10), max_value=2 * 10**9),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        ["pump-1", "pump-1:", "temp", "a/b", "x:y", "2026-01-02T03:04:05Z", "2026-01-02T03:04:05", "Cel", ""]
    ),
    hostile_ids(6),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), children, max_size=6)
    ),
    max_leaves=25,
)
records = st.dictionaries(st.sampled_from(KEYS), scalars, max_size=7)
documents = st.one_of(
    json_values,
    st.lists(records, max_size=8),
    records,
    st.fixed_dictionaries(
        {"readings": st.lists(records, max_size=6)}, optional={"twin_id": scalars, "channel": scalars}
    ),
)


@pytest.mark.parametrize("name", ["json", "senml"])
@FUZZ
@given(document=documents, ctx=contexts)
def test_random_json_documents(name: str, document: Any, ctx: DecodeContext) -> None:
    payload = json.dumps(document, allow_nan=True).encode("utf-8", "surrogatepass")
    _check(name, payload, ctx)


@st.composite
def mutated_documents(draw: st.DrawFn, name: str) -> Any:
    """A valid payload of ``name`` parsed back, with a few records changed, dropped or wrapped."""
    document: Any = orjson.loads(get_codec(name).encode(draw(batches(min_time_ns=2**28 * 10**9, max_size=5))))
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(document) - 1))
        record = document[index]
        op = draw(st.sampled_from(["set", "set", "delete", "duplicate", "replace"]))
        if op == "set" and isinstance(record, dict):
            record[draw(st.sampled_from(KEYS))] = draw(scalars | json_values)
        elif op == "delete" and isinstance(record, dict) and record:
            del record[draw(st.sampled_from(sorted(record)))]
        elif op == "duplicate":
            document.insert(index, record)
        else:
            document[index] = draw(scalars)
    if name == "json":
        form = draw(st.sampled_from(["array", "envelope", "single"]))
        if form == "envelope":
            document = {
                "readings": document,
                **draw(st.dictionaries(st.sampled_from(["twin_id", "channel"]), scalars)),
            }
        elif form == "single":
            document = document[0]
    return document


@pytest.mark.parametrize("name", ["json", "senml"])
@FUZZ_BATCHES
@given(data=st.data(), ctx=contexts)
def test_mutated_json_structures(name: str, data: st.DataObject, ctx: DecodeContext) -> None:
    document = data.draw(mutated_documents(name))
    payload = json.dumps(document, allow_nan=True).encode("utf-8", "surrogatepass")
    _check(name, payload, ctx)


# --- line-protocol-ish text --------------------------------------------------------------------

LP_TOKENS = [
    "m", "reading", ",", "=", " ", "  ", "\\", '"', "twin_id", "unit", "temp", "1", "1.5", "-2e3", ".5",
    "12i", "-9223372036854775809i", "18446744073709551616u", "7u", "t", "FALSE", "tRUE",
    "1767323045000000000", "-1", "99999999999999999999999", "\n", "\r\n", "#", "é", "\\ ", "\\,", "\\=",
    "\\\\", "1e999", "nan", "inf", '"str"', '"a\\"b"',
]  # fmt: skip
lp_soup = st.lists(st.sampled_from(LP_TOKENS) | st.text(max_size=2), max_size=60).map("".join)


@st.composite
def lp_lines(draw: st.DrawFn) -> str:
    """A line built from parts that are escaped correctly most of the time."""

    def part(escape: Callable[[str], str]) -> str:
        text = draw(hostile_ids(6) | st.sampled_from(["twin_id", "unit", "temp", "m"]))
        return escape(text) if draw(st.integers(0, 9)) else text

    line = part(escape_measurement)
    for _ in range(draw(st.integers(0, 3))):
        line += f",{part(escape_tag)}={part(escape_tag)}"
    values = st.sampled_from(
        ["1", "-2.5e3", "7i", "3u", "t", "false", '"s"', "x", "1e999", "9999999999999999999999i"]
    )
    fields = [f"{part(escape_field_key)}={draw(values)}" for _ in range(draw(st.integers(0, 3)))]
    line += " " + ",".join(fields)
    stamp = draw(st.none() | st.integers(min_value=-(10**20), max_value=10**20))
    return line if stamp is None else f"{line} {stamp}"


@FUZZ_BATCHES
@given(text=st.lists(lp_soup | lp_lines(), min_size=1, max_size=6).map("\n".join), ctx=contexts)
def test_line_protocol_like_text(text: str, ctx: DecodeContext) -> None:
    _check("line_protocol", text.encode("utf-8", "surrogatepass"), ctx)


# --- CSV-ish text ------------------------------------------------------------------------------

COLUMNS = [
    "time",
    "time_ns",
    "twin_id",
    "twin",
    "channel",
    "value",
    "unit",
    "quality",
    "other",
    " Value ",
    "TIME",
]
JUNK_CELLS = [
    "", "nan", "inf", "abc", "1_000", "2026-01-02T03:04:05", "2026-13-02T03:04:05Z", "-5", "2", "1e999",
    "99999999999999999999999", '"bad"quote', " spaced ", "\x00",
]  # fmt: skip
GOOD_CELLS: dict[str, st.SearchStrategy[str]] = {
    "time": st.sampled_from(
        ["2026-01-02T03:04:05Z", "1767323045.5", "1767323045", "2026-01-02T03:04:05.123456789+02:00"]
    ),
    "time_ns": st.integers(min_value=0, max_value=2**62).map(str),
    "twin_id": hostile_ids(6),
    "twin": hostile_ids(6),
    "channel": hostile_ids(6),
    "value": st.floats(allow_nan=False, allow_infinity=False).map(repr),
    "unit": st.sampled_from(["", "Cel", "m/s"]),
    "quality": st.sampled_from(["", "0", "0.5", "1"]),
}


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    """A header and rows that are valid most of the time, written by csv, then perhaps cut."""
    aliases = [
        ["time", "time_ns", "TIME"],
        ["twin_id", "twin"],
        ["channel"],
        ["value", " Value "],
        ["unit"],
        ["quality"],
    ]
    header = [draw(st.sampled_from(names)) for names in aliases if draw(st.integers(0, 5))]
    if not draw(st.integers(0, 3)):
        header.append(draw(st.sampled_from(COLUMNS)))  # an unknown or repeated column
    header = draw(st.permutations(header)) if header else ["other"]
    rows: list[list[str]] = []
    for _ in range(draw(st.integers(0, 6))):
        row = []
        for column in header:
            good = GOOD_CELLS.get(column.strip().lower())
            junk = st.sampled_from(JUNK_CELLS) | hostile_ids(4)
            row.append(draw(good if good is not None and draw(st.integers(0, 5)) else junk))
        if not draw(st.integers(0, 9)):
            row = row[:-1] if draw(st.booleans()) else [*row, "extra"]
        rows.append(row)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows([header, *rows])
    return buffer.getvalue()


@FUZZ_BATCHES
@given(text=csv_texts(), changes=st.sampled_from([None, None, None]) | edits, ctx=contexts)
def test_csv_like_text(
    text: str, changes: list[tuple[str, float, int, bytes]] | None, ctx: DecodeContext
) -> None:
    payload = text.encode("utf-8", "surrogatepass")
    _check("csv", payload if changes is None else _mutate(payload, changes), ctx)


# --- pathological sizes ------------------------------------------------------------------------


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000,
        b"1" * 500_000,
        b"a" * 300_000 + b" b=1 x",
        b"m," + b"k=v," * 50_000 + b" f=1",
        b"m f=" + b"1" * 300_000 + b"x",
        b"value\n" + b'"' + b"a" * 200_000,
        b"m f=1\n" * 20_000,
    ],
    ids=[
        "deep-json",
        "long-number",
        "long-measurement",
        "many-tags",
        "long-float",
        "huge-csv-field",
        "many-lines",
    ],
)
def test_pathological_payloads_stay_fast(name: str, payload: bytes) -> None:
    """Linear, not quadratic: well under a second on a quiet machine; the bound leaves room
    for a machine shared by many jobs (a quadratic decoder would take minutes here)."""
    start = time.perf_counter()
    decode_checked(get_codec(name), payload)
    assert time.perf_counter() - start < 10.0


def test_fuzz_checks_cover_every_registered_codec() -> None:
    assert set(CHECKS) == set(CODEC_NAMES), "add an oracle for the new codec in CHECKS"
