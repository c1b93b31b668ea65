"""Replay: a CSV of readings through a spec's dataflow, in event time, as fast as it goes.

The input is either one sensor (``timestamp,value`` rows, as in the NAB series) or readings
with ``twin_id`` and ``channel`` columns (and optionally ``unit``). The time column is
``timestamp`` or ``time`` (ISO 8601; a time without zone is UTC; or epoch seconds) or
``time_ns`` (integer nanoseconds). Rows are sorted by time and fed through the same twin
banks as a live run (:func:`~dte_stream.dataflow.build_flow` with the spec's sources and
sinks swapped for the file and a collector), with the twin clock set to event time so stale
sensors and TTLs follow the data, not the wall clock.

The output has one row per reading, in event-time order: ``timestamp`` (RFC 3339 UTC),
``time_ns``, ``twin_id``, ``channel``, ``value``, ``estimate``, ``std``, ``innovation``, ``nis``,
``anomaly_score`` (0..1), ``flags`` (bits of :mod:`dte_stream.twins.flags`), ``flag_names``
(``|``-separated) and every optional output of the twin type. Rows that cannot be read
(bad time, bad number, bad id) and readings refused by the dataflow are dead letters with a
reason, written next to the output; nothing else is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from dte_stream.batches import EstimateBatch, SourceBatch
from dte_stream.errors import ConfigError
from dte_stream.readings import DeadLetter, ReadingBatch, check_reading
from dte_stream.spec.model import DataflowSpec
from dte_stream.times import MAX_TIME_NS, MIN_TIME_NS, NS_PER_S, parse_time
from dte_stream.twins.flags import FLAG_BITS

__all__ = ["ReplayResult", "read_readings_csv", "replay", "replay_frame"]

#: Readings per micro-batch fed to the dataflow.
BATCH_READINGS = 2_000

_SOURCE = "replay"
_TIME_COLUMNS = ("time_ns", "timestamp", "time")


@dataclass
class ReplayResult:
    """What a replay produced: the output rows and what could not be used."""

    frame: pl.DataFrame
    dead_letters: list[DeadLetter] = field(default_factory=list)
    stale_events: int = 0
    seconds: float = 0.0

    @property
    def readings(self) -> int:
        return self.frame.height


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "replay"


def _parse_times(column: pl.Series, name: str) -> tuple[np.ndarray, list[str | None]]:
    """Nanoseconds per row (0 where unreadable) and a problem text per row (None when fine)."""
    n = column.len()
    problems: list[str | None] = [None] * n
    out = np.zeros(n, dtype=np.int64)
    text = column.cast(pl.String).str.strip_chars()
    if name == "time_ns":
        as_int = text.cast(pl.Int64, strict=False)
        for i in np.flatnonzero(as_int.is_null().to_numpy()).tolist():
            problems[i] = f"{name} {text[i]!r} is not an integer of nanoseconds"
        out[:] = as_int.fill_null(0).to_numpy()
    else:
        naive = text.str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="ns", strict=False).dt.epoch("ns")
        numeric = text.cast(pl.Float64, strict=False)
        done = naive.is_not_null().to_numpy()
        out[done] = naive.filter(pl.Series(done)).to_numpy()
        seconds = ~done & numeric.is_not_null().to_numpy()
        out[seconds] = np.round(numeric.filter(pl.Series(seconds)).to_numpy() * NS_PER_S).astype(np.int64)
        rest = np.flatnonzero(~done & ~seconds)
        parsed: dict[str, int | str] = {}
        for raw in text.gather(rest).unique().to_list():
            if raw is None or raw == "":
                parsed[raw or ""] = f"{name} is empty"
                continue
            zoned = re.search(r"(Z|z|[+-]\d\d:?\d\d)$", raw)
            try:
                parsed[raw] = parse_time(raw if zoned else raw.replace(" ", "T") + "Z")
            except ValueError as exc:
                parsed[raw] = f"{name}: {exc}"
        for i, raw in zip(rest.tolist(), text.gather(rest).to_list(), strict=True):
            got = parsed[raw or ""]
            if isinstance(got, str):
                problems[i] = got
            else:
                out[i] = got
    bad = (out < MIN_TIME_NS) | (out >= MAX_TIME_NS)
    for i in np.flatnonzero(bad).tolist():
        if problems[i] is None:
            problems[i] = f"{name} {text[i]!r} is outside 1970..2262"
    return out, problems


def read_readings_csv(
    path: Path, *, twin_id: str | None = None, channel: str | None = None
) -> tuple[ReadingBatch, list[DeadLetter]]:
    """The readings of a replay CSV, sorted by time, and a dead letter for every unusable row."""
    try:
        frame = pl.read_csv(path, infer_schema=False, truncate_ragged_lines=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ConfigError(f"{path}: cannot read as CSV: {str(exc).splitlines()[0]}") from None
    columns = frame.columns
    time_col = next((c for c in _TIME_COLUMNS if c in columns), None)
    if time_col is None or "value" not in columns:
        raise ConfigError(
            f"{path}: a replay CSV needs a value column and a time column "
            f"(one of {', '.join(_TIME_COLUMNS)}); it has {', '.join(columns) or 'no columns'}"
        )
    n = frame.height
    times, problems = _parse_times(frame[time_col], time_col)
    values = frame["value"].str.strip_chars().cast(pl.Float64, strict=False)
    ids = frame["twin_id"] if "twin_id" in columns else pl.Series([twin_id or _slug(path.stem)] * n)
    chans = frame["channel"] if "channel" in columns else pl.Series([channel or "value"] * n)
    units = frame["unit"].fill_null("") if "unit" in columns else pl.Series([""] * n)
    id_list, ch_list, unit_list = ids.to_list(), chans.to_list(), units.to_list()
    value_arr = values.fill_null(np.nan).to_numpy()
    raw_values = frame["value"].to_list()
    letters: list[DeadLetter] = []
    good = np.ones(n, dtype=bool)
    for i in range(n):
        problem = problems[i]
        if problem is None and values[i] is None:
            problem = f"value {raw_values[i]!r} is not a number"
        if problem is None:
            problem = check_reading(id_list[i], ch_list[i], int(times[i]), float(value_arr[i]), unit_list[i])
        if problem is not None:
            good[i] = False
            row = dict(zip(columns, frame.row(i), strict=True))
            letters.append(DeadLetter(f"replay:{path.name}", f"row {i + 2}: {problem}", orjson.dumps(row)))
    keep = np.flatnonzero(good)
    order = keep[np.argsort(times[keep], kind="stable")]
    batch = ReadingBatch.from_columns(
        np.asarray(id_list, dtype=object)[order].tolist(),
        np.asarray(ch_list, dtype=object)[order].tolist(),
        times[order],
        value_arr[order],
        np.asarray(unit_list, dtype=object)[order].tolist(),
    )
    return batch, letters


def replay_frame(spec: DataflowSpec, readings: ReadingBatch, twin_type: str | None = None) -> ReplayResult:
    """Run ``readings`` (in time order) through ``spec``'s twin banks; one output row per reading."""
    import time

    from bytewax.testing import TestingSink, TestingSource, run_main

    from dte_stream.dataflow import build_flow

    engine = spec.engine.model_copy(update={"clock": "event", "workers": 1})
    event_spec = spec.model_copy(update={"engine": engine})
    if twin_type is not None:
        event_spec.twin_type(twin_type)  # KeyError for an unknown type, caught by the caller
    items = [
        SourceBatch(_SOURCE, readings.take(np.arange(lo, min(lo + BATCH_READINGS, len(readings)))), twin_type)
        for lo in range(0, len(readings), BATCH_READINGS)
    ]
    estimates: list[EstimateBatch] = []
    dead: list[DeadLetter] = []
    flow = build_flow(
        event_spec,
        inputs={_SOURCE: TestingSource(items)},
        outputs={_SOURCE: TestingSink(estimates)},
        dead_letter_output=TestingSink(dead),
    )
    started = time.monotonic()
    run_main(flow, epoch_interval=timedelta(seconds=3600))  # type: ignore[no-untyped-call]
    seconds = time.monotonic() - started
    frame, stale = _output_frame(estimates)
    return ReplayResult(frame, dead, stale, seconds)


