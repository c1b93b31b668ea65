"""The ``json`` codec: one reading object, an array of them, an envelope, or a bare number.

Parsed with orjson (the fast path). Records resolve their twin id and channel from the record,
then the envelope, then the :class:`~dte_stream.codecs.base.DecodeContext` (for example MQTT
topic levels); their time from ``time_ns``, then ``time``, then ``context.received_ns``.
A record-level dead letter carries the record re-serialised by orjson (cheap, equivalent JSON,
not the original bytes); a payload-level one carries the whole payload.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain, repeat
from operator import contains, itemgetter
from typing import Any, ClassVar

import numpy as np
import orjson

from dte_stream.codecs._common import (
    CodecBase,
    ReadingColumns,
    check_encodable,
    describe,
    quality_problem,
    seconds_to_ns,
)
from dte_stream.codecs.base import DecodeContext, DecodeResult, PayloadBatch
from dte_stream.readings import ReadingBatch, id_problem
from dte_stream.times import MAX_TIME_NS, MIN_TIME_NS, parse_time

__all__ = ["JsonCodec"]

#: How many valid ids the batch fast path remembers before it starts afresh.
_KNOWN_IDS_LIMIT = 1_000_000


def _record_bytes(record: object, payload: bytes) -> bytes:
    try:
        return orjson.dumps(record)
    except (TypeError, ValueError):  # pragma: no cover - anything orjson parsed, it can dump
        return payload


def _record_time(record: dict[str, Any], received_ns: int) -> int | str:
    """The record's time in ns, or the reason it has none usable."""
    time_ns = record.get("time_ns")
    if time_ns is not None:
        if isinstance(time_ns, bool) or not isinstance(time_ns, int):
            return f"time_ns {describe(time_ns)} is not an integer of nanoseconds"
        return time_ns
    time = record.get("time")
    if time is None:
        return received_ns
    if isinstance(time, str):
        if len(time) > 64:
            return f"time {describe(time)} is not an RFC 3339 timestamp"
        try:
            return parse_time(time)
        except (ValueError, OverflowError) as exc:
            return f"time: {exc}"
    if isinstance(time, bool) or not isinstance(time, int | float):
        return f"time {describe(time)} is neither an RFC 3339 string nor epoch seconds"
    try:
        return seconds_to_ns(time)
    except ValueError as exc:
        return str(exc)


_first = itemgetter(0)


_OPEN_LIST, _CLOSE_LIST, _OPEN_OBJECT, _CLOSE_OBJECT = b"[]{}"


def _batch_documents(values: list[bytes], max_payload_bytes: int) -> list[Any] | None:
    """Every payload parsed by orjson, or None when one is too large or not JSON.

    The payloads are parsed by one ``orjson.loads`` of ``[p1,p2,...]`` when
    :func:`_joined_is_split` proves that this gives each payload's own document (one call
    instead of one per payload: about a quarter less time a record); otherwise by
    ``orjson.loads`` per payload.
    """
    n = len(values)
    # One copy of the payloads, not two: the brackets go onto the first and last payloads.
    ends = [b"[" + values[0] + b"]"] if n == 1 else [b"[" + values[0], values[-1] + b"]"]
    joined = b",".join([ends[0], *values[1:-1], ends[-1]] if n > 1 else ends)
    if len(joined) - n - 1 > max_payload_bytes and max(map(len, values)) > max_payload_bytes:
        return None  # (the sum of the sizes is within the limit: then so is each size)
    if _joined_is_split(values, joined):
        try:
            documents: list[Any] = orjson.loads(joined)
        except orjson.JSONDecodeError:
            documents = []
        if len(documents) == n:
            return documents
    try:
        return list(map(orjson.loads, values))
    except orjson.JSONDecodeError:
        return None


def _joined_is_split(values: list[bytes], joined: bytes) -> bool:
    """True when, if ``joined`` (``[p1,p2,...]``) is valid JSON, its elements are the payloads.

    Valid JSON alone is not enough: payloads ``1,2``, or ``[1],[2]``, ``[3`` and ``4]`` (three
    elements from three payloads), join into valid JSON while none of them is JSON on its own. The test, one
    numpy pass over the bytes: every payload starts with ``[`` and ends with ``]`` and the
    joined bytes hold no other ``[`` or ``]`` than those and the outer two (or the same with
    ``{`` and ``}``, the outer brackets aside). Then every such byte is structural (a valid
    document with n + 1 arrays has at least n + 1 structural ``[``, and that is all of them:
    none sits inside a string), so each payload's last byte closes the array that its first
    byte opened, the comma after it separates top-level elements, and element i is payload i.
    Payloads with white space around them, nested arrays (objects) or brackets inside strings
    fail the test and are parsed one by one, as before.
    """
    sizes = np.fromiter(map(len, values), dtype=np.intp, count=len(values))
    if not sizes.size or sizes.min() == 0:
        return False
    raw = np.frombuffer(joined, dtype=np.uint8)
    after = np.cumsum(sizes + 1)  # the byte after payload i: a comma, or the closing bracket
    first, last = raw[after - sizes], raw[after - 1]
    opening = int(first[0])
    if opening == _OPEN_LIST:
        closing, outer = _CLOSE_LIST, 1
    elif opening == _OPEN_OBJECT:
        closing, outer = _CLOSE_OBJECT, 0
    else:
        return False
    count = sizes.size + outer
    return bool(
        (first == opening).all()
        and (last == closing).all()
        and np.count_nonzero(raw == opening) == count
        and np.count_nonzero(raw == closing) == count
    )


