r"""The ``line_protocol`` codec: InfluxDB line protocol, one point per line, many per payload.

``measurement[,tag=value...] field=value[,field=value...] [timestamp]``. Each numeric field of
a point is one reading: channel = field key, twin id = the ``twin_id`` tag (else the
measurement), unit = the ``unit`` tag (else none). A line is all or nothing: one bad field or
an invalid id makes the whole line one dead letter (``line N: ...``, N counted from 1, the
line's own bytes as raw), as InfluxDB refuses the whole point; the other lines are kept.
Escaping follows :mod:`dte_stream.codecs.escaping`. Lines without backslashes or quotes (the
usual case) are split with str methods; the others with an escape-aware regular expression.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

from dte_stream.codecs._common import CodecBase, EncodeError, ReadingColumns, check_encodable
from dte_stream.codecs.base import DecodeContext
from dte_stream.codecs.escaping import (
    escape_field_key,
    escape_measurement,
    escape_tag,
    unescape_field_key,
    unescape_measurement,
    unescape_tag,
)
from dte_stream.errors import ConfigError
from dte_stream.readings import ReadingBatch, check_reading, id_problem

__all__ = ["PRECISIONS", "LineProtocolCodec"]

#: Timestamp precisions and the nanoseconds in one unit of each.
PRECISIONS: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

# One element with its escapes; a backslash always pairs with the next character, as every
# InfluxDB parser scans, and the unescape functions decide which pairs mean an escape.
_KEY = r"(?:[^,= \\]|\\.)+"
_MEASUREMENT = r"(?:[^, \\]|\\.)+"
_STRING_VALUE = r'"(?:[^"\\]|\\.)*"'
_BARE_VALUE = r'[^,= "\\]+'
_FIELD = rf"{_KEY}=(?:{_STRING_VALUE}|{_BARE_VALUE})"
_LINE = re.compile(
    rf"({_MEASUREMENT})((?:,{_KEY}={_KEY})*) +({_FIELD}(?:,{_FIELD})*)(?: +(-?[0-9]+))?",
    re.DOTALL,
)
_TAG = re.compile(rf",({_KEY})=({_KEY})", re.DOTALL)
_FIELD_PARTS = re.compile(rf"({_KEY})=({_STRING_VALUE}|{_BARE_VALUE})", re.DOTALL)

_FLOAT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d{1,20}i", re.ASCII)
_UNSIGNED = re.compile(r"\d{1,20}u", re.ASCII)
_TIMESTAMP = re.compile(r"-?\d+", re.ASCII)
_BOOLEANS = {
    "t": 1.0, "T": 1.0, "true": 1.0, "True": 1.0, "TRUE": 1.0,
    "f": 0.0, "F": 0.0, "false": 0.0, "False": 0.0, "FALSE": 0.0,
}  # fmt: skip
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = 2**64 - 1
_FORM = "expected 'measurement[,tag=value...] field=value[,field=value...] [timestamp]'"

#: A split line: measurement, (tag key, tag value) pairs, (field key, raw value) pairs, timestamp.
_Parts = tuple[str, list[tuple[str, str]], list[tuple[str, str]], str | None]


def _field_value(text: str) -> float | str | None:
    """A field's number, or None for a string field, or the reason it is malformed (a str)."""
    if text.startswith('"'):
        return None
    if _FLOAT.fullmatch(text):
        return float(text)
    boolean = _BOOLEANS.get(text)
    if boolean is not None:
        return boolean
    if _INTEGER.fullmatch(text):
        number = int(text[:-1])
        if not _INT64[0] <= number <= _INT64[1]:
            return f"integer {text} is outside int64"
        return float(number)
    if _UNSIGNED.fullmatch(text):
        number = int(text[:-1])
        if number > _UINT64:
            return f"unsigned integer {text} is outside uint64"
        return float(number)
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"value {shown!r} is not a number, boolean or string"


