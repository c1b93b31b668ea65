"""decode_many is decode over each payload, concatenated: for every codec, any payloads."""

from __future__ import annotations

import pytest
from codec_helpers import batches, context, reading_key
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.codecs import CODEC_NAMES, get_codec
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