class JsonCodec(CodecBase):
    """Readings as JSON objects, decoded with orjson; see ``docs/codecs.md`` for every form.

    >>> from dte_stream.codecs.base import DecodeContext
    >>> codec = JsonCodec()
    >>> payload = b'{"twin_id": "pump-1", "channel": "temp", "value": 21.5, "time_ns": 1000}'
    >>> result = codec.decode(payload, DecodeContext("doc"))
    >>> result.readings.to_readings()[0].value, result.errors
    (21.5, [])
    >>> codec.decode(b"22.5", DecodeContext("mqtt", twin_id="pump-1", channel="temp")).readings.value
    array([22.5])
    >>> codec.encode(result.readings)
    b'[{"twin_id":"pump-1","channel":"temp","time_ns":1000,"value":21.5}]'
    """

    name: ClassVar[str] = "json"
    carries_quality: ClassVar[bool] = True

    def __init__(self) -> None:
        # Ids (twin ids, channels) already found valid: each distinct id is checked once.
        self._valid_ids: set[str] = set()

    def decode_many(self, payloads: Sequence[tuple[bytes, DecodeContext]]) -> DecodeResult:
        """Decode many payloads into one batch; never raises.

        A :class:`~dte_stream.codecs.base.PayloadBatch` whose payloads are all plain reading
        records (one object or an array of objects each, with ``twin_id`` or a context twin
        id, ``channel``, a number ``value`` and an integer ``time_ns``) is decoded in one
        pass: one ``orjson.loads`` of all the payloads joined into an array when that provably
        gives each payload's own document (see :func:`_joined_is_split`), else one per payload;
        each column gathered by one ``map`` and validated at once (types by set, ids once per
        distinct value, times and values with numpy). Anything else in the batch, good or
        bad, sends the whole batch through the per-payload decoder, so the readings and dead
        letters are exactly those of :meth:`decode` on each payload.
        """
        if isinstance(payloads, PayloadBatch) and len(payloads):
            fast = self._decode_columns(payloads)
            if fast is not None:
                return fast
        return super().decode_many(payloads)

    def _decode_columns(self, payloads: PayloadBatch) -> DecodeResult | None:
        """The batch fast path; None when any payload needs the per-payload decoder."""
        values = payloads.values
        documents = _batch_documents(values, payloads.max_payload_bytes)
        if documents is None:
            return None
        kinds = set(map(type, documents))
        owner: list[int] | None = None  # payload of each record; None: record i is payload i
        if kinds == {list}:
            if set(map(len, documents)) == {1}:
                records = list(map(_first, documents))
            elif min(sizes := list(map(len, documents))) == 0:
                return None
            else:
                records = list(chain.from_iterable(documents))
                owner = [i for i, size in enumerate(sizes) for _ in range(size)]
        elif kinds == {dict}:
            if any("readings" in d for d in documents):
                return None
            records = documents
        else:
            return None
        if set(map(type, records)) != {dict}:
            return None
        # Every record is a dict: the columns are gathered by dict.get through map, no Python
        # frame per record (a comprehension or generator costs about 40 ns more a record).
        n = len(records)
        twins: list[Any] = list(map(dict.get, records, repeat("twin_id", n)))
        twins_from_context = None in twins
        if twins_from_context:
            for i in [i for i, twin in enumerate(twins) if twin is None]:
                named = records[i].get("twin")
                twins[i] = named if named is not None else payloads.twin_id(i if owner is None else owner[i])
        channels: list[Any] = list(map(dict.get, records, repeat("channel", n)))
        if None in channels:
            return None
        numbers = list(map(dict.get, records, repeat("value", n)))
        times = list(map(dict.get, records, repeat("time_ns", n)))
        if not set(map(type, numbers)) <= {float, int} or set(map(type, times)) != {int}:
            return None
        # Records of exactly twin_id, channel, value and time_ns (all found above) have no unit
        # or quality; only other records are searched for those keys.
        exact = not twins_from_context and set(map(len, records)) == {4}
        if not exact and (
            any(map(contains, records, repeat("unit", n)))
            or any(map(contains, records, repeat("quality", n)))
        ):
            return None
        try:
            twin_width = self._id_width(twins, "twin id")
            channel_width = self._id_width(channels, "channel")
            if twin_width is None or channel_width is None:
                return None
            time_ns = np.array(times, dtype=np.int64)
            value = np.array(numbers, dtype=np.float64)
        except (TypeError, OverflowError):  # an unhashable id, an integer past int64/float
            return None
        if time_ns.min() < MIN_TIME_NS or time_ns.max() >= MAX_TIME_NS or not np.isfinite(value).all():
            return None
        # The widths are known, so numpy copies the strings without a pass to find the longest
        # (about half the cost of np.asarray(ids, dtype=np.str_)); no id is cut: the width is
        # that of the longest.
        twin_ids = np.array(twins, dtype=f"<U{twin_width}")
        channel_ids = np.array(channels, dtype=f"<U{channel_width}")
        batch = ReadingBatch.from_columns(twin_ids, channel_ids, time_ns, value)
        return DecodeResult(batch, [])

    def _id_width(self, ids: list[Any], kind: str) -> int | None:
        """The length of the longest id when every id is a valid ``kind``, else None.

        Each distinct id is checked once, then remembered.
        """
        distinct = set(ids)
        known = self._valid_ids
        fresh = distinct - known
        for text in fresh:
            if id_problem(kind, text) is not None:
                return None
        if fresh:
            if len(known) + len(fresh) > _KNOWN_IDS_LIMIT:
                known.clear()
            known.update(fresh)
        return max(map(len, distinct))

    def _decode_into(self, payload: bytes, context: DecodeContext, out: ReadingColumns) -> None:
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            out.reject(f"invalid JSON: {exc}", payload)
            return
        default_twin = context.twin_id
        default_channel = context.channel
        if isinstance(document, int | float) and not isinstance(document, bool):
            self._bare_number(document, payload, context, out)
            return
        records: list[Any]
        if isinstance(document, list):
            records = document
        elif isinstance(document, dict):
            if "readings" not in document:
                records = [document]
            else:
                inner = document["readings"]
                if not isinstance(inner, list):
                    out.reject(f'"readings" must be an array, got {describe(inner)}', payload)
                    return
                records = inner
                envelope_twin = document.get("twin_id")
                if envelope_twin is None:
                    envelope_twin = document.get("twin")
                envelope_channel = document.get("channel")
                if envelope_twin is not None:
                    default_twin = envelope_twin
                if envelope_channel is not None:
                    default_channel = envelope_channel
        else:
            out.reject(
                "expected a reading object, an array of readings, an object with a "
                f'"readings" array, or a number; got {describe(document)}',
                payload,
            )
            return
        received = context.received_ns
        for index, record in enumerate(records):
            problem = self._record(record, default_twin, default_channel, received, out)
            if problem is not None:
                out.reject(f"record {index}: {problem}", _record_bytes(record, payload))

    @staticmethod
    def _bare_number(value: float, payload: bytes, context: DecodeContext, out: ReadingColumns) -> None:
        if context.twin_id is None or context.channel is None:
            out.reject(
                "a bare number needs the twin id and channel from the context "
                "(for example MQTT topic levels); the context gives "
                f"twin id {context.twin_id!r} and channel {context.channel!r}",
                payload,
            )
            return
        problem = out.add(context.twin_id, context.channel, context.received_ns, value)
        if problem is not None:
            out.reject(f"record 0: {problem}", payload)

    @staticmethod
    def _record(
        record: object,
        default_twin: object,
        default_channel: object,
        received_ns: int,
        out: ReadingColumns,
    ) -> str | None:
        """Add one record's reading; return why it cannot be one, or None."""
        if not isinstance(record, dict):
            return f"expected a reading object, got {describe(record)}"
        twin = record.get("twin_id")
        if twin is None:
            twin = record.get("twin")
            if twin is None:
                twin = default_twin
        if twin is None:
            return "no twin_id and no twin id from the context"
        channel = record.get("channel")
        if channel is None:
            channel = default_channel
        if channel is None:
            return "no channel and no channel from the context"
        value = record.get("value")
        if value is None:
            return "no value"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"value {describe(value)} is not a number"
        time_ns = _record_time(record, received_ns)
        if isinstance(time_ns, str):
            return time_ns
        unit = record.get("unit")
        if unit is None:
            unit = ""
        quality = record.get("quality")
        if quality is None:
            quality = math.nan
        else:
            problem = quality_problem(quality)
            if problem:
                return problem
        return out.add(twin, channel, time_ns, value, unit, float(quality))

    def encode(self, readings: ReadingBatch) -> bytes:
        """A JSON array of reading objects with ``time_ns``; ``unit`` and ``quality`` only when set.

        Floats are written by orjson in their shortest exact form, so they decode bit for bit.
        """
        check_encodable(readings, self.name)
        twins = readings.twin_id.tolist()
        channels = readings.channel.tolist()
        times = readings.time_ns.tolist()
        values = readings.value.tolist()
        units = readings.unit.tolist()
        qualities = readings.quality.tolist()
        records: list[dict[str, object]] = []
        for twin, channel, time_ns, value, unit, quality in zip(
            twins, channels, times, values, units, qualities, strict=True
        ):
            record: dict[str, object] = {
                "twin_id": twin,
                "channel": channel,
                "time_ns": time_ns,
                "value": value,
            }
            if unit:
                record["unit"] = unit
            if not math.isnan(quality):
                record["quality"] = quality
            records.append(record)
        return orjson.dumps(records)
