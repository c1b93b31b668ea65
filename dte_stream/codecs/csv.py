"""The ``csv`` codec: a header line, then one reading per row (comma-separated, RFC 4180 quoting).

Columns are recognised by name (case and surrounding spaces ignored; unknown columns ignored):
``time`` or ``time_ns``, ``twin_id`` (or ``twin``), ``channel``, ``value``, ``unit``,
``quality``. A missing twin or channel column, or an empty cell, falls back to the context; a
missing or empty time to ``context.received_ns``. A bad row is one dead letter
(``row N (line L): ...``; N counts data rows from 1, L is the file line where the row ends) whose
raw is the row re-written as CSV; good rows are kept. Header problems dead-letter the payload.
"""

from __future__ import annotations

import csv
import io
import math
import re
from typing import ClassVar

from dte_stream.codecs._common import (
    CodecBase,
    ReadingColumns,
    check_encodable,
    float_text,
    parse_time_text,
    quality_problem,
)
from dte_stream.codecs.base import DecodeContext
from dte_stream.readings import ReadingBatch

__all__ = ["CSV_COLUMNS", "CsvCodec"]

#: Recognised header names and the column each one fills.
CSV_COLUMNS: dict[str, str] = {
    "time": "time",
    "time_ns": "time_ns",
    "twin_id": "twin_id",
    "twin": "twin_id",
    "channel": "channel",
    "value": "value",
    "unit": "unit",
    "quality": "quality",
}

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d{1,20}", re.ASCII)
_BOM = "\ufeff"


def _row_bytes(row: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue().encode("utf-8")


def _shown(cell: str) -> str:
    return repr(cell) if len(cell) <= 40 else repr(cell[:40]) + "..."


class _Header:
    """Where each recognised column is in a row."""

    __slots__ = ("channel", "quality", "time", "time_ns", "twin_id", "unit", "value", "width")

    def __init__(self, positions: dict[str, int], width: int) -> None:
        self.width = width
        self.time = positions.get("time")
        self.time_ns = positions.get("time_ns")
        self.twin_id = positions.get("twin_id")
        self.channel = positions.get("channel")
        self.value = positions["value"]
        self.unit = positions.get("unit")
        self.quality = positions.get("quality")


def _parse_header(row: list[str], context: DecodeContext) -> _Header | str:
    """The column positions of a header row, or why the header cannot be used."""
    positions: dict[str, int] = {}
    for index, cell in enumerate(row):
        column = CSV_COLUMNS.get(cell.strip().lower())
        if column is None:
            continue
        if column in positions:
            return f"CSV header names column {column!r} twice"
        positions[column] = index
    shown = ",".join(row)[:120]
    if "value" not in positions:
        return f"CSV header {shown!r} has no 'value' column"
    if "twin_id" not in positions and context.twin_id is None:
        return f"CSV header {shown!r} has no 'twin_id' column and the context gives no twin id"
    if "channel" not in positions and context.channel is None:
        return f"CSV header {shown!r} has no 'channel' column and the context gives no channel"
    return _Header(positions, len(row))


class CsvCodec(CodecBase):
    """CSV with a header line; ``encode`` writes ``time_ns,twin_id,channel,value,unit``
    (plus ``quality`` when any reading has one).

    >>> from dte_stream.codecs.base import DecodeContext
    >>> payload = b"time,twin_id,channel,value,unit\\n2026-01-02T03:04:05Z,pump-1,temp,21.5,Cel\\n"
    >>> result = CsvCodec().decode(payload, DecodeContext("doc"))
    >>> [(r.twin_id, r.channel, r.time_ns, r.value, r.unit) for r in result.readings]
    [('pump-1', 'temp', 1767323045000000000, 21.5, 'Cel')]
    >>> CsvCodec().encode(result.readings)
    b'time_ns,twin_id,channel,value,unit\\n1767323045000000000,pump-1,temp,21.5,Cel\\n'
    """

    name: ClassVar[str] = "csv"
    carries_quality: ClassVar[bool] = True

    def _decode_into(self, payload: bytes, context: DecodeContext, out: ReadingColumns) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.reject(f"invalid UTF-8 at offset {exc.start}", payload)
            return
        if text.startswith(_BOM):
            text = text[1:]
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header: _Header | None = None
        row_number = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if header is None:
                    out.reject(f"line {reader.line_num}: unreadable CSV header: {exc}", payload)
                    return
                row_number += 1
                out.reject(f"row {row_number} (line {reader.line_num}): {exc}", payload)
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if header is None:
                parsed = _parse_header(row, context)
                if isinstance(parsed, str):
                    out.reject(parsed, payload)
                    return
                header = parsed
                continue
            row_number += 1
            problem = self._row(row, header, context, out)
            if problem is not None:
                out.reject(f"row {row_number} (line {reader.line_num}): {problem}", _row_bytes(row))

    @staticmethod
    def _row(row: list[str], header: _Header, context: DecodeContext, out: ReadingColumns) -> str | None:
        """Add the row's reading; return why it cannot be one, or None."""
        if len(row) != header.width:
            return f"{len(row)} fields, the header has {header.width}"
        twin: str | None = context.twin_id
        if header.twin_id is not None:
            twin = row[header.twin_id].strip() or twin
        if twin is None:
            return "twin id is empty and the context gives none"
        channel: str | None = context.channel
        if header.channel is not None:
            channel = row[header.channel].strip() or channel
        if channel is None:
            return "channel is empty and the context gives none"

        cell = row[header.value].strip()
        if not _NUMBER.fullmatch(cell):
            return f"value {_shown(cell)} is not a number"
        value = float(cell)

        time_ns = context.received_ns
        time_ns_cell = row[header.time_ns].strip() if header.time_ns is not None else ""
        time_cell = row[header.time].strip() if header.time is not None else ""
        if time_ns_cell:
            if not _INTEGER.fullmatch(time_ns_cell):
                return f"time_ns {_shown(time_ns_cell)} is not an integer of nanoseconds"
            time_ns = int(time_ns_cell)
        elif time_cell:
            if len(time_cell) > 64:
                return f"time {_shown(time_cell)} is not a timestamp"
            try:
                time_ns = parse_time_text(time_cell)
            except ValueError as exc:
                return f"time: {exc}"

        unit = row[header.unit].strip() if header.unit is not None else ""
        quality = math.nan
        if header.quality is not None:
            quality_cell = row[header.quality].strip()
            if quality_cell:
                if not _NUMBER.fullmatch(quality_cell):
                    return f"quality {_shown(quality_cell)} is not a number"
                quality = float(quality_cell)
                problem = quality_problem(quality)
                if problem:
                    return problem
        return out.add(twin, channel, time_ns, value, unit, quality)

    def encode(self, readings: ReadingBatch) -> bytes:
        """A header and one row per reading; values in their shortest exact decimal form."""
        check_encodable(readings, self.name)
        qualities = readings.quality.tolist()
        with_quality = not all(math.isnan(q) for q in qualities)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["time_ns", "twin_id", "channel", "value", "unit"]
        writer.writerow([*header, "quality"] if with_quality else header)
        columns = (
            readings.time_ns.tolist(),
            readings.twin_id.tolist(),
            readings.channel.tolist(),
            [float_text(v) for v in readings.value.tolist()],
            readings.unit.tolist(),
        )
        if with_quality:
            quality_cells = ["" if math.isnan(q) else float_text(q) for q in qualities]
            writer.writerows(zip(*columns, quality_cells, strict=True))
        else:
            writer.writerows(zip(*columns, strict=True))
        return buffer.getvalue().encode("utf-8")
