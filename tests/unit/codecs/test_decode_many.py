"""decode_many is decode over each payload, concatenated: for every codec, any payloads."""

from __future__ import annotations

from typing import Any

import pytest
from codec_helpers import batches, context, reading_key
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.codecs import CODEC_NAMES, get_codec
from dte_stream.codecs.base import ContextPayloads
from dte_stream.readings import ReadingBatch

GARBAGE = st.sampled_from([b"", b"   ", b"\xff\xfe", b"{", b"[1,2", b"x y=z", b"a,b\n1,2,3", b"null"])


@pytest.mark.parametrize("name", CODEC_NAMES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_decode_many_equals_each_decode_concatenated(name: str, data: st.DataObject) -> None:
    codec = get_codec(name)
    min_time = getattr(codec, "min_encodable_time_ns", 0)
    payloads = []
    for i, kind in enumerate(data.draw(st.lists(st.booleans(), min_size=1, max_size=6))):
        payload = codec.encode(data.draw(batches(min_time_ns=min_time))) if kind else data.draw(GARBAGE)
        payloads.append((payload, context(source=f"test:{i}", twin_id="ctx-twin", channel="ctx-chan")))

    together = codec.decode_many(payloads)
    each = [codec.decode(p, c) for p, c in payloads]
    expected = ReadingBatch.concat([r.readings for r in each])
    assert [reading_key(r) for r in together.readings] == [reading_key(r) for r in expected]
    assert [(e.source, e.reason, e.raw) for e in together.errors] == [
        (e.source, e.reason, e.raw) for r in each for e in r.errors
    ]


def _plain_record(reading: object, with_twin: bool) -> bytes:
    import orjson

    r = reading  # a Reading
    record = {"channel": r.channel, "time_ns": r.time_ns, "value": r.value}  # type: ignore[attr-defined]
    if with_twin:
        record["twin_id"] = r.twin_id  # type: ignore[attr-defined]
    return orjson.dumps([record])


PLAIN_GARBAGE = st.sampled_from(
    [
        b'[{"channel":"c","time_ns":1,"value":true}]',
        b'[{"channel":"c","time_ns":1.5,"value":1}]',
        b'[{"channel":"","time_ns":1,"value":1}]',
        b'[{"channel":"c","time_ns":-1,"value":1}]',
        b'[{"channel":"c","time_ns":99999999999999999999,"value":1}]',
        b'[{"channel":"c","value":1}]',
        b'[{"channel":"c","time_ns":1,"value":1e999}]',
        b'[{"channel":"c","time_ns":1,"value":1,"unit":"Cel","quality":0.5}]',
        b'{"readings":[{"channel":"c","time_ns":1,"value":1}],"twin_id":"t"}',
        b"[]",
        b"[1]",
        b"",
        b"{",
    ]
)


@pytest.mark.parametrize("name", CODEC_NAMES)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_decode_many_of_a_payload_batch_equals_each_decode(name: str, data: st.DataObject) -> None:
    """The columnar fast path (a PayloadBatch of plain records) gives what decode gives, and so
    does the per-payload fallback when any payload in the batch is not plain or is bad."""
    from codec_helpers import readings

    codec = get_codec(name)
    pairs = []
    for i in range(data.draw(st.integers(min_value=1, max_value=8))):
        kind = data.draw(st.sampled_from(["plain", "plain", "keyed", "garbage"]))
        if kind == "garbage" or name != "json":
            payload = data.draw(PLAIN_GARBAGE if name == "json" else GARBAGE)
        else:
            payload = _plain_record(data.draw(readings()), with_twin=kind == "plain")
        pairs.append((payload, context(source=f"test:{i}", twin_id=f"key-{i % 3}")))

    _assert_together_is_each(codec, pairs)


def test_plain_records_are_decoded_without_a_context_per_payload() -> None:
    """The fast path never asks for a context when the records carry twin id and time."""
    from dte_stream.codecs.base import PayloadBatch

    class NoContexts(PayloadBatch):
        def context(self, index: int) -> object:  # type: ignore[override]
            raise AssertionError("a context was made")

    values = [
        b'[{"twin_id":"p-%d","channel":"temp","time_ns":%d,"value":%d.5}]' % (i, 10**18 + i, i)
        for i in range(5)
    ]
    result = get_codec("json").decode_many(NoContexts(values, 1 << 20))
    assert result.errors == []
    assert result.readings.twin_id.tolist() == [f"p-{i}" for i in range(5)]
    assert result.readings.value.tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]


# -- the json codec's one orjson call per batch ------------------------------------------------