def _output_frame(batches: list[EstimateBatch]) -> tuple[pl.DataFrame, int]:
    by_type: dict[str, list[EstimateBatch]] = {}
    for b in batches:
        if len(b):
            by_type.setdefault(b.twin_type, []).append(b)
    frames = []
    stale = 0
    for group in by_type.values():
        b = EstimateBatch.concat(group)
        reading = np.isfinite(b.value)  # timer rows (stale sensors) carry no value
        stale += int((~reading).sum())
        b = b.take(np.flatnonzero(reading))
        base = b.to_frame().drop("twin_type", "unit")
        extra = pl.DataFrame({name: pl.Series(name, col, dtype=pl.Float64) for name, col in b.extra.items()})
        frames.append(pl.concat([base, extra], how="horizontal") if extra.width else base)
    if not frames:
        return _empty_frame(), stale
    out = pl.concat(frames, how="diagonal_relaxed").sort("time", maintain_order=True)
    names = list(FLAG_BITS.items())
    flag_names = pl.concat_str(
        [pl.when((pl.col("flags") & bit) > 0).then(pl.lit(name)) for name, bit in names],
        separator="|",
        ignore_nulls=True,
    )
    first = ["timestamp", "time_ns", "twin_id", "channel", "value", "estimate", "std", "innovation", "nis"]
    first += ["anomaly_score", "flags", "flag_names"]
    out = out.with_columns(
        pl.col("time").dt.to_string("%Y-%m-%dT%H:%M:%S%.fZ").alias("timestamp"),
        pl.col("time").dt.epoch("ns").alias("time_ns"),
        flag_names.alias("flag_names"),
    )
    rest = [c for c in out.columns if c not in first and c != "time"]
    return out.select(*first, *rest), stale