def _split_plain(line: str) -> _Parts | None:
    """Split a line without backslashes or quotes with str methods (the fast path).

    Returns None when such a line is not well formed (the regex path then explains why); for
    these lines it accepts exactly what ``_LINE`` accepts.
    """
    sections = line.split(" ")
    if not 2 <= len(sections) <= 3:
        return None
    head, field_text = sections[0], sections[1]
    stamp = sections[2] if len(sections) == 3 else None
    if stamp is not None and not _TIMESTAMP.fullmatch(stamp):
        return None
    measurement, *tag_texts = head.split(",")
    if not measurement:
        return None
    tags: list[tuple[str, str]] = []
    for text in tag_texts:
        key, _, value = text.partition("=")
        if not key or not value or "=" in value:
            return None
        tags.append((key, value))
    fields: list[tuple[str, str]] = []
    for text in field_text.split(","):
        key, _, value = text.partition("=")
        if not key or not value or "=" in value:
            return None
        fields.append((key, value))
    return measurement, tags, fields, stamp


def _split_escaped(line: str) -> _Parts | None:
    """Split any line with the escape-aware regex, unescaping measurement, tags and field keys."""
    match = _LINE.fullmatch(line)
    if match is None:
        return None
    measurement, tag_text, field_text, stamp = match.groups()
    tags = [(unescape_tag(t.group(1)), unescape_tag(t.group(2))) for t in _TAG.finditer(tag_text)]
    fields = [(unescape_field_key(f.group(1)), f.group(2)) for f in _FIELD_PARTS.finditer(field_text)]
    return unescape_measurement(measurement), tags, fields, stamp


def _malformed(line: str) -> str:
    """Why a line does not match the line-protocol form, as precisely as is cheap."""
    if not re.search(r"(?<!\\) ", line):
        return f"no field set; {_FORM}"
    return f"malformed line protocol; {_FORM}"


