r"""Estimate batches to InfluxDB line protocol, in bulk.

One point per reading (one line, wrapped here)::

    <measurement>,channel=<c>,twin_id=<id>,twin_type=<t>[,unit=<u>]
        value=<v>,estimate=<e>,std=<s>,innovation=<i>,nis=<n>[,anomaly_score=<a>][,<extra>=<x>...],flags=<f>i
        <time_ns>

``flags`` (an integer) holds the bits of :mod:`dte_stream.twins.flags`; the optional outputs of
the twin type (states, forecasts, learners) are more float fields, written when finite.

Tags are sorted by key (what InfluxDB stores, so it need not sort them). Floats are written in
their shortest exact decimal form, so every value reads back bit for bit; non-finite fields are
left out (InfluxDB refuses NaN and infinity) and a row with no finite field and no flag is
skipped and counted. Escaping is :mod:`dte_stream.codecs.escaping`, applied once per distinct id (and
remembered across batches) and only to the values that hold a character it acts on; the lines
themselves are built by polars in one vectorised pass: 1-2 us per line with batches of a few
thousand rows, against 4 us for one Python f-string and 25 us for one influxdb-client
``Point`` object per line (benchmarks/bench_influxdb_sink.py).

A row whose ids cannot be written exactly becomes a dead letter, never a corrupted or extra
point: an empty tag value (invalid line protocol), a control character (a newline would start
a new point), text that is not valid Unicode, and, with ``escaping="portable"``, a backslash
before ``,``, ``=``, a space, another backslash or at the end, which InfluxDB's own parser keeps
literally while the line-protocol reference (and VictoriaMetrics) read it as an escape.

>>> import numpy as np
>>> from dte_stream.batches import EstimateBatch
>>> def col(*v): return np.array(v)
>>> batch = EstimateBatch("pump", col("pump 1"), col("temp"), col(1_000), col(20.5), col("Cel"),
...                       col(20.4), col(0.25), col(0.1), col(float("nan")))
>>> print(EstimateSerialiser("m", unit="omit").serialise(batch).text())
m,channel=temp,twin_id=pump\ 1,twin_type=pump value=20.5,estimate=20.4,std=0.25,innovation=0.1,flags=0i 1000
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import orjson
import polars as pl

from dte_stream.batches import DeadLetter, EstimateBatch
from dte_stream.codecs.escaping import (
    escape_field_key,
    escape_measurement,
    escape_string_field,
    escape_tag,
)

__all__ = ["FIELDS", "TAGS", "EstimateSerialiser", "SerialisedLines"]

#: The float fields of every point, in the order written.
FIELDS: tuple[str, ...] = ("value", "estimate", "std", "innovation", "nis")
#: The tag keys of every point, sorted as InfluxDB stores them (``unit`` only in ``unit="tag"`` mode).
TAGS: tuple[str, ...] = ("channel", "twin_id", "twin_type", "unit")

UnitMode = Literal["tag", "field", "omit"]
Escaping = Literal["portable", "spec"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AMBIGUOUS_BACKSLASH = re.compile(r"\\(?=[,= \\]|\Z)")
_CACHE_LIMIT = 200_000
#: Most distinct plain values remembered per column (about 100 B each). Past it (the twin ids
#: of more twins than this) the set would cost memory per twin and save no CPU: a column is
#: searched whole instead, as fast as looking its values up in a set (see ``_column``).
_PLAIN_LIMIT = 16_384
# Characters the escape functions change or refuse (polars regex syntax).
_TAG_SPECIAL = r"[,= \\\x00-\x1f\x7f]"
_FIELD_SPECIAL = r'["\\\x00-\x1f\x7f]'


@dataclass(frozen=True, slots=True, eq=False)
class SerialisedLines:
    """Line protocol for one batch: the lines, and the rows that could not become lines.

    ``lines`` holds one point per element, without newlines. ``dead_letters`` has one entry per
    row refused (the row as JSON, the reason); ``skipped`` counts rows without a finite field.
    """

    lines: pl.Series
    dead_letters: list[DeadLetter] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return self.lines.len()

    def text(self) -> str:
        """The lines joined by newlines: a request body for ``/write``."""
        return join_lines([self.lines])


def join_lines(chunks: Sequence[pl.Series]) -> str:
    """Join chunks of lines into one newline-separated text (polars, no Python loop)."""
    if not chunks:
        return ""
    series = chunks[0] if len(chunks) == 1 else pl.concat(chunks, rechunk=False)
    if series.len() == 0:
        return ""
    text = series.str.join("\n").item()
    return text if isinstance(text, str) else ""


class _Tag:
    """The escaped form of a tag value, or why it cannot be written."""

    __slots__ = ("escaped", "problem")

    def __init__(self, escaped: str, problem: str | None) -> None:
        self.escaped = escaped
        self.problem = problem


class EstimateSerialiser:
    """Turn :class:`~dte_stream.batches.EstimateBatch` items into line protocol in bulk.

    ``unit`` puts the reading's unit in a tag (left out when empty: line protocol has no empty
    tag values), in a string field, or nowhere. A tag is part of a series' identity, so a
    channel whose unit text changes starts a new series; use ``"field"`` if units change.
    ``source`` names the sink in dead letters. One serialiser per worker: not thread-safe.
    """

    def __init__(
        self,
        measurement: str = "dte_readings",
        *,
        unit: UnitMode = "tag",
        escaping: Escaping = "portable",
        source: str = "influxdb",
        fields: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
    ) -> None:
        self.measurement = measurement
        self.fields = None if fields is None else frozenset(fields)
        self.tags = frozenset(TAGS if tags is None else tags)
        if "unit" not in self.tags:
            unit = "omit"
        self.unit = unit
        self.escaping = escaping
        self.source = source
        self._measurement = escape_measurement(measurement)
        self._keys = {name: escape_tag(name) for name in TAGS}
        self._fields = {name: escape_field_key(name) for name in FIELDS}
        self._cache: dict[tuple[bool, str], _Tag] = {}
        # Values known to hold no character that escaping acts on, by column (each column has
        # one pattern); None once a column has had more than _PLAIN_LIMIT of them.
        self._plain: dict[str, set[str] | None] = {}

    def __repr__(self) -> str:
        return (
            f"EstimateSerialiser(measurement={self.measurement!r}, unit={self.unit!r}, "
            f"escaping={self.escaping!r})"
        )

    # ------------------------------------------------------------------------------------
    # per distinct value
    # ------------------------------------------------------------------------------------

    def _escape(self, text: str, *, as_field: bool = False) -> _Tag:
        key = (as_field, text)
        found = self._cache.get(key)
        if found is not None:
            return found
        problem: str | None = None
        escaped = ""
        if not text and not as_field:
            problem = "is empty (line protocol has no empty tag values)"
        elif _CONTROL.search(text):
            problem = "contains a control character (a line break would start a new point)"
        elif not _is_unicode(text):
            problem = "is not valid Unicode text (a lone surrogate)"
        elif not as_field and self.escaping == "portable" and _AMBIGUOUS_BACKSLASH.search(text):
            problem = (
                "has a backslash before ',', '=', ' ', '\\' or at its end, which InfluxDB stores "
                "differently from other servers (escaping: portable)"
            )
        else:
            try:
                escaped = escape_string_field(text) if as_field else escape_tag(text)
            except ValueError as exc:
                problem = str(exc)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        tag = self._cache[key] = _Tag(escaped, problem)
        return tag

    def _column(
        self, name: str, values: npt.NDArray[np.str_], bad: npt.NDArray[np.bool_], reasons: dict[int, str]
    ) -> pl.Series:
        """The escaped column ``name``; rows with an unwritable value are marked in ``bad``."""
        as_field = name == "unit" and self.unit == "field"
        raw = values.tolist()
        try:
            series = pl.Series(name, raw, dtype=pl.String)
        except UnicodeEncodeError:
            raw = [v if _is_unicode(v) else "\ufffd" for v in raw]
            series = pl.Series(name, raw, dtype=pl.String)
            for i, v in enumerate(values.tolist()):
                if not _is_unicode(v):
                    bad[i] = True
                    reasons.setdefault(i, f"{name} is not valid Unicode text (a lone surrogate)")
        old: list[str] = []
        new: list[str] = []
        refused: dict[str, str] = {}
        # Only values holding a character that escaping acts on (or refuses), or empty ones,
        # need a look: the escape functions return every other value unchanged; most batches
        # have none. (an empty unit is no tag at all; any other empty value is refused)
        pattern = _FIELD_SPECIAL if as_field else _TAG_SPECIAL if name == "unit" else f"^$|{_TAG_SPECIAL}"
        # The distinct values are mostly few (channels, units, the ids of up to some thousands
        # of twins) and recur from batch to batch: only values not yet known to be plain are
        # searched, once each. With more distinct values than _PLAIN_LIMIT (the ids of 100,000
        # twins), the set held about 100 B per twin (10 MB) and cost as much CPU as one
        # vectorised search of the whole column (measured 2026-12-07, docs/benchmarks.md), so the
        # column is searched whole and nothing is kept.
        plain = self._plain.setdefault(name, set())
        if plain is None:
            special = series.str.contains(pattern)
            if not special.any():
                return series
            specials = series.filter(special).unique().to_list()
        else:
            fresh = list(set(raw) - plain)
            if not fresh:
                return series
            hit = pl.Series(name, fresh, dtype=pl.String).str.contains(pattern).to_list()
            if len(plain) + len(fresh) > _PLAIN_LIMIT:
                self._plain[name] = None
            else:
                plain.update(value for value, found in zip(fresh, hit, strict=True) if not found)
            specials = [value for value, found in zip(fresh, hit, strict=True) if found]
        for value in specials:
            tag = self._escape(value, as_field=as_field)
            if tag.problem is not None:
                if not (name == "unit" and value == ""):
                    refused[value] = tag.problem
            elif tag.escaped != value:
                old.append(value)
                new.append(tag.escaped)
        if refused:
            mask = series.is_in(list(refused)).to_numpy()
            for i in np.flatnonzero(mask & ~bad).tolist():
                reasons[i] = f"{name} {raw[i][:60]!r} {refused[raw[i]]}"
            bad |= mask
        if old:
            series = series.replace(old, new)
        return series

    # ------------------------------------------------------------------------------------
    # per batch
    # ------------------------------------------------------------------------------------

    def serialise(self, batch: EstimateBatch) -> SerialisedLines:
        """The batch's points as line protocol; unwritable rows as dead letters."""
        n = len(batch)
        if n == 0:
            return SerialisedLines(pl.Series("line", [], dtype=pl.String))
        bad = np.zeros(n, dtype=np.bool_)
        reasons: dict[int, str] = {}
        twin_type = self._escape(batch.twin_type)
        if twin_type.problem is not None:
            bad[:] = True
            reason = f"twin_type {batch.twin_type[:60]!r} {twin_type.problem}"
            reasons = dict.fromkeys(range(n), reason)
        channel = self._column("channel", batch.channel, bad, reasons)
        twin_id = self._column("twin_id", batch.twin_id, bad, reasons)
        unit = self._column("unit", batch.unit, bad, reasons) if self.unit != "omit" else None

        wanted = self.fields
        arrays = {
            name: np.asarray(getattr(batch, name), dtype=np.float64)
            for name in FIELDS
            if wanted is None or name in wanted
        }
        optional = {"anomaly_score": batch.score_column(), **batch.extra}
        arrays.update(
            {
                name: a
                for name, a in optional.items()
                if (wanted is None or name in wanted) and np.isfinite(a).any()
            }
        )
        write_flags = wanted is None or "flags" in wanted
        flags = batch.flag_column()
        finite = {name: np.isfinite(a) for name, a in arrays.items()}
        has_field = np.logical_or.reduce([*finite.values(), flags != 0 if write_flags else np.zeros(n, bool)])
        skip = ~has_field & ~bad
        skipped = int(skip.sum())
        keep = ~(bad | skip)

        columns = [channel, twin_id, pl.Series("time", batch.time_ns, dtype=pl.Int64)]
        columns += [pl.Series(name, a, dtype=pl.Float64) for name, a in arrays.items()]
        columns.append(pl.Series("flags", flags, dtype=pl.UInt16))
        if unit is not None:
            columns.append(unit)
        frame = pl.DataFrame(columns)
        all_kept = bool(keep.all())
        if not all_kept:
            frame = frame.filter(pl.Series(keep))
        all_finite = all(bool(f[keep].all()) for f in finite.values())
        expr = self._line_expr(
            frame, twin_type.escaped, list(arrays), all_finite=all_finite, flags=write_flags
        )
        lines = frame.select(expr)
        return SerialisedLines(
            lines.to_series().rename("line"),
            self._dead_letters(batch, reasons) if reasons else [],
            skipped,
        )

    def _field_key(self, name: str) -> str:
        key = self._fields.get(name)
        if key is None:
            key = self._fields[name] = escape_field_key(name)
        return key

    def _line_expr(
        self, frame: pl.DataFrame, twin_type: str, names: list[str], *, all_finite: bool, flags: bool = True
    ) -> pl.Expr:
        """One ``concat_str`` building every line; fast path when every field is finite."""
        k = self._keys
        parts: list[pl.Expr] = [
            pl.lit(f"{self._measurement},{k['channel']}="),
            pl.col("channel"),
            pl.lit(f",{k['twin_id']}="),
            pl.col("twin_id"),
        ]
        if "twin_type" in self.tags:  # the same for the whole batch: a literal
            parts.append(pl.lit(f",{k['twin_type']}={twin_type}"))
        has_unit = self.unit != "omit" and "unit" in frame.columns and bool((frame["unit"] != "").any())
        if has_unit and self.unit == "tag":
            parts.append(
                pl.when(pl.col("unit") != "")
                .then(pl.lit(f",{k['unit']}=") + pl.col("unit"))
                .otherwise(pl.lit(""))
            )
        flag_field = pl.lit(f"{self._field_key('flags')}=") + pl.col("flags").cast(pl.String) + pl.lit("i")
        if all_finite and not (has_unit and self.unit == "field") and (flags or names):
            sep = " "
            for name in names:
                parts += [pl.lit(f"{sep}{self._field_key(name)}="), pl.col(name).cast(pl.String)]
                sep = ","
            if flags:
                parts += [pl.lit(sep), flag_field]
        else:
            fields: list[pl.Expr] = [
                pl.when(pl.col(name).is_finite()).then(
                    pl.lit(f"{self._field_key(name)}=") + pl.col(name).cast(pl.String)
                )
                for name in names
            ]
            if flags:
                fields.append(flag_field)
            if has_unit and self.unit == "field":
                fields.append(
                    pl.when(pl.col("unit") != "").then(pl.lit('unit="') + pl.col("unit") + pl.lit('"'))
                )
            parts += [pl.lit(" "), pl.concat_str(fields, separator=",", ignore_nulls=True)]
        parts += [pl.lit(" "), pl.col("time").cast(pl.String)]
        return pl.concat_str(parts).alias("line")

    def _dead_letters(self, batch: EstimateBatch, reasons: dict[int, str]) -> list[DeadLetter]:
        out = []
        for i, reason in sorted(reasons.items()):
            row = {
                "twin_type": _printable(batch.twin_type),
                "twin_id": _printable(str(batch.twin_id[i])),
                "channel": _printable(str(batch.channel[i])),
                "time_ns": int(batch.time_ns[i]),
                "unit": _printable(str(batch.unit[i])),
                **{name: _number(getattr(batch, name)[i]) for name in FIELDS},
            }
            out.append(DeadLetter(f"influxdb:{self.source}", reason, orjson.dumps(row)))
        return out


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    return text if _is_unicode(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _number(value: object) -> float | None:
    number = float(value)  # type: ignore[arg-type]
    return number if np.isfinite(number) else None
