"""Builders and an independent line-protocol reader for the InfluxDB sink's unit tests."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from dte_stream.batches import EstimateBatch
from dte_stream.codecs.escaping import unescape_measurement, unescape_tag

T0 = 1_767_323_045_000_000_000  # 2026-01-02T03:04:05Z
FIELD_NAMES = ("value", "estimate", "std", "innovation", "nis")


def estimates(
    twin_ids: Sequence[str],
    channels: Sequence[str] | None = None,
    *,
    twin_type: str = "pump",
    units: Sequence[str] | None = None,
    start: int = T0,
    fields: dict[str, Sequence[float]] | None = None,
) -> EstimateBatch:
    """An EstimateBatch of one row per twin id; fields default to distinct finite values."""
    n = len(twin_ids)
    chans = list(channels) if channels is not None else ["temp"] * n
    cols = {name: np.arange(n, dtype=np.float64) + k + 0.5 for k, name in enumerate(FIELD_NAMES)}
    for name, values in (fields or {}).items():
        cols[name] = np.asarray(values, dtype=np.float64)
    return EstimateBatch(
        twin_type,
        np.array(list(twin_ids), dtype=np.str_) if n else np.empty(0, dtype="<U1"),
        np.array(chans, dtype=np.str_) if n else np.empty(0, dtype="<U1"),
        start + np.arange(n, dtype=np.int64) * 1_000_000,
        cols["value"],
        np.array(list(units) if units is not None else [""] * n, dtype=np.str_)
        if n
        else np.empty(0, dtype="<U1"),
        cols["estimate"],
        cols["std"],
        cols["innovation"],
        cols["nis"],
    )


# An independent reader: a backslash always pairs with the next character (as every parser
# scans); escaping.unescape_* then decide which pairs were escapes.
_KEY = r"(?:[^,= \\]|\\.)+"
_STRING = r'"(?:[^"\\]|\\.)*"'
_ONE_FIELD = rf"{_KEY}=(?:{_STRING}|[^, ]+)"
_LINE = re.compile(rf"((?:[^, \\]|\\.)+)((?:,{_KEY}={_KEY})*) ({_ONE_FIELD}(?:,{_ONE_FIELD})*) (-?\d+)")
_TAG = re.compile(rf",({_KEY})=({_KEY})")
_FIELD = re.compile(rf"({_KEY})=({_STRING}|[^,]+)")


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, float | int | str], int]:
    """measurement, tags, fields (floats, integers ``<n>i``; strings unquoted) and time of one line."""
    match = _LINE.fullmatch(line)
    assert match is not None, f"not a line-protocol point: {line!r}"
    measurement, tag_text, field_text, stamp = match.groups()
    tags = {unescape_tag(k): unescape_tag(v) for k, v in _TAG.findall(tag_text)}
    fields: dict[str, float | int | str] = {}
    for key, raw in _FIELD.findall(field_text):
        if raw.startswith('"'):
            fields[unescape_tag(key)] = re.sub(r'\\(["\\])', r"\1", raw[1:-1])
        elif raw.endswith("i"):
            fields[unescape_tag(key)] = int(raw[:-1])
        else:
            fields[unescape_tag(key)] = float(raw)
    return unescape_measurement(measurement), tags, fields, int(stamp)


def same_float(a: float, b: float) -> bool:
    """Equal bit for bit (NaN never appears in written fields)."""
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
