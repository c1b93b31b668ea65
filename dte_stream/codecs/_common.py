"""What every codec shares: the payload gate, the column builder, time and number helpers.

Private to :mod:`dte_stream.codecs`. :class:`CodecBase` turns the "decode never raises" rule
into one place: it refuses empty and oversize payloads before any parsing, hands the rest to
the codec's ``_decode_into``, and turns an unexpected exception (a bug, never bad input) into a
dead letter whose reason starts with :data:`DECODER_BUG` so the fuzz tests can see it.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, cast

import numpy as np

from dte_stream.codecs.base import DecodeContext, DecodeResult
from dte_stream.errors import DteStreamError
from dte_stream.readings import DeadLetter, ReadingBatch, check_reading, id_problem
from dte_stream.times import MAX_TIME_NS, MIN_TIME_NS, NS_PER_S, parse_time

__all__ = [
    "DECODER_BUG",
    "CodecBase",
    "EncodeError",
    "ReadingColumns",
    "check_encodable",
    "decimal_seconds_to_ns",
    "describe",
    "float_text",
    "parse_time_text",
    "quality_problem",
    "refuse_payload",
    "seconds_to_ns",
]

#: Prefix of the reason of a dead letter made from an unexpected exception inside a decoder.
DECODER_BUG = "decoder bug"

#: Float seconds larger than this (about 544 years) cannot be a time of a reading.
_MAX_FLOAT_SECONDS = float(2**34)

#: Plain decimal seconds ("1767323045", "-12.5", "1767323045.123456789"): converted exactly.
_DECIMAL_SECONDS = re.compile(r"([+-]?)(\d{1,12})(?:\.(\d+))?", re.ASCII)
#: Any decimal number in the notation JSON, CSV and line protocol share (no "inf", "nan", "_").
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


class EncodeError(DteStreamError, ValueError):
    """A batch holds readings that a codec cannot represent (for example a SenML time
    before 2**28 s, which RFC 8428 reads as relative, or an invalid id slipped past checks)."""


def describe(value: object) -> str:
    """A short JSON-flavoured rendering of ``value`` for a dead-letter reason; never large."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def float_text(value: float) -> str:
    """The shortest decimal text that reads back as exactly ``value`` (Python's repr)."""
    return repr(float(value))


def seconds_to_ns(seconds: int | float) -> int:
    """Epoch (or relative) seconds to int nanoseconds; ints exactly, floats to the nearest ns.

    Raises ``ValueError`` for NaN, infinities and magnitudes no reading time can have.
    """
    if isinstance(seconds, int):
        if abs(seconds) > 2**34:
            raise ValueError(f"time {seconds!r} s is outside 1970..2262")
        return seconds * NS_PER_S
    if not math.isfinite(seconds) or abs(seconds) > _MAX_FLOAT_SECONDS:
        raise ValueError(f"time {describe(seconds)} s is outside 1970..2262")
    return round(seconds * NS_PER_S)


def decimal_seconds_to_ns(text: str) -> int:
    """Decimal seconds as text to int nanoseconds, exactly when there is no exponent.

    Digits past the ninth decimal are cut (truncated toward zero). Raises ``ValueError``.
    """
    m = _DECIMAL_SECONDS.fullmatch(text)
    if m:
        sign, whole, frac = m.groups()
        ns = int(whole) * NS_PER_S + (int(frac[:9].ljust(9, "0")) if frac else 0)
        return -ns if sign == "-" else ns
    if _NUMBER.fullmatch(text):
        return seconds_to_ns(float(text))
    raise ValueError(f"time {describe(text)} is not a number of seconds")


def parse_time_text(text: str) -> int:
    """An RFC 3339 timestamp with timezone, or decimal epoch seconds, to int nanoseconds."""
    if _NUMBER.fullmatch(text):
        return decimal_seconds_to_ns(text)
    try:
        return parse_time(text)
    except (ValueError, OverflowError) as exc:
        raise ValueError(str(exc)) from None