class LineProtocolCodec(CodecBase):
    r"""InfluxDB line protocol; several lines per payload, each numeric field one reading.

    Integer (``12i``) and unsigned (``12u``) fields become floats; booleans 1.0 and 0.0.
    String fields are skipped when the line has a numeric field, else the line is dead-lettered
    ("no numeric field"). Lines starting with ``#`` are comments; blank lines are skipped.
    ``precision`` is the unit of the timestamps (ns, us, ms or s); a line without one takes
    ``context.received_ns``. ``encode`` writes one line per reading
    ``<measurement>,<twin_tag>=<twin>[,<unit_tag>=<unit>] <channel>=<value> <time>``
    (times are cut to the precision).

    >>> from dte_stream.codecs.base import DecodeContext
    >>> codec = LineProtocolCodec()
    >>> payload = b"plant,twin_id=pump\\ 1,unit=Cel temp=21.5,rpm=1500i,on=t 1767323045000000000"
    >>> result = codec.decode(payload, DecodeContext("doc"))
    >>> for r in result.readings:
    ...     print(r.twin_id, r.channel, r.value, r.unit)
    pump 1 temp 21.5 Cel
    pump 1 rpm 1500.0 Cel
    pump 1 on 1.0 Cel
    >>> codec.encode(result.readings).splitlines()[0]
    b'reading,twin_id=pump\\ 1,unit=Cel temp=21.5 1767323045000000000'
    """

    name: ClassVar[str] = "line_protocol"

    def __init__(
        self,
        *,
        precision: str = "ns",
        twin_tag: str = "twin_id",
        unit_tag: str | None = "unit",
        measurement: str = "reading",
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"line_protocol precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        for option, text in (("twin_tag", twin_tag), ("unit_tag", unit_tag), ("measurement", measurement)):
            if text is None:
                continue
            problem = id_problem(option, text)
            if problem:
                raise ConfigError(f"line_protocol {problem}")
        if measurement.startswith("#"):
            raise ConfigError("line_protocol measurement must not start with '#' (a comment)")
        if unit_tag == twin_tag:
            raise ConfigError("line_protocol twin_tag and unit_tag must differ")
        self.precision = precision
        self.twin_tag = twin_tag
        self.unit_tag = unit_tag
        self.measurement = measurement
        self._scale = PRECISIONS[precision]

    def __repr__(self) -> str:
        return (
            f"LineProtocolCodec(precision={self.precision!r}, twin_tag={self.twin_tag!r}, "
            f"unit_tag={self.unit_tag!r}, measurement={self.measurement!r})"
        )

    def _decode_into(self, payload: bytes, context: DecodeContext, out: ReadingColumns) -> None:
        for number, raw_line in enumerate(payload.split(b"\n"), start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                out.reject(f"line {number}: invalid UTF-8 at offset {exc.start}", raw_line)
                continue
            line = line.strip(" \t\r")
            if not line or line.startswith("#"):
                continue
            problem = self._line(line, context.received_ns, out)
            if problem is not None:
                out.reject(f"line {number}: {problem}", raw_line)

    def _line(self, line: str, received_ns: int, out: ReadingColumns) -> str | None:
        """Add the readings of one point; return why the line is refused, or None."""
        parts = _split_plain(line) if "\\" not in line and '"' not in line else None
        if parts is None:
            parts = _split_escaped(line)
            if parts is None:
                return _malformed(line)
        measurement, tags, fields, stamp = parts
        twin = measurement
        unit = ""
        for key, tag_value in tags:
            if key == self.twin_tag:
                twin = tag_value
            elif key == self.unit_tag:
                unit = tag_value
        if stamp is None:
            time_ns = received_ns
        elif len(stamp.lstrip("-")) > 20:
            return f"timestamp {stamp[:24]}... is out of range"
        else:
            time_ns = int(stamp) * self._scale

        channels: list[str] = []
        values: list[float] = []
        has_string = False
        for key, text in fields:
            value = _field_value(text)
            if value is None:
                has_string = True
                continue
            if isinstance(value, str):
                return f"field {key[:40]!r}: {value}"
            channels.append(key)
            values.append(value)
        if not channels:
            return "no numeric field (string fields are not readings)" if has_string else _FORM

        for channel, value in zip(channels, values, strict=True):
            problem = check_reading(twin, channel, time_ns, value, unit)
            if problem is not None:
                return f"field {channel[:40]!r}: {problem}"
        for channel, value in zip(channels, values, strict=True):
            out.append(twin, channel, time_ns, value, unit, math.nan)
        return None

    def encode(self, readings: ReadingBatch) -> bytes:
        """One line per reading, exactly escaped, values in their shortest exact decimal form."""
        check_encodable(readings, self.name)
        prefix = f"{escape_measurement(self.measurement)},{escape_tag(self.twin_tag)}="
        unit_prefix = f",{escape_tag(self.unit_tag)}=" if self.unit_tag else None
        scale = self._scale
        tags: dict[tuple[str, str], str] = {}
        keys: dict[str, str] = {}
        lines: list[str] = []
        try:
            for twin, channel, time_ns, value, unit in zip(
                readings.twin_id.tolist(),
                readings.channel.tolist(),
                readings.time_ns.tolist(),
                readings.value.tolist(),
                readings.unit.tolist(),
                strict=True,
            ):
                tag_set = tags.get((twin, unit))
                if tag_set is None:
                    tag_set = prefix + escape_tag(twin)
                    if unit and unit_prefix is not None:
                        tag_set += unit_prefix + escape_tag(unit)
                    tags[(twin, unit)] = tag_set
                key = keys.get(channel)
                if key is None:
                    key = keys[channel] = escape_field_key(channel)
                lines.append(f"{tag_set} {key}={value!r} {time_ns // scale}")
        except ValueError as exc:
            raise EncodeError(f"line_protocol: {exc}") from exc
        if not lines:
            return b""
        return ("\n".join(lines) + "\n").encode("utf-8")
