"""Replay: CSVs of readings through a spec's twin shards, in event time, as fast as they go.

The input is one or many CSV files (or a folder of them). A file holds either one sensor
(``timestamp,value`` rows, as in the NAB series: the twin is named after the file) or readings
with ``twin_id`` and ``channel`` columns (and optionally ``unit``). The time column is
``timestamp`` or ``time`` (ISO 8601; a time without zone is UTC; or epoch seconds) or
``time_ns`` (integer nanoseconds). All rows are sorted by time and fed, in batches, through
the same :class:`~dte_stream.twins.shard.TwinShard` objects as a live run, driven directly:
no dataflow engine, with the twin clock set to event time so stale sensors and TTLs follow
the data, not the wall clock. Many series replay together as many twins, one vectorised step
for all of them per round; one series (or a few) goes through the bank reading by reading in
Python floats (:mod:`dte_stream.twins.stages`). The outputs equal those of the Bytewax
dataflow fed the same readings (``tests/unit/test_replay.py`` compares every field).

The output (:mod:`dte_stream.replay_output`) has one row per reading, in event-time order:
``timestamp`` (RFC 3339 UTC), ``time_ns``, ``twin_id``, ``channel``, ``value``, ``estimate``,
``std``, ``innovation``, ``nis``, ``anomaly_score`` (0..1), ``flags`` (bits of
:mod:`dte_stream.twins.flags`), ``flag_names`` (``|``-separated) and every optional output of
the twin types. Rows that cannot be read (a bad time, number or id, a row with more or fewer
fields than the header, an unterminated quote) and readings the shards refuse are dead letters
with the file, the row number and a reason, written next to the output; nothing else is dropped.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from dte_stream.batches import DeadLetter, EstimateBatch, ReadingBatch
from dte_stream.errors import ConfigError
from dte_stream.readings import check_reading
from dte_stream.replay_output import output_frame
from dte_stream.spec.model import DataflowSpec
from dte_stream.times import MAX_TIME_NS, MIN_TIME_NS, NS_PER_S, parse_time
from dte_stream.twins.routing import Router, TypedBatch
from dte_stream.twins.shard import InputClock, ShardUpdate, TwinShard

__all__ = ["ReplayResult", "csv_files", "read_readings_csv", "read_series", "replay", "replay_frame"]

#: Readings per batch handed to the shards: large, so that many twins share each round.
BATCH_READINGS = 50_000

_SOURCE = "replay"
_TIME_COLUMNS = ("time_ns", "timestamp", "time")


@dataclass
class ReplayResult:
    """What a replay produced: the output rows and what could not be used."""

    frame: pl.DataFrame
    dead_letters: list[DeadLetter] = field(default_factory=list)
    stale_events: int = 0
    seconds: float = 0.0
    twins: int = 0

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
            except ValueError:  # the reason names the text as it is in the file, not as completed
                parsed[raw] = f"{name} {raw!r} is not a time (ISO 8601, epoch seconds)"
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


def _read_frame(path: Path, source: str) -> tuple[pl.DataFrame, list[int], list[DeadLetter]]:
    """Every column as text, each row's number in the file, and dead letters for broken rows.

    polars reads a well-formed file in one go. A file it refuses (a row with more fields than
    the header, an unterminated quote) is read again line by line: each line that is not
    exactly one row of the header's width becomes a dead letter, the others are kept.
    """
    try:
        frame = pl.read_csv(path, infer_schema=False, truncate_ragged_lines=False)
        return frame, list(range(2, frame.height + 2)), []
    except pl.exceptions.PolarsError:
        pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read as CSV: {exc.strerror or exc}") from None
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read as CSV: {exc.strerror or exc}") from None
    if not lines:
        raise ConfigError(f"{path}: the file is empty")
    header = next(csv.reader([lines[0]]))
    width = len(header)
    rows: list[list[str]] = []
    numbers: list[int] = []
    letters: list[DeadLetter] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            problem = f"not a CSV row ({exc})"
        else:
            if len(fields) == width:
                rows.append(fields)
                numbers.append(number)
                continue
            problem = f"{len(fields)} fields where the header has {width}"
        letters.append(DeadLetter(source, f"row {number}: {problem}", line.encode("utf-8")))
    frame = pl.DataFrame(rows, schema=dict.fromkeys(header, pl.String), orient="row")
    return frame, numbers, letters


def read_readings_csv(
    path: Path, *, twin_id: str | None = None, channel: str | None = None
) -> tuple[ReadingBatch, list[DeadLetter]]:
    """The readings of a replay CSV, sorted by time, and a dead letter for every unusable row."""
    source = f"replay:{path.name}"
    frame, numbers, letters = _read_frame(path, source)
    columns = frame.columns
    time_col = next((c for c in _TIME_COLUMNS if c in columns), None)
    if time_col is None or "value" not in columns:
        raise ConfigError(
            f"{path}: a replay CSV needs a value column and a time column "
            f"(one of {', '.join(_TIME_COLUMNS)}); it has {', '.join(columns) or 'no columns'}"
        )
    n = frame.height
    times, problems = _parse_times(frame[time_col], time_col)
    raw_values = frame["value"]
    values = raw_values.str.strip_chars().cast(pl.Float64, strict=False)
    ids = frame["twin_id"] if "twin_id" in columns else pl.Series([twin_id or _slug(path.stem)] * n)
    chans = frame["channel"] if "channel" in columns else pl.Series([channel or "value"] * n)
    units = frame["unit"].fill_null("") if "unit" in columns else pl.Series([""] * n)
    value_arr = values.fill_null(np.nan).to_numpy()
    # The checks of every row, vectorised where they can be: only suspicious rows go one by one.
    suspect = np.array([p is not None for p in problems], dtype=bool) | values.is_null().to_numpy()
    suspect |= ~np.isfinite(value_arr)
    for col, may_be_empty in ((ids, False), (chans, False), (units, True)):
        text = col.cast(pl.String)
        length = text.str.len_chars()
        odd = text.is_null() | (length > 256) | text.str.contains(r"[\x00-\x1f\x7f]")
        if not may_be_empty:
            odd = odd | (length == 0)
        suspect |= odd.fill_null(True).to_numpy()
    good = ~suspect
    id_list, ch_list, unit_list = ids.to_list(), chans.to_list(), units.to_list()
    for i in np.flatnonzero(suspect).tolist():
        problem = problems[i]
        if problem is None and values[i] is None:
            problem = f"value {raw_values[i]!r} is not a number"
        if problem is None:
            problem = check_reading(id_list[i], ch_list[i], int(times[i]), float(value_arr[i]), unit_list[i])
        if problem is None:
            good[i] = True
            continue
        row = dict(zip(columns, frame.row(i), strict=True))
        letters.append(DeadLetter(source, f"row {numbers[i]}: {problem}", orjson.dumps(row)))
    letters.sort(key=lambda letter: int(letter.reason.split(":", 1)[0].removeprefix("row ")))
    keep = np.flatnonzero(good)
    order = keep[np.argsort(times[keep], kind="stable")]
    batch = ReadingBatch.from_columns(
        ids.gather(order).to_list(),
        chans.gather(order).to_list(),
        times[order],
        value_arr[order],
        units.gather(order).to_list(),
    )
    return batch, letters


def csv_files(inputs: Sequence[Path]) -> list[Path]:
    """The CSV files named by ``inputs``: files as given, folders by every ``*.csv`` in them (sorted)."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(path.rglob("*.csv"))
            if not found:
                raise ConfigError(f"{path}: the folder holds no .csv file")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    return files