def quality_problem(quality: object) -> str | None:
    """Why ``quality`` is not a sensor confidence in [0, 1], or None when it is."""
    if isinstance(quality, bool) or not isinstance(quality, int | float):
        return f"quality {describe(quality)} is not a number"
    if not 0.0 <= quality <= 1.0:  # also refuses NaN
        return f"quality {describe(quality)} is outside 0..1"
    return None


def refuse_payload(payload: object, context: DecodeContext) -> DeadLetter | None:
    """A dead letter for a payload that must not be parsed at all (wrong type, empty,
    larger than ``context.max_payload_bytes``), or None when it may be parsed."""
    received = context.received_ns
    if not isinstance(payload, bytes):
        return DeadLetter(
            context.source,
            f"payload must be bytes, got {type(payload).__name__}",
            b"",
            received,
        )
    size = len(payload)
    if size > context.max_payload_bytes:
        return DeadLetter(
            context.source,
            f"payload of {size} bytes is larger than the limit of "
            f"{context.max_payload_bytes} bytes; not read",
            payload,
            received,
        )
    if not payload.strip():
        return DeadLetter(context.source, "empty payload", payload, received)
    return None


class ReadingColumns:
    """Collects one payload's readings as column lists and its dead letters.

    Decoders append per record and call :meth:`result` once, which builds one
    :class:`ReadingBatch` per payload (never one per reading).
    """

    __slots__ = ("channel", "context", "errors", "quality", "time_ns", "twin_id", "unit", "value")

    def __init__(self, context: DecodeContext) -> None:
        self.context = context
        self.twin_id: list[str] = []
        self.channel: list[str] = []
        self.time_ns: list[int] = []
        self.value: list[float] = []
        self.unit: list[str] = []
        self.quality: list[float] = []
        self.errors: list[DeadLetter] = []

    def add(
        self,
        twin_id: object,
        channel: object,
        time_ns: object,
        value: object,
        unit: object = "",
        quality: float = math.nan,
    ) -> str | None:
        """Validate with :func:`check_reading` and keep the reading; return the problem if any."""
        problem = check_reading(twin_id, channel, time_ns, value, unit)
        if problem is None:
            self.append(
                cast(str, twin_id),
                cast(str, channel),
                cast(int, time_ns),
                float(cast(float, value)),
                cast(str, unit),
                quality,
            )
        return problem

    def append(
        self, twin_id: str, channel: str, time_ns: int, value: float, unit: str, quality: float
    ) -> None:
        """Keep a reading already validated by the caller."""
        self.twin_id.append(twin_id)
        self.channel.append(channel)
        self.time_ns.append(time_ns)
        self.value.append(value)
        self.unit.append(unit)
        self.quality.append(quality)

    def truncate(self, rows: int, errors: int) -> None:
        """Drop what was added after the first ``rows`` readings and ``errors`` dead letters."""
        for column in (self.twin_id, self.channel, self.time_ns, self.value, self.unit, self.quality):
            del column[rows:]
        del self.errors[errors:]

    def reject(self, reason: str, raw: bytes) -> None:
        """Dead-letter ``raw`` with ``reason``, stamped with the context's source and time."""
        self.errors.append(DeadLetter(self.context.source, reason, raw, self.context.received_ns))

    def result(self) -> DecodeResult:
        """The collected readings as one batch, and the dead letters."""
        if not self.time_ns:
            return DecodeResult(ReadingBatch.empty(), self.errors)
        batch = ReadingBatch.from_columns(
            self.twin_id, self.channel, self.time_ns, self.value, self.unit, self.quality
        )
        return DecodeResult(batch, self.errors)