def _empty_frame() -> pl.DataFrame:
    schema = {"timestamp": pl.String, "time_ns": pl.Int64, "twin_id": pl.String, "channel": pl.String}
    schema |= dict.fromkeys(("value", "estimate", "std", "innovation", "nis", "anomaly_score"), pl.Float64)
    schema |= {"flags": pl.UInt16, "flag_names": pl.String}
    return pl.DataFrame(schema=schema)


def replay(
    spec: DataflowSpec,
    input_path: Path,
    output_path: Path,
    *,
    twin_type: str | None = None,
    twin_id: str | None = None,
    channel: str | None = None,
) -> ReplayResult:
    """Replay ``input_path`` through ``spec`` and write the output CSV (and dead letters beside it).

    A one-sensor CSV becomes twin ``twin_id`` (default: the file's name) of ``twin_type``
    (default: the spec's first twin type), channel ``channel`` (default: the type's first).
    """
    type_name = twin_type or spec.twin_types[0].name
    try:
        type_spec = spec.twin_type(type_name)
    except KeyError:
        declared = ", ".join(t.name for t in spec.twin_types)
        raise ConfigError(f"twin type {type_name!r} is not in the spec; declared: {declared}") from None
    readings, letters = read_readings_csv(
        input_path, twin_id=twin_id, channel=channel or type_spec.channel_names()[0]
    )
    result = replay_frame(spec, readings, type_name if twin_type or len(spec.twin_types) == 1 else None)
    result.dead_letters = letters + result.dead_letters
    output_path.parent.mkdir(parents=True, exist_ok=True)
    result.frame.write_csv(output_path)
    dead_path = dead_letters_path(output_path)
    if result.dead_letters:
        with dead_path.open("wb") as f:
            for letter in result.dead_letters:
                f.write(orjson.dumps(letter.to_json_dict()) + b"\n")
    elif dead_path.exists():
        dead_path.unlink()
    return result


def dead_letters_path(output_path: Path) -> Path:
    """Where a replay writes the dead letters of ``output_path``."""
    return output_path.with_name(output_path.stem + ".dead_letters.jsonl")
