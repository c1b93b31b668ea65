"""The ``json`` codec: one reading object, an array of them, an envelope, or a bare number.

Parsed with orjson (the fast path). Records resolve their twin id and channel from the record,
then the envelope, then the :class:`~dte_stream.codecs.base.DecodeContext` (for example MQTT
topic levels); their time from ``time_ns``, then ``time``, then ``context.received_ns``.
A record-level dead letter carries the record re-serialised by orjson (cheap, equivalent JSON,
not the original bytes); a payload-level one carries the whole payload.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import orjson

from dte_stream.codecs._common import (
    CodecBase,
    ReadingColumns,
    check_encodable,
    describe,
    quality_problem,
    seconds_to_ns,
)
from dte_stream.codecs.base import DecodeContext
from dte_stream.readings import ReadingBatch
from dte_stream.times import parse_time

__all__ = ["JsonCodec"]


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