def check_encodable(readings: ReadingBatch, codec: str) -> None:
    """Raise :class:`EncodeError` unless every reading would pass :func:`check_reading`.

    Vectorised over values and times; ids are checked once per distinct string. Encoders call
    this first so that a bad id can never inject structure (a newline in line protocol).
    """
    if not len(readings):
        return
    if not np.isfinite(readings.value).all():
        raise EncodeError(f"{codec}: cannot encode a value that is not finite")
    times = readings.time_ns
    if times.min() < MIN_TIME_NS or times.max() >= MAX_TIME_NS:
        raise EncodeError(f"{codec}: cannot encode a time outside 1970..2262")
    quality = readings.quality
    bad_quality = ~np.isnan(quality) & ((quality < 0.0) | (quality > 1.0))
    if bad_quality.any():
        raise EncodeError(f"{codec}: cannot encode a quality outside 0..1")
    columns = (("twin id", readings.twin_id), ("channel", readings.channel), ("unit", readings.unit))
    for kind, column in columns:
        for text in np.unique(column).tolist():
            problem = id_problem(kind, text)
            if problem:
                raise EncodeError(f"{codec}: cannot encode: {problem}")


class CodecBase(ABC):
    """Base of the built-in codecs: the payload gate and the never-raise guard around decoding.

    The class attributes tell the contract tests what survives an encode/decode round trip.
    """

    name: ClassVar[str]
    #: Whether ``encode`` keeps units.
    carries_unit: ClassVar[bool] = True
    #: Whether ``encode`` keeps the quality column.
    carries_quality: ClassVar[bool] = False
    #: The earliest time ``encode`` can represent.
    min_encodable_time_ns: ClassVar[int] = MIN_TIME_NS

    def decode(self, payload: bytes, context: DecodeContext) -> DecodeResult:
        """Decode one payload into readings and dead letters; never raises."""
        raw: object = payload
        if isinstance(raw, bytearray | memoryview):
            raw = bytes(raw)
        refused = refuse_payload(raw, context)
        if refused is not None:
            return DecodeResult(ReadingBatch.empty(), [refused])
        data = cast(bytes, raw)
        columns = ReadingColumns(context)
        try:
            self._decode_into(data, context, columns)
            return columns.result()
        except Exception as exc:  # a bug, not bad input: keep the dataflow running, say so loudly
            reason = f"{DECODER_BUG}: the {self.name} decoder raised {type(exc).__name__}: {exc}"
            dead = DeadLetter(context.source, reason[:500], data, context.received_ns)
            return DecodeResult(ReadingBatch.empty(), [dead])

    def decode_many(self, payloads: Sequence[tuple[bytes, DecodeContext]]) -> DecodeResult:
        """Decode many payloads into one batch; never raises.

        The same as concatenating :meth:`decode` of each, but the readings of all payloads
        share one set of column lists, so a message carrying one reading does not pay for
        building a batch of its own (about 20 us each). A payload whose decoder fails adds
        only its dead letter, none of its partial readings.
        """
        if not payloads:
            return DecodeResult(ReadingBatch.empty(), [])
        columns = ReadingColumns(payloads[0][1])
        for payload, context in payloads:
            raw: object = payload
            if isinstance(raw, bytearray | memoryview):
                raw = bytes(raw)
            refused = refuse_payload(raw, context)
            if refused is not None:
                columns.errors.append(refused)
                continue
            data = cast(bytes, raw)
            columns.context = context
            rows, errors = len(columns.time_ns), len(columns.errors)
            try:
                self._decode_into(data, context, columns)
            except Exception as exc:  # a bug, not bad input: see decode()
                columns.truncate(rows, errors)
                reason = f"{DECODER_BUG}: the {self.name} decoder raised {type(exc).__name__}: {exc}"
                columns.errors.append(DeadLetter(context.source, reason[:500], data, context.received_ns))
        return columns.result()

    @abstractmethod
    def _decode_into(self, payload: bytes, context: DecodeContext, out: ReadingColumns) -> None:
        """Parse a non-empty payload within the size limit, adding readings and dead letters."""

    @abstractmethod
    def encode(self, readings: ReadingBatch) -> bytes:
        """One payload holding ``readings``; raises :class:`EncodeError` if it cannot."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