def read_series(
    inputs: Sequence[Path], *, twin_id: str | None = None, channel: str | None = None
) -> tuple[ReadingBatch, list[DeadLetter]]:
    """The readings of many CSV files (or folders of them) as one batch sorted by time.

    A one-sensor file becomes twin ``twin_id`` when it is the only file, else the twin named
    after the file; files with ``twin_id`` columns keep their ids.
    """
    files = csv_files(inputs)
    if twin_id is not None and len(files) > 1:
        raise ConfigError(
            "--twin names the twin of one CSV; with many files each twin is named after its file"
        )
    names = [_slug(f.stem) for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two input files would be the same twin: {', '.join(twice)}; rename one")
    batches: list[ReadingBatch] = []
    letters: list[DeadLetter] = []
    for f in files:
        batch, dead = read_readings_csv(f, twin_id=twin_id, channel=channel)
        batches.append(batch)
        letters += dead
    if len(batches) == 1:
        return batches[0], letters
    merged = ReadingBatch.concat(batches)
    return merged.take(np.argsort(merged.time_ns, kind="stable")), letters


def replay_frame(
    spec: DataflowSpec,
    readings: ReadingBatch,
    twin_type: str | None = None,
    *,
    on_progress: Callable[[int], None] | None = None,
    batch_readings: int = BATCH_READINGS,
) -> ReplayResult:
    """Run ``readings`` (in time order) through ``spec``'s twin shards; one output row per reading.

    The shards are driven directly, as the dataflow drives them: for each batch the input clock
    advances, the router splits it by shard, and each shard applies its part (timers run after
    each batch, in event time); at the end every shard sees the end of the input.
    ``on_progress`` is called with the readings done so far after each batch.
    """
    engine = spec.engine.model_copy(update={"clock": "event"})
    event_spec = spec.model_copy(update={"engine": engine})
    if twin_type is not None:
        event_spec.twin_type(twin_type)  # KeyError for an unknown type, caught by the caller
    router = Router(event_spec)
    clock = InputClock()
    shards: dict[str, TwinShard] = {}
    estimates: list[EstimateBatch] = []
    dead: list[DeadLetter] = []

    def collect(update: ShardUpdate) -> None:
        estimates.extend(update.estimates)
        dead.extend(update.rejected)

    started = time.monotonic()
    n = len(readings)
    for lo in range(0, n, batch_readings):
        batch = readings.take(np.arange(lo, min(lo + batch_readings, n)))
        clock.advance(int(batch.time_ns.max()))
        routed = router.route(batch, _SOURCE, twin_type)
        dead.extend(routed.errors)
        by_shard: dict[str, list[TypedBatch]] = {}
        for key, part in routed.routed:
            by_shard.setdefault(key, []).append(part)
        for key, parts in by_shard.items():
            shard = shards.get(key)
            if shard is None:
                shard = shards[key] = TwinShard(event_spec, key, clock=clock)
            collect(shard.on_batch(parts))
        if on_progress is not None:
            on_progress(min(lo + batch_readings, n))
    for shard in shards.values():
        collect(shard.on_eof())
    seconds = time.monotonic() - started
    frame, stale = output_frame(estimates)
    return ReplayResult(frame, dead, stale, seconds, sum(s.twins() for s in shards.values()))


def replay(
    spec: DataflowSpec,
    inputs: Path | Sequence[Path],
    output_path: Path,
    *,
    twin_type: str | None = None,
    twin_id: str | None = None,
    channel: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Replay CSV files (or folders of them) through ``spec``; write the output CSV and dead letters.

    A one-sensor CSV becomes twin ``twin_id`` (default: the file's name) of ``twin_type``
    (default: the spec's first twin type), channel ``channel`` (default: the type's first).
    """
    type_name = twin_type or spec.twin_types[0].name
    try:
        type_spec = spec.twin_type(type_name)
    except KeyError:
        declared = ", ".join(t.name for t in spec.twin_types)
        raise ConfigError(f"twin type {type_name!r} is not in the spec; declared: {declared}") from None
    paths = [inputs] if isinstance(inputs, Path) else list(inputs)
    readings, letters = read_series(paths, twin_id=twin_id, channel=channel or type_spec.channel_names()[0])
    forced = type_name if twin_type or len(spec.twin_types) == 1 else None
    result = replay_frame(spec, readings, forced, on_progress=on_progress)
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
