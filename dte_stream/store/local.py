"""The embedded default store: time series as Parquet files partitioned by UTC day.

Used when no InfluxDB is configured. Layout on disk::

    DATA_DIR/<table>/date=YYYY-MM-DD/part-<writer id>-<sequence>.parquet

Each :meth:`LocalStore.append` writes new files (one per UTC day the frame touches) under a
temporary hidden name and renames them into place, so readers and crashes never see half a
file. Files are never modified, so any number of writers (Bytewax workers, processes) can
append at once as long as their writer ids differ, which the default id (pid and a random
suffix) ensures. Queries are lazy polars scans over the day partitions the time range needs.

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> store = LocalStore(Path(tmp.name))
>>> frame = pl.DataFrame({"time": [1_767_323_045_000_000_000, 1_767_323_046_000_000_000],
...                       "twin_id": ["pump-1", "pump-2"], "channel": ["temp", "temp"],
...                       "value": [20.5, 21.0]})
>>> _ = store.append("readings", frame)
>>> store.query("readings", twin_id="pump-1")["value"].to_list()
[20.5]
>>> store.twins()["twin_id"].to_list()
['pump-1', 'pump-2']
>>> tmp.cleanup()
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from dte_stream.errors import ConfigError, StoreError
from dte_stream.store.compaction import DAY_DIR, EPOCH_DAY, NS_PER_DAY, compact_table, expire_days
from dte_stream.store.files import READ_ERRORS, file_size, first_line, fsync_dir, write_atomic
from dte_stream.store.journal import live_files
from dte_stream.store.schema import TABLE_SCHEMAS, TIME_DTYPE, check_table_name, normalize_frame

__all__ = ["LocalStore", "day_of_ns"]

_WRITER_ID = re.compile(r"^[A-Za-z0-9_.]{1,64}$")


def day_of_ns(time_ns: int) -> date:
    """The UTC calendar day of an int64 nanosecond time (the partition it is stored in)."""
    return EPOCH_DAY + timedelta(days=time_ns // NS_PER_DAY)


def _time_literal(time_ns: int) -> pl.Expr:
    return pl.lit(time_ns, dtype=pl.Int64).cast(TIME_DTYPE)


class LocalStore:
    """Append and query time-series tables stored as day-partitioned Parquet under ``data_dir``.

    ``writer_id`` names this writer in file names; leave it to the default (process id plus
    a random suffix) unless you need to recognise files, and give every concurrent writer a
    different one. ``schemas`` maps table names to fixed schemas (default: the ``readings``
    table, see :data:`~dte_stream.store.READINGS_SCHEMA`); other tables take any columns
    besides ``time`` and ``twin_id``. ``fsync`` makes each append durable before it returns
    (turn it off only for throw-away data such as tests).

    The instance is safe to share between threads; it holds no open files.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        writer_id: str | None = None,
        schemas: Mapping[str, pl.Schema] | None = None,
        fsync: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        if writer_id is None:
            writer_id = f"{os.getpid()}_{secrets.token_hex(4)}"
        if not _WRITER_ID.match(writer_id):
            raise ConfigError(f"invalid writer id {writer_id!r}: use 1-64 letters, digits, '_' or '.'")
        self.writer_id = writer_id
        self.schemas: dict[str, pl.Schema] = dict(TABLE_SCHEMAS if schemas is None else schemas)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._sequence = 0

    def __repr__(self) -> str:
        return f"LocalStore({str(self.data_dir)!r}, writer_id={self.writer_id!r})"

    # ----------------------------------------------------------------------------- writing

    def prepare(self, table: str, frame: pl.DataFrame) -> pl.DataFrame:
        """Check ``frame`` and convert it to the stored form of ``table`` (see :meth:`append`).

        Sinks call this when a frame arrives so that a bad frame fails where it enters,
        not later when a buffer is flushed.
        """
        check_table_name(table)
        return normalize_frame(table, frame, self.schemas.get(table))

    def append(self, table: str, frame: pl.DataFrame) -> list[Path]:
        """Write ``frame`` to ``table`` as new Parquet files, one per UTC day; return their paths.

        ``time`` may be int64 nanoseconds or a timezone-aware datetime; ``twin_id`` is
        required. For a table with a fixed schema, missing columns are stored as nulls and
        unknown columns are refused (:class:`StoreError`). Each file is written to a hidden
        temporary name, flushed to disk (when ``fsync``) and renamed into place: it appears
        whole or not at all. An empty frame writes nothing.
        """
        prepared = self.prepare(table, frame)
        if prepared.height == 0:
            return []
        days = prepared.select(pl.col("time").dt.date().alias("_day"))["_day"]
        distinct: list[date] = sorted(days.unique().to_list())
        if len(distinct) == 1:
            return [self._write_file(table, distinct[0], prepared)]
        with_day = prepared.with_columns(days)
        return [
            self._write_file(table, day, with_day.filter(pl.col("_day") == day).drop("_day"))
            for day in distinct
        ]

    def _next_name(self) -> str:
        with self._lock:
            self._sequence += 1
            seq = self._sequence
        return f"part-{self.writer_id}-{seq:08d}.parquet"

    def _day_dir(self, table: str, day: date) -> Path:
        return self.data_dir / table / f"date={day.isoformat()}"

    def _write_file(self, table: str, day: date, frame: pl.DataFrame) -> Path:
        day_dir = self._day_dir(table, day)
        final = day_dir / self._next_name()
        try:
            if not day_dir.is_dir():
                day_dir.mkdir(parents=True, exist_ok=True)
                if self.fsync:
                    fsync_dir(day_dir.parent)
            write_atomic(final, lambda tmp: frame.write_parquet(tmp, compression="zstd"), fsync=self.fsync)
        except OSError as exc:
            raise StoreError(f"cannot write {final}: {exc.strerror or exc}") from None
        except pl.exceptions.PolarsError as exc:  # polars reports some I/O errors its own way
            raise StoreError(f"cannot write {final}: {first_line(exc)}") from None
        return final

    # ----------------------------------------------------------------------------- listing

    def tables(self) -> list[str]:
        """The names of the tables that exist under ``data_dir`` (sorted)."""
        if not self.data_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.data_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and re.match(r"^[a-z][a-z0-9_]*$", p.name)
        )

    def _no_data(self) -> StoreError:
        return StoreError(
            f"no data in {self.data_dir}: run `dte-stream demo --data-dir {self.data_dir}` first, "
            "or point --data-dir at the directory a dataflow writes to"
        )

    def _table_dir(self, table: str) -> Path:
        """The directory of an existing table, or a :class:`StoreError` saying what exists."""
        check_table_name(table)
        table_dir = self.data_dir / table
        if table_dir.is_dir():
            return table_dir
        existing = self.tables()
        if not existing:
            raise self._no_data()
        raise StoreError(f"no table {table!r} in {self.data_dir}; tables there: {', '.join(existing)}")

    def files(self, table: str, *, since_ns: int | None = None, until_ns: int | None = None) -> list[Path]:
        """The Parquet files of ``table`` whose day may hold times in ``[since_ns, until_ns)``.

        Raises :class:`StoreError` when the data directory or the table does not exist.
        """
        table_dir = self._table_dir(table)
        first = None if since_ns is None else day_of_ns(since_ns)
        last = None if until_ns is None else day_of_ns(until_ns - 1)
        found: list[Path] = []
        try:
            entries = sorted(table_dir.iterdir())
        except OSError as exc:
            raise StoreError(f"cannot list {table_dir}: {exc.strerror or exc}") from None
        for day_dir in entries:
            m = DAY_DIR.match(day_dir.name)
            if not m or not day_dir.is_dir():
                continue
            try:
                day = date.fromisoformat(m.group(1))
            except ValueError:
                continue
            if (first is not None and day < first) or (last is not None and day > last):
                continue
            found.extend(live_files(day_dir))
        return found

    # ----------------------------------------------------------------------------- reading

    def _table_schema(self, table: str, files: Sequence[Path]) -> pl.Schema:
        schema = self.schemas.get(table)
        if schema is not None:
            return schema
        sample = files[:1] or self.files(table)[:1]
        if not sample:
            raise StoreError(f"no data in table {table!r} in {self.data_dir}")
        try:
            return pl.Schema(pl.read_parquet_schema(sample[0]))
        except READ_ERRORS as exc:
            raise StoreError(f"corrupt Parquet file {sample[0]}: {first_line(exc)}") from None

    def scan(
        self,
        table: str,
        *,
        twin_id: str | None = None,
        channel: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> pl.LazyFrame:
        """A lazy polars scan of ``table`` with the filters applied (not sorted, not collected).

        For power users who want to add their own polars expressions; errors in the files
        surface as polars exceptions when collected. :meth:`query` maps them to
        :class:`StoreError`.
        """
        return self._scan(
            table,
            self.files(table, since_ns=since_ns, until_ns=until_ns),
            twin_id=twin_id,
            channel=channel,
            since_ns=since_ns,
            until_ns=until_ns,
        )

    def _scan(
        self,
        table: str,
        files: Sequence[Path],
        *,
        twin_id: str | None,
        channel: str | None,
        since_ns: int | None,
        until_ns: int | None,
    ) -> pl.LazyFrame:
        schema = self._table_schema(table, files)
        if channel is not None and "channel" not in schema:
            raise StoreError(f"table {table!r} has no channel column; drop the channel filter")
        if not files:
            return pl.LazyFrame(schema=schema)
        lf = pl.scan_parquet(list(files), schema=schema, missing_columns="insert")
        if twin_id is not None:
            lf = lf.filter(pl.col("twin_id") == twin_id)
        if channel is not None:
            lf = lf.filter(pl.col("channel") == channel)
        if since_ns is not None:
            lf = lf.filter(pl.col("time") >= _time_literal(since_ns))
        if until_ns is not None:
            lf = lf.filter(pl.col("time") < _time_literal(until_ns))
        return lf

    def query(
        self,
        table: str,
        *,
        twin_id: str | None = None,
        channel: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int | None = None,
    ) -> pl.DataFrame:
        """Rows of ``table`` matching the filters, sorted by time (oldest first).

        ``since_ns`` is inclusive and ``until_ns`` exclusive (int64 ns UTC). With ``limit``
        the result is the *newest* ``limit`` matching rows, still in ascending time order:
        "the last 20 readings" is what a person looking at a live twin wants. Rows with equal
        times are ordered by twin id (and channel). Raises :class:`StoreError` when there is
        no data directory or table, or naming the file when a file is unreadable.
        """
        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be >= 0, got {limit}")
        if since_ns is not None and until_ns is not None and since_ns >= until_ns:
            raise ConfigError("the start of the time range (since) must be before its end (until)")
        for attempt in range(2):
            files = self.files(table, since_ns=since_ns, until_ns=until_ns)
            lf = self._scan(
                table, files, twin_id=twin_id, channel=channel, since_ns=since_ns, until_ns=until_ns
            )
            keys = [c for c in ("time", "twin_id", "channel") if c in lf.collect_schema()]
            # the newest `limit` rows are the `limit` largest keys: top_k does not sort them all
            lf = lf.sort(keys) if limit is None else lf.top_k(limit, by=keys).sort(keys)
            try:
                return lf.collect()
            except READ_ERRORS as exc:
                if attempt == 0 and any(not f.exists() for f in files):
                    continue  # a compaction replaced files while we read: list again
                raise self._read_error(table, files, exc) from None
        raise StoreError(f"table {table!r} in {self.data_dir} kept changing while being read")

    def _read_error(self, table: str, files: Sequence[Path], exc: BaseException) -> StoreError:
        """Find the file behind a failed scan so that the error can name it."""
        schema = self.schemas.get(table)
        for path in files:
            try:
                file_schema = pl.read_parquet_schema(path)
                pl.read_parquet(path)
            except READ_ERRORS as file_exc:
                return StoreError(f"corrupt Parquet file {path}: {first_line(file_exc)}")
            if schema is not None:
                for name, dtype in file_schema.items():
                    if name not in schema:
                        return StoreError(
                            f"Parquet file {path} has column {name} that table {table!r} does not have"
                        )
                    if dtype != schema[name]:
                        return StoreError(
                            f"Parquet file {path}: column {name} is {dtype}, "
                            f"table {table!r} stores {schema[name]}"
                        )
        return StoreError(f"cannot read table {table!r} in {self.data_dir}: {first_line(exc)}")

    def twins(self, table: str = "readings") -> pl.DataFrame:
        """One row per twin id: ``twin_id``, ``twin_type``, ``rows``, ``first_time``, ``last_time``.

        ``twin_type`` is the last non-null type stored for the twin (null when the table has
        no such column); sorted by twin id.
        """
        files = self.files(table)
        lf = self._scan(table, files, twin_id=None, channel=None, since_ns=None, until_ns=None)
        has_type = "twin_type" in lf.collect_schema()
        twin_type = pl.col("twin_type").drop_nulls().last() if has_type else pl.lit(None, dtype=pl.String)
        summary = (
            lf.group_by("twin_id")
            .agg(
                twin_type.alias("twin_type"),
                pl.len().cast(pl.Int64).alias("rows"),
                pl.col("time").min().alias("first_time"),
                pl.col("time").max().alias("last_time"),
            )
            .sort("twin_id")
        )
        try:
            return summary.collect()
        except READ_ERRORS as exc:
            raise self._read_error(table, files, exc) from None

    # ----------------------------------------------------------------------------- retention

    def expire(self, table: str, before_ns: int) -> list[date]:
        """Delete the days of ``table`` that end at or before ``before_ns``; returns those days.

        Whole day partitions go (files are never rewritten to drop rows), so up to a day more
        than asked for is kept. Readers that listed a deleted file see it missing and list
        again (see :meth:`query`).
        """
        return expire_days(self, table, before_ns)

    def size_bytes(self) -> int:
        """Bytes of every file under the data directory (tables, view, logs)."""
        total = 0
        for root, _dirs, names in os.walk(self.data_dir):
            for name in names:
                total += file_size(Path(root) / name)
        return total

    # ----------------------------------------------------------------------------- compaction

    def compact(self, table: str, *, min_files: int = 2, max_file_bytes: int | None = None) -> int:
        """Merge the files of each day of ``table`` into one file sorted by time.

        With ``max_file_bytes``, only the files smaller than that are merged (a day that
        already holds a large merged file is not rewritten whole each time): what the
        automatic housekeeping (:mod:`dte_stream.store.housekeeping`) does.

        Frequent small flushes leave many small files, which slow scans down; compaction is
        maintenance to run now and then (for example daily). It is safe alongside writers
        (files written meanwhile are left alone) and readers (a journal tells them which
        files the merged file replaces, and a crash at any point leaves either the old files
        or the merged one visible, never both). One compaction per table runs at a time (a
        lock file), a second one raises :class:`StoreError`. A day must fit in memory.
        Returns the number of files merged away.
        """
        return compact_table(self, table, min_files=min_files, max_file_bytes=max_file_bytes)
