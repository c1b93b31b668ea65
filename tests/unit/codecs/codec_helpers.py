"""Strategies and checks shared by the codec tests (imported by name, like store_helpers)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from dte_stream.codecs import DECODER_BUG, Codec, DecodeContext, DecodeResult
from dte_stream.readings import Reading, ReadingBatch, check_reading, id_problem
from dte_stream.times import MAX_TIME_NS, MIN_TIME_NS

#: 2026-01-02T03:04:05Z, the "now" of every test context.
RECEIVED_NS = 1_767_323_045_000_000_000

#: Characters that break naive serialisers: separators and escapes of every format, quotes,
#: unicode line and paragraph separators, NEL, non-breaking and wide spaces, emoji.
HOSTILE_CHARS = [*" ,=\"\\'#:/.;{}[]\u2028\u2029\x85\xa0\u3000é中🚀", "\\\\", "\\ ", "\\,", "a"]


def context(**overrides: object) -> DecodeContext:
    """A decode context with a fixed receive time; keyword arguments override fields."""
    fields: dict[str, object] = {"source": "test", "received_ns": RECEIVED_NS}
    fields.update(overrides)
    return DecodeContext(**fields)  # type: ignore[arg-type]


def hostile_ids(max_size: int = 24) -> st.SearchStrategy[str]:
    """Valid ids (per id_problem) full of characters that formats must escape."""
    alphabet = st.one_of(st.sampled_from(HOSTILE_CHARS), st.characters(exclude_categories=("Cs", "Cc")))
    return (
        st.lists(alphabet, min_size=1, max_size=max_size)
        .map(lambda parts: "".join(parts).strip())
        .filter(lambda text: id_problem("twin id", text) is None)
    )


def units() -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), st.sampled_from(["Cel", "m/s", "%RH", "kW h"]), hostile_ids(8))


def finite_floats() -> st.SearchStrategy[float]:
    return st.floats(allow_nan=False, allow_infinity=False)


def readings(min_time_ns: int = MIN_TIME_NS) -> st.SearchStrategy[Reading]:
    """Valid readings with hostile ids, any finite float, any time the codec can encode."""
    return st.builds(
        Reading,
        twin_id=hostile_ids(),
        channel=hostile_ids(),
        time_ns=st.one_of(
            st.integers(min_value=min_time_ns, max_value=MAX_TIME_NS - 1),
            st.integers(min_value=RECEIVED_NS, max_value=RECEIVED_NS + 10**12),
        ),
        value=finite_floats(),
        unit=units(),
        quality=st.one_of(st.just(math.nan), st.floats(min_value=0.0, max_value=1.0)),
    )


def batches(min_time_ns: int = MIN_TIME_NS, max_size: int = 12) -> st.SearchStrategy[ReadingBatch]:
    """Non-empty batches; twins repeat often so grouping encoders are exercised."""

    @st.composite
    def build(draw: st.DrawFn) -> ReadingBatch:
        rs = draw(st.lists(readings(min_time_ns), min_size=1, max_size=max_size))
        if len(rs) > 1 and draw(st.booleans()):  # reuse a few twin ids across the batch
            twins = [r.twin_id for r in rs[:3]]
            rs = [
                Reading(draw(st.sampled_from(twins)), r.channel, r.time_ns, r.value, r.unit, r.quality)
                for r in rs
            ]
        return ReadingBatch.from_readings(rs)

    return build()


def reading_key(reading: Reading, *, unit: bool = True, quality: bool = True) -> tuple[object, ...]:
    """A sortable form of a reading: floats by their bits, NaN quality as "none"."""
    q = reading.quality
    return (
        reading.twin_id,
        reading.channel,
        reading.time_ns,
        float(reading.value).hex(),
        reading.unit if unit else "",
        ("none" if math.isnan(q) else float(q).hex()) if quality else "",
    )


def assert_sound(result: DecodeResult, ctx: DecodeContext) -> None:
    """The invariants of every decode result, whatever the input."""
    assert isinstance(result, DecodeResult)
    batch = result.readings
    assert isinstance(batch, ReadingBatch)
    n = len(batch)
    assert batch.time_ns.dtype == np.int64
    assert batch.value.dtype == np.float64
    assert batch.quality.dtype == np.float64
    for column in (batch.twin_id, batch.channel, batch.unit):
        assert column.dtype.kind == "U"
    for array in (batch.time_ns, batch.twin_id, batch.channel, batch.unit, batch.value, batch.quality):
        assert array.shape == (n,)
    for reading in batch:
        problem = check_reading(
            reading.twin_id, reading.channel, reading.time_ns, reading.value, reading.unit
        )
        assert problem is None, (problem, reading)
        assert math.isnan(reading.quality) or 0.0 <= reading.quality <= 1.0
        assert MIN_TIME_NS <= reading.time_ns < MAX_TIME_NS
    assert isinstance(result.errors, list)
    for dead in result.errors:
        assert dead.source == ctx.source
        assert isinstance(dead.raw, bytes)
        assert dead.reason
        assert not dead.reason.startswith(DECODER_BUG), dead.reason


def decode_checked(codec: Codec, payload: bytes, ctx: DecodeContext | None = None) -> DecodeResult:
    """Decode, assert the universal invariants, return the result."""
    ctx = ctx or context()
    result = codec.decode(payload, ctx)
    assert_sound(result, ctx)
    return result


def reasons(result: DecodeResult) -> list[str]:
    return [dead.reason for dead in result.errors]