_A = b'{"twin_id":"p-1","channel":"temp","time_ns":1000000000000000000,"value":1.5}'
_B = b'{"twin_id":"p-2","channel":"temp","time_ns":1000000000000000001,"value":2.5}'
_C_OPEN = b'{"twin_id":"p-3","channel":"temp","time_ns":1000000000000000002,"value":3.5,"pad":'

#: Batches whose payloads, joined as ``[p1,p2,...]``, are valid JSON with one element per
#: payload, while no payload (or not every one) is JSON on its own.
JOINED_ONLY = [
    [b"[" + _A + b"],[" + _B + b"]", b"[" + _C_OPEN + b"[1", b"2]}]"],
    [_A + b"," + _B, _C_OPEN + b'{"x":1', b'"y":2}}'],
    [b"[" + _A + b"]", b"1,2"],
    [b"[" + _A + b'],["', b'"]'],
    [b"[" + _A + b"],[" + _B + b"]", b"[" + _C_OPEN + b'"]', b'[x"}]'],
]


def _assert_decode_many_is_each_decode(values: list[bytes]) -> None:
    pairs = [(v, context(source=f"test:{i}", twin_id=f"key-{i}")) for i, v in enumerate(values)]
    _assert_together_is_each(get_codec("json"), pairs)


def _assert_together_is_each(codec: Any, pairs: list[tuple[bytes, Any]]) -> None:
    """``decode_many`` of the pairs gives exactly the readings and dead letters of ``decode`` on each."""
    together = codec.decode_many(ContextPayloads(pairs))
    each = [codec.decode(p, c) for p, c in pairs]
    expected = ReadingBatch.concat([r.readings for r in each])
    assert [reading_key(r) for r in together.readings] == [reading_key(r) for r in expected]
    assert [(e.source, e.reason, e.raw) for e in together.errors] == [
        (e.source, e.reason, e.raw) for r in each for e in r.errors
    ]


@pytest.mark.parametrize("values", JOINED_ONLY)
def test_payloads_that_are_json_only_when_joined_are_refused_one_by_one(values: list[bytes]) -> None:
    import orjson

    from dte_stream.codecs.json import _joined_is_split

    joined = b"[" + b",".join(values) + b"]"
    if values[1] != b"1,2":  # the trap: valid together, one element a payload
        assert len(orjson.loads(joined)) == len(values)
    assert not _joined_is_split(values, joined)
    _assert_decode_many_is_each_decode(values)
    errors = get_codec("json").decode_many(_payload_batch(values)).errors
    assert any("invalid JSON" in e.reason for e in errors)


def _payload_batch(values: list[bytes]) -> ContextPayloads:
    return ContextPayloads([(v, context(source=f"test:{i}")) for i, v in enumerate(values)])


def test_plain_payloads_take_the_joined_parse() -> None:
    from dte_stream.codecs.json import _joined_is_split

    for values in ([b"[" + _A + b"]", b"[" + _B + b"]"], [_A, _B], [b"[" + _A + b"," + _B + b"]"]):
        assert _joined_is_split(values, b"[" + b",".join(values) + b"]")
    for values in ([b" [" + _A + b"]"], [b"[" + _A + b"]", _B], [b"[" + _A + b"]", b""], [b"1"]):
        assert not _joined_is_split(values, b"[" + b",".join(values) + b"]")


def test_a_batch_mixing_good_and_bad_payloads_gives_the_readings_and_letters_of_each() -> None:
    values = [
        b"[" + _A + b"]",
        b"1,2",
        b"[" + _B + b"]",
        b'[{"twin_id":"p-9","channel":"temp","time_ns":1,"value":"warm"}]',
        b'[{"twin_id":"p-9","channel":"t[1]","time_ns":1,"value":1}]',
        b"",
    ]
    _assert_decode_many_is_each_decode(values)
    result = get_codec("json").decode_many(_payload_batch(values))
    assert result.readings.twin_id.tolist() == ["p-1", "p-2", "p-9"]
    assert [e.source for e in result.errors] == ["test:1", "test:3", "test:5"]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_payloads_cut_anywhere_decode_as_each_payload(data: st.DataObject) -> None:
    """Valid records joined, then cut at arbitrary bytes into payloads: whatever the cuts, the
    batch decodes exactly as each payload on its own (mostly dead letters)."""
    from codec_helpers import readings

    records = [
        _plain_record(r, with_twin=True) for r in data.draw(st.lists(readings(), min_size=1, max_size=5))
    ]
    if data.draw(st.booleans()):
        records = [r[1:-1] for r in records]  # objects rather than one-element arrays
    text = b",".join(records)
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=len(text) - 1), max_size=4)))
    values = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    _assert_decode_many_is_each_decode(values)
